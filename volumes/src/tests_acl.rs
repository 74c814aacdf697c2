//! The store enforces ACLs on every read and every record, against the ACL in the database.

use proto::auth::{PtsId, Rights};
use proto::msg::VolumeKind;
use proto::*;

use crate::Caller;
use crate::error::StoreError;
use crate::store::Store;

const CLIENT: ClientId = ClientId(8);
const VOL: VolumeId = VolumeId(11);
const ALICE: PtsId = PtsId(1);
const BOB: PtsId = PtsId(2);
const FRIENDS: PtsId = PtsId(-205);

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), ServerId(1)).unwrap();
    store.create_volume(VOL, "acl", VolumeKind::ReadWrite, 0, &Acl::volume_default()).unwrap();
    (dir, store)
}

fn alice() -> Caller {
    Caller::user(ALICE, [])
}

fn bob() -> Caller {
    Caller::user(BOB, [FRIENDS])
}

fn apply(store: &Store, who: &Caller, m: Mutation) -> RecordResult {
    store.apply(who, CLIENT, None, &[Record { op: OpId::random(), mutation: m }]).unwrap().results.remove(0)
}

fn make(store: &Store, who: &Caller, parent: Fid, name: &str, dir: bool) -> RecordResult {
    let (object, name, mtime) = (ObjectId::random(), Name::new(name).unwrap(), Timestamp::now());
    let m = if dir {
        Mutation::MakeDir { parent, name, object, mode: 0o755, owner: 0, group: 0, mtime }
    } else {
        Mutation::Create { parent, name, object, mode: 0o644, owner: 0, group: 0, mtime }
    };
    apply(store, who, m)
}

fn created(r: RecordResult) -> Attr {
    r.unwrap().attrs.remove(0)
}

fn denied<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Refused(RemoteError::PermissionDenied)))
}

fn set(store: &Store, who: &Caller, dir: Fid, id: PtsId, rights: &str, negative: bool) {
    store.set_acl_entry(who, dir, id, Rights::parse(rights).unwrap(), negative).unwrap();
}

#[test]
fn a_private_directory_keeps_others_out_until_the_acl_lets_them_in() {
    let (_d, store) = setup();
    let admin = Caller::administrator();
    let root = Fid::root(VOL);
    let private = created(make(&store, &admin, root, "alice", true)).fid;
    set(&store, &admin, private, ALICE, "all", false);
    set(&store, &admin, private, PtsId::ADMINISTRATORS, "none", false);
    let file = created(make(&store, &alice(), private, "secret", false));
    assert_eq!(file.owner, ALICE.as_owner(), "the server, not the client, names the owner");

    // bob and the anonymous user: nothing, even knowing the Fids.
    for who in [bob(), Caller::anonymous()] {
        assert!(denied(store.fetch_dir(&who, private)));
        assert!(denied(store.fetch_status(&who, file.fid)));
        assert!(denied(store.fetch_data(&who, file.fid)));
        assert_eq!(make(&store, &who, private, "x", false), Err(RemoteError::PermissionDenied));
        let rm = Mutation::Remove {
            parent: private,
            name: Name::new("secret").unwrap(),
            seen: Seen { object: file.fid.object, base: Base::Version(file.version.clone()) },
        };
        assert_eq!(apply(&store, &who, rm), Err(RemoteError::PermissionDenied));
        let st = Mutation::Store {
            fid: file.fid,
            base: Base::Version(file.version.clone()),
            chunks: vec![],
            mtime: file.mtime,
        };
        assert_eq!(apply(&store, &who, st), Err(RemoteError::PermissionDenied));
    }
    // Administrators keep l and a, so they can repair the ACL, but read nothing by right.
    assert!(store.fetch_dir(&admin, private).is_ok());
    assert!(denied(store.fetch_data(&admin, file.fid)));

    // rl for bob: he reads, but cannot write.
    set(&store, &alice(), private, BOB, "rl", false);
    let (_, _, access) = store.fetch_data(&bob(), file.fid).unwrap();
    assert_eq!(access.caller.to_string(), "rl");
    assert_eq!(access.anyuser, Rights::NONE);
    let st =
        Mutation::Store { fid: file.fid, base: Base::Version(file.version.clone()), chunks: vec![], mtime: file.mtime };
    assert_eq!(apply(&store, &bob(), st), Err(RemoteError::PermissionDenied));

    // A negative entry beats a group grant.
    set(&store, &alice(), private, FRIENDS, "rlidw", false);
    assert_eq!(created(make(&store, &bob(), private, "from-bob", false)).owner, BOB.as_owner());
    set(&store, &alice(), private, BOB, "i", true);
    assert_eq!(make(&store, &bob(), private, "again", false), Err(RemoteError::PermissionDenied));
    // Only holders of `a` change the ACL.
    assert!(denied(store.set_acl_entry(&bob(), private, BOB, Rights::ALL, false)));
}

