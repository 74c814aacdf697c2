//! Replicated volumes in the store: two members applying the same entries end up holding the
//! same volume, a leader's verdict on missing chunks is what every member follows, and a
//! snapshot rebuilds a member whole, remembered results included.

use proto::msg::VolumeKind;
use proto::*;

use crate::replicated::{Birth, GROUP_STAMP};
use crate::store::Store;
use crate::tests::{ADMIN, CLIENT, VOL, name, rec, upload};

fn member(dir: &tempfile::TempDir, id: u32) -> Store {
    Store::open(&dir.path().join(id.to_string()), ServerId(id)).unwrap()
}

fn digest(store: &Store) -> blake3::Hash {
    let mut out = Vec::new();
    store.dump(VOL, None, &mut out).unwrap();
    crate::dump::contents_digest(&mut &out[..]).unwrap()
}

/// Applies `records` on every member as `leader` decided them.
fn apply_all(leader: &Store, members: &[&Store], records: &[Record], at: u64) -> Vec<RecordResult> {
    let decided = leader.decide(&[], records).unwrap();
    let mut results = Vec::new();
    for m in members {
        let out = m.apply_decided(&ADMIN, CLIENT, None, VOL, &[], records, &decided, &at.to_le_bytes()).unwrap();
        results.push(out.results);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "members answered differently: {results:?}");
    results.remove(0)
}

#[test]
fn members_applying_the_same_entries_hold_the_same_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (member(&dir, 1), member(&dir, 2));
    let birth = Birth::new_replicated();
    for s in [&a, &b] {
        s.create_replicated(VOL, "rep", 0, &Acl::volume_default(), birth, b"0").unwrap();
    }
    assert_eq!(digest(&a), digest(&b), "born the same");
    let object = ObjectId::random();
    let create = Mutation::Create {
        parent: Fid::root(VOL),
        name: name("f"),
        object,
        mode: 0o644,
        owner: 0,
        group: 0,
        mtime: Timestamp::now(),
    };
    let results = apply_all(&a, &[&a, &b], &[rec(create)], 1);
    let attr = results[0].as_ref().unwrap().attrs.iter().find(|x| x.fid.object == object).unwrap().clone();
    assert_eq!(attr.version, VersionVector::first(GROUP_STAMP), "stamped by the group, not a server");

    // The leader holds the chunks, the other member does not yet: the leader's verdict holds
    // on both (the member pulls the chunks before applying in real life; here it gets them).
    let chunks = upload(&a, b"replicated contents");
    upload(&b, b"replicated contents");
    let store =
        Mutation::Store { fid: attr.fid, base: Base::Version(attr.version.clone()), chunks, mtime: Timestamp::now() };
    let stored = apply_all(&a, &[&a, &b], &[rec(store)], 2);
    let version = stored[0].as_ref().unwrap().attrs.iter().find(|x| x.fid == attr.fid).unwrap().version.clone();
    assert_eq!(digest(&a), digest(&b));
    assert_eq!(b.applied(VOL).unwrap(), Some(2u64.to_le_bytes().to_vec()), "the position is recorded with the change");

    // A store whose chunks the leader lacks is refused on every member, even one that has them.
    let other = upload(&b, b"only the follower has this");
    let store = Mutation::Store { fid: attr.fid, base: Base::Version(version), chunks: other, mtime: Timestamp::now() };
    let results = apply_all(&a, &[&a, &b], &[rec(store)], 3);
    assert_eq!(results[0], Err(RemoteError::MissingChunks(1)));
    assert_eq!(digest(&a), digest(&b));
}

#[test]
fn a_snapshot_rebuilds_a_member_with_the_results_it_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (member(&dir, 1), member(&dir, 2));
    a.create_replicated(VOL, "rep", 0, &Acl::volume_default(), Birth::new_replicated(), b"0").unwrap();
    let record = rec(Mutation::MakeDir {
        parent: Fid::root(VOL),
        name: name("d"),
        object: ObjectId::random(),
        mode: 0o755,
        owner: 0,
        group: 0,
        mtime: Timestamp::now(),
    });
    let first = apply_all(&a, &[&a], std::slice::from_ref(&record), 1);

    let mut snap = std::io::Cursor::new(Vec::new());
    let at = a.snapshot(VOL, &mut snap).unwrap();
    assert_eq!(at, 1u64.to_le_bytes().to_vec());
    let installed = b.install_snapshot(VOL, &mut snap).unwrap();
    assert_eq!(installed, at);
    assert_eq!(b.volume(VOL).unwrap().kind, VolumeKind::ReadWrite);
    assert_eq!(digest(&a), digest(&b));
    // The record sent again (a client's retry after a leader change) is answered, not applied.
    let again = apply_all(&a, &[&a, &b], std::slice::from_ref(&record), 2);
    assert_eq!(again, first);
    assert_eq!(digest(&a), digest(&b));
    // A damaged snapshot is refused and changes nothing.
    let mut bad = std::io::Cursor::new(vec![1u8; 5]);
    assert!(b.install_snapshot(VOL, &mut bad).is_err());
    assert_eq!(digest(&a), digest(&b));
}
