use std::sync::Arc;
use std::time::Duration;

use proto::msg::{ServerInfo, Site, SiteRole, Unfinished, VldbEntry, VolumeRef};
use proto::{RemoteError, ServerId, VolumeId};

use super::locks::Locks;
use super::registry::Registry;
use super::vldb::Vldb;
use super::*;

fn db() -> (tempfile::TempDir, Arc<dyn CellDb>) {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn CellDb> = Arc::new(SqliteCellDb::open(&dir.path().join("cell.sqlite")).unwrap());
    (dir, db)
}

fn refused(r: Result<impl std::fmt::Debug>) -> RemoteError {
    match r {
        Err(StoreError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn revisions_and_transactions_follow_etcd() {
    let (_d, db) = db();
    let Committed::At(r1) = db.txn(Txn::new().then(Op::put("a", &1))).unwrap() else { panic!() };
    let Committed::At(r2) = db.txn(Txn::new().then(Op::put("a", &2)).then(Op::put("b", &3))).unwrap() else { panic!() };
    assert!(r2 > r1);
    let a = db.get("a").unwrap().unwrap();
    assert_eq!((a.create_rev, a.mod_rev, a.json::<i32>().unwrap()), (r1, r2, 2));
    // A failed condition changes nothing, not even the revision.
    let t = Txn::new().when(Compare::ModRev("a".into(), r1)).then(Op::put("a", &9)).then(Op::delete("b"));
    assert_eq!(db.txn(t).unwrap(), Committed::ConditionFailed);
    assert_eq!(db.get("b").unwrap().unwrap().mod_rev, r2);
    assert_eq!(db.txn(Txn::new().when(Compare::Missing("b".into()))).unwrap(), Committed::ConditionFailed);
    assert!(matches!(db.txn(Txn::new().when(Compare::CreateRev("a".into(), r1))).unwrap(), Committed::At(_)));
    db.txn(Txn::new().then(Op::put("ab", &0)).then(Op::put("b/x", &0))).unwrap();
    let keys: Vec<String> = db.range("a").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["a", "ab"]);
    assert_eq!(db.range("").unwrap().len(), 4);
}

#[test]
fn keys_under_a_lease_vanish_when_it_runs_out_and_watchers_hear_of_it() {
    let (_d, db) = db();
    let mut watch = db.watch("lock/").unwrap();
    let lease = db.grant(Duration::from_millis(300)).unwrap();
    db.txn(Txn::new().then(Op::put_leased("lock/v", &"me", lease))).unwrap();
    assert!(watch.has_changed().unwrap());
    watch.mark_unchanged();
    assert!(db.keep_alive(lease).unwrap());
    std::thread::sleep(Duration::from_millis(450));
    assert!(db.get("lock/v").unwrap().is_none(), "expired with its lease");
    assert!(watch.has_changed().unwrap());
    assert!(!db.keep_alive(lease).unwrap(), "an expired lease cannot be renewed");
    let put = db.txn(Txn::new().then(Op::put_leased("lock/w", &"me", lease)));
    assert!(matches!(put, Err(StoreError::Refused(_))), "no key under a dead lease");

    let lease = db.grant(Duration::from_secs(60)).unwrap();
    db.txn(Txn::new().then(Op::put_leased("alive/1", &"x", lease))).unwrap();
    db.revoke(lease).unwrap();
    assert!(db.get("alive/1").unwrap().is_none());
}

fn entry(name: &str, rw: u64) -> VldbEntry {
    VldbEntry {
        name: name.into(),
        rw: VolumeId(rw),
        ro: None,
        backup: None,
        sites: vec![Site { server: ServerId(1), role: SiteRole::ReadWrite }],
    }
}

#[test]
fn location_entries_are_found_by_name_and_every_id_and_updated_by_compare_and_swap() {
    let (_d, db) = db();
    let vldb = Vldb::new(db.clone());
    let (a, b) = (vldb.allocate_volume_id().unwrap(), vldb.allocate_volume_id().unwrap());
    assert_ne!(a, b);
    let e = entry("home", a.0);
    vldb.create(&e).unwrap();
    assert_eq!(refused(vldb.create(&e)), RemoteError::Exists);
    assert_eq!(refused(vldb.create(&entry("other", a.0))), RemoteError::Exists, "an id is one volume's");
    assert_eq!(vldb.lookup(&VolumeRef::Name("home.readonly".into())).unwrap(), Some(e.clone()));
    let released = VldbEntry { ro: Some(b), ..e.clone() };
    vldb.update(&e, &released, None).unwrap();
    assert_eq!(vldb.lookup(&VolumeRef::Id(b)).unwrap(), Some(released.clone()));
    let other = VldbEntry { backup: Some(VolumeId(99)), ..e.clone() };
    assert!(matches!(refused(vldb.update(&e, &other, None)), RemoteError::Invalid(_)), "stale update");
    vldb.rename("home", "house").unwrap();
    assert_eq!(vldb.lookup(&VolumeRef::Id(b)).unwrap().unwrap().name, "house");
    assert_eq!(vldb.lookup(&VolumeRef::Name("home".into())).unwrap(), None);
    vldb.create(&entry("home", 50)).unwrap();
    assert_eq!(refused(vldb.rename("home", "house")), RemoteError::Exists);
    vldb.remove("house").unwrap();
    assert_eq!(vldb.lookup(&VolumeRef::Id(a)).unwrap(), None);
    assert_eq!(vldb.list().unwrap().len(), 1);
}

#[test]
fn servers_register_and_say_they_are_alive_under_a_lease() {
    let (_d, db) = db();
    let reg = Registry::new(db.clone());
    let id = reg.allocate_server_id().unwrap();
    assert_eq!(id, ServerId(1));
    reg.register_server(&ServerInfo { id, address: "127.0.0.1:1".into(), fingerprint: "b3:x".into() }).unwrap();
    reg.register_server(&ServerInfo { id, address: "127.0.0.1:2".into(), fingerprint: "b3:x".into() }).unwrap();
    assert_eq!(reg.servers().unwrap()[0].address, "127.0.0.1:2");
    assert!(!reg.status().unwrap()[0].alive);
    let lease = reg.announce(id, "127.0.0.1:2").unwrap();
    assert!(reg.status().unwrap()[0].alive);
    assert!(reg.still_alive(lease).unwrap());
    reg.leaving(lease).unwrap();
    assert!(!reg.status().unwrap()[0].alive);

    let secrets = registry::CellSecrets { cell: "x.org".into(), token_key: "ab".into(), admins: vec!["b3:1".into()] };
    reg.create_cell(&secrets).unwrap();
    assert!(reg.create_cell(&secrets).is_err(), "one cell per database");
    assert_eq!(reg.cell().unwrap(), Some(secrets));
}

#[test]
fn one_admin_at_a_time_holds_a_volume_and_a_stale_fence_changes_nothing() {
    let (_d, db) = db();
    let (locks, vldb) = (Locks::new(db.clone()), Vldb::new(db.clone()));
    let e = entry("home", 1);
    vldb.create(&e).unwrap();
    let (fence, unfinished) = locks.take("home", "vos move", Duration::from_secs(1)).unwrap();
    assert_eq!(unfinished, None);
    assert!(matches!(refused(locks.take("home", "vos move", Duration::from_secs(1))), RemoteError::Locked(_)));
    let move_ = Unfinished::Move { id: VolumeId(1), from: ServerId(1), to: ServerId(2), backup: None };
    locks.note(&fence, Some(&move_)).unwrap();
    let moved = VldbEntry { sites: vec![Site { server: ServerId(2), role: SiteRole::ReadWrite }], ..e.clone() };
    vldb.update(&e, &moved, Some(&fence)).unwrap();
    locks.renew(&fence).unwrap();

    // The holder stops renewing: the lock runs out, and what it began is there for the next.
    std::thread::sleep(Duration::from_millis(1300));
    assert!(!locks.holds(&fence).unwrap());
    assert!(matches!(refused(locks.renew(&fence)), RemoteError::StaleFence(_)));
    let (next, unfinished) = locks.take("home", "vos move", Duration::from_secs(5)).unwrap();
    assert!(next.token > fence.token, "fencing tokens grow");
    assert_eq!(unfinished, Some(move_));
    // The old holder, come back, can change neither the location nor the record.
    let back = VldbEntry { ..e.clone() };
    assert!(matches!(refused(vldb.update(&moved, &back, Some(&fence))), RemoteError::StaleFence(_)));
    assert!(matches!(refused(locks.note(&fence, None)), RemoteError::StaleFence(_)));
    assert!(matches!(refused(locks.check(&fence)), RemoteError::StaleFence(_)));
    // Nor can a change made without the lock while someone holds it.
    assert!(matches!(refused(vldb.update(&moved, &back, None)), RemoteError::Locked(_)));
    locks.check(&next).unwrap();
    locks.note(&next, None).unwrap();
    locks.release(&next).unwrap();
    vldb.update(&moved, &back, None).unwrap();
    let (_, unfinished) = locks.take("home", "vos release", Duration::from_secs(5)).unwrap();
    assert_eq!(unfinished, None);
}

#[test]
fn a_cell_made_before_the_cell_database_is_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (vldb_file, pts_file) = legacy::make_old_files(dir.path());
    let db: Arc<dyn CellDb> = Arc::new(SqliteCellDb::open(&dir.path().join("cell.sqlite")).unwrap());
    assert!(legacy::import_old_files(&vldb_file, &pts_file, &*db).unwrap());
    assert!(!vldb_file.exists(), "renamed once imported");
    let vldb = Vldb::new(db.clone());
    let e = vldb.lookup(&VolumeRef::Id(VolumeId(3))).unwrap().unwrap();
    assert_eq!((e.name.as_str(), e.rw, e.sites.len()), ("root.cell", VolumeId(2), 2));
    assert_eq!(vldb.allocate_volume_id().unwrap(), VolumeId(4), "the counter carried over");
    let pts = pts::Ptdb::new(db.clone()).unwrap();
    assert_eq!(pts.membership("admin").unwrap().members, ["admin:friends", "system:administrators"]);
    assert_eq!(pts.create_user("bob", "password1").unwrap().id, proto::PtsId(3), "the tombstone's id stays used");
    assert_eq!(pts.create_group("bob:g").unwrap().id, proto::PtsId(-206));
    assert_eq!(Registry::new(db.clone()).servers().unwrap().len(), 1);
    assert!(!legacy::import_old_files(&vldb_file, &pts_file, &*db).unwrap());
}

#[test]
fn a_copy_of_a_cell_database_holds_every_durable_key_and_refuses_a_full_target() {
    let (_d, from) = db();
    let vldb = Vldb::new(from.clone());
    for i in 0..250 {
        vldb.create(&entry(&format!("v{i}"), i + 1)).unwrap();
    }
    let lease = from.grant(Duration::from_secs(60)).unwrap();
    from.txn(Txn::new().then(Op::put_leased("alive/1", &"x", lease))).unwrap();
    let (_d2, to) = db();
    let n = legacy::copy_all(&*from, &*to).unwrap();
    assert_eq!(n, 500, "250 entries and their 250 ids; nothing leased");
    assert_eq!(Vldb::new(to.clone()).list().unwrap().len(), 250);
    assert!(to.get("alive/1").unwrap().is_none());
    assert!(matches!(refused(legacy::copy_all(&*from, &*to)), RemoteError::Invalid(_)));
}

#[test]
fn locations_parse_and_print_back() {
    let l = Location::parse("etcd://127.0.0.1:2379,127.0.0.1:2381").unwrap();
    assert_eq!(l, Location::Etcd(vec!["http://127.0.0.1:2379".into(), "http://127.0.0.1:2381".into()]));
    assert_eq!(Location::parse(&l.to_text()).unwrap(), l);
    assert_eq!(Location::parse("embedded").unwrap(), Location::Embedded);
    for bad in ["etcd://", "etcd://host", "etcd://h:x", "http://h:1", "etcd://h:1/path"] {
        assert!(Location::parse(bad).is_err(), "{bad}");
    }
}