#[test]
fn new_directories_inherit_and_mode_bits_bind_everyone_but_the_inserting_owner() {
    let (_d, store) = setup();
    let admin = Caller::administrator();
    let root = Fid::root(VOL);
    let shared = created(make(&store, &admin, root, "shared", true)).fid;
    set(&store, &admin, shared, PtsId::AUTHUSER, "rlidwk", false);
    let sub = created(make(&store, &alice(), shared, "sub", true)).fid;
    let (acl, _) = store.fetch_acl(&bob(), sub).unwrap();
    assert_eq!(acl.rights(&[PtsId::AUTHUSER]).to_string(), "rlidwk", "inherited from the parent");

    let f = created(make(&store, &alice(), sub, "ro", false));
    let chmod = |who: &Caller, base: &Attr| {
        let set = SetAttrs { mode: Some(0o444), ..Default::default() };
        apply(&store, who, Mutation::SetAttr { fid: base.fid, base: Base::Version(base.version.clone()), set })
    };
    let f = created(chmod(&alice(), &f));
    let st = |who: &Caller| {
        let base = store.fetch_status(&admin, f.fid).unwrap().0;
        apply(
            &store,
            who,
            Mutation::Store { fid: f.fid, base: Base::Version(base.version), chunks: vec![], mtime: f.mtime },
        )
    };
    assert_eq!(st(&bob()), Err(RemoteError::PermissionDenied), "the owner's w bit binds others");
    assert!(st(&alice()).is_ok(), "an owner with i writes their own file");
    // chown is for administrators.
    let set = SetAttrs { owner: Some(BOB.as_owner()), ..Default::default() };
    let base = store.fetch_status(&admin, f.fid).unwrap().0;
    let m = Mutation::SetAttr { fid: f.fid, base: Base::Version(base.version), set };
    assert_eq!(apply(&store, &alice(), m.clone()), Err(RemoteError::NotAdmin));
    assert!(apply(&store, &admin, m).is_ok());
}

#[test]
fn hard_links_stay_in_their_directory() {
    let (_d, store) = setup();
    let admin = Caller::administrator();
    let root = Fid::root(VOL);
    let a = created(make(&store, &admin, root, "a", true)).fid;
    let f = created(make(&store, &admin, a, "f", false));
    let link = |parent: Fid, n: &str| {
        apply(&store, &admin, Mutation::Link { parent, name: Name::new(n).unwrap(), target: f.fid.object })
    };
    assert_eq!(link(root, "g"), Err(RemoteError::CrossDirectoryLink));
    assert!(link(a, "g").is_ok());
    let mv = Mutation::Rename {
        from: a,
        from_name: Name::new("f").unwrap(),
        object: f.fid.object,
        to: root,
        to_name: Name::new("f").unwrap(),
        replaced: None,
    };
    assert_eq!(apply(&store, &admin, mv), Err(RemoteError::CrossDirectoryLink));
}

#[test]
fn a_new_name_for_a_file_takes_the_insert_right() {
    let (_d, store) = setup();
    let admin = Caller::administrator();
    let root = Fid::root(VOL);
    let a = created(make(&store, &admin, root, "a", true)).fid;
    let f = created(make(&store, &admin, a, "f", false));
    set(&store, &admin, a, BOB, "rl", false);
    let link = |who: &Caller| {
        apply(&store, who, Mutation::Link { parent: a, name: Name::new("g").unwrap(), target: f.fid.object })
    };
    assert_eq!(link(&bob()), Err(RemoteError::PermissionDenied), "read and lookup are not enough");
    set(&store, &admin, a, BOB, "rli", false);
    assert!(link(&bob()).is_ok());
}
