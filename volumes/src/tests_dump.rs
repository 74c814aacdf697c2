//! Dumps, restores and clones, through the same entry points the server uses.

use std::collections::BTreeMap;

use proto::chunk::chunk_bytes;
use proto::msg::VolumeKind;
use proto::*;

use crate::Caller;
use crate::store::Store;

const CLIENT: ClientId = ClientId(9);
const SRC: VolumeId = VolumeId(20);
const COPY: VolumeId = VolumeId(21);
const REPLICA: VolumeId = VolumeId(22);

fn admin() -> Caller {
    Caller::administrator()
}

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), ServerId(1)).unwrap();
    store.create_volume(SRC, "src", VolumeKind::ReadWrite, 0, &Acl::volume_default()).unwrap();
    (dir, store)
}

fn apply(store: &Store, m: Mutation) -> Applied {
    store
        .apply(&admin(), CLIENT, None, &[Record { op: OpId::random(), mutation: m }])
        .unwrap()
        .results
        .remove(0)
        .unwrap()
}

fn make(store: &Store, parent: Fid, name: &str, dir: bool) -> Attr {
    let (object, name, mtime) = (ObjectId::random(), Name::new(name).unwrap(), Timestamp::now());
    let m = if dir {
        Mutation::MakeDir { parent, name, object, mode: 0o755, owner: 0, group: 0, mtime }
    } else {
        Mutation::Create { parent, name, object, mode: 0o644, owner: 0, group: 0, mtime }
    };
    apply(store, m).attrs.into_iter().find(|a| a.fid.object == object).unwrap()
}

fn write(store: &Store, attr: &Attr, data: &[u8]) -> Attr {
    let refs = crate::tests::upload(store, data);
    let base = store.fetch_status(&admin(), attr.fid).unwrap().0;
    let m = Mutation::Store { fid: attr.fid, base: Base::Version(base.version), chunks: refs, mtime: Timestamp::now() };
    apply(store, m).attrs.into_iter().find(|a| a.fid == attr.fid).unwrap()
}

/// Every path of a volume with what it holds (a hash for files, the target for symlinks).
fn tree(store: &Store, volume: VolumeId) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), Fid::root(volume))];
    while let Some((path, fid)) = stack.pop() {
        let (_, entries, _) = store.fetch_dir(&admin(), fid).unwrap();
        for e in entries {
            let p = format!("{path}/{}", e.name.as_str());
            let child = Fid::new(volume, e.object);
            let what = match e.kind {
                ObjectKind::Directory => {
                    stack.push((p.clone(), child));
                    "dir".to_string()
                }
                ObjectKind::File => {
                    let (attr, chunks, _) = store.fetch_data(&admin(), child).unwrap();
                    let mut h = blake3::Hasher::new();
                    for c in &chunks {
                        h.update(&store.read_chunk(c).unwrap());
                    }
                    format!("file {} {} {:o}", attr.size, h.finalize(), attr.mode)
                }
                _ => format!("{:?} {:?}", e.kind, store.fetch_status(&admin(), child).unwrap().0.link),
            };
            out.insert(p, what);
        }
    }
    out
}

fn populate(store: &Store) -> (Attr, Attr) {
    let root = Fid::root(SRC);
    let d = make(store, root, "docs", true);
    let a = make(store, d.fid, "a.txt", false);
    let a = write(store, &a, &vec![7u8; 300_000]);
    let b = make(store, root, "b.bin", false);
    let b = write(store, &b, &vec![7u8; 300_000]); // the same chunks as a.txt
    let s = Mutation::Symlink {
        parent: root,
        name: Name::new("link").unwrap(),
        object: ObjectId::random(),
        target: "docs/a.txt".into(),
        owner: 0,
        group: 0,
        mtime: Timestamp::now(),
    };
    apply(store, s);
    (a, b)
}

fn dump(store: &Store, since: Option<Timestamp>) -> Vec<u8> {
    let mut out = Vec::new();
    store.dump(SRC, since, &mut out).unwrap();
    out
}

#[test]
fn a_full_dump_restores_to_an_equal_tree_and_an_incremental_one_catches_up() {
    let (_d, store) = setup();
    let (a, b) = populate(&store);
    let full = dump(&store, None);
    let (info, summary) = store.restore(&mut full.as_slice(), COPY, "copy", VolumeKind::ReadWrite, false).unwrap();
    assert_eq!(tree(&store, COPY), tree(&store, SRC));
    let unique: std::collections::HashSet<_> = chunk_bytes(&[7u8; 300_000]).into_iter().map(|(r, _)| r.hash).collect();
    assert_eq!(summary.chunks, unique.len() as u64, "chunks shared by two files travel once");
    assert_eq!((info.files, info.directories, info.used), (2, 2, 600_000));
    assert_eq!(info.stamp, store.volume(SRC).unwrap().stamp, "the restored volume keeps the dumped history");

    // Changes, then an incremental dump of them only.
    let since = Timestamp::now();
    std::thread::sleep(std::time::Duration::from_millis(5));
    write(&store, &a, b"changed");
    let seen =
        Seen { object: b.fid.object, base: Base::Version(store.fetch_status(&admin(), b.fid).unwrap().0.version) };
    apply(&store, Mutation::Remove { parent: Fid::root(SRC), name: Name::new("b.bin").unwrap(), seen });
    let docs = store.fetch_dir(&admin(), Fid::root(SRC)).unwrap().1.into_iter().find(|e| e.name.as_str() == "docs");
    make(&store, Fid::new(SRC, docs.unwrap().object), "new.txt", false);
    let inc = dump(&store, Some(since));
    assert!(inc.len() < full.len() / 10, "the incremental dump carries the changes only");
    store.restore(&mut inc.as_slice(), COPY, "copy", VolumeKind::ReadWrite, false).unwrap();
    assert_eq!(tree(&store, COPY), tree(&store, SRC));
    assert_eq!(store.volume(COPY).unwrap().files, 2);

    // An incremental dump cannot make a volume from nothing.
    assert!(store.restore(&mut inc.as_slice(), VolumeId(30), "other", VolumeKind::ReadWrite, false).is_err());
}

#[test]
fn a_damaged_or_cut_dump_is_refused_and_restores_nothing() {
    let (_d, store) = setup();
    populate(&store);
    let full = dump(&store, None);
    let mut flipped = full.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let err = store.restore(&mut flipped.as_slice(), COPY, "copy", VolumeKind::ReadWrite, false).unwrap_err();
    assert!(err.to_string().contains("not a valid dump"), "{err}");
    for cut in [3, 20, full.len() / 3, full.len() - 1] {
        let err = store.restore(&mut &full[..cut], COPY, "copy", VolumeKind::ReadWrite, false).unwrap_err();
        assert!(err.to_string().contains("not a valid dump"), "{cut}: {err}");
    }
    let mut trailing = full.clone();
    trailing.push(0);
    assert!(store.restore(&mut trailing.as_slice(), COPY, "copy", VolumeKind::ReadWrite, false).is_err());
    assert!(store.volume(COPY).is_err(), "nothing was restored");
    assert!(store.restore(&mut full.as_slice(), COPY, "copy", VolumeKind::ReadWrite, false).is_ok());
}

#[test]
fn a_clone_shares_chunks_and_keeps_the_old_contents() {
    let (_d, store) = setup();
    let (a, _) = populate(&store);
    let chunks_before =
        store.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get::<_, i64>(0))?)).unwrap();
    let before = tree(&store, SRC);
    let info = store.clone_volume(SRC, COPY, "src.backup", VolumeKind::Backup).unwrap();
    assert_eq!(info.kind, VolumeKind::Backup);
    let chunks_after =
        store.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get::<_, i64>(0))?)).unwrap();
    assert_eq!(chunks_before, chunks_after, "a clone adds no chunks");
    write(&store, &a, b"after the backup");
    assert_eq!(tree(&store, COPY), before, "the clone keeps the old contents");
    assert_ne!(tree(&store, SRC), before);
    // Read-only: records are refused.
    let r = store.apply(&admin(), CLIENT, None, &[create_in(COPY)]);
    assert_eq!(r.unwrap().results[0], Err(RemoteError::ReadOnly));
    // A release restores a replica the same way: read-only, with the original's stamp.
    let mut full = Vec::new();
    store.dump(SRC, None, &mut full).unwrap();
    let (replica, _) =
        store.restore(&mut full.as_slice(), REPLICA, "src.readonly", VolumeKind::ReadOnly, true).unwrap();
    assert_eq!((replica.kind, replica.stamp), (VolumeKind::ReadOnly, store.volume(SRC).unwrap().stamp));
    assert_eq!(tree(&store, REPLICA), tree(&store, SRC));
    let r = store.apply(&admin(), CLIENT, None, &[create_in(REPLICA)]);
    assert_eq!(r.unwrap().results[0], Err(RemoteError::ReadOnly));
    // A second backup replaces the first, with a new incarnation (clients revalidate).
    let again = store.clone_volume(SRC, COPY, "src.backup", VolumeKind::Backup).unwrap();
    assert_ne!(again.stamp.incarnation, info.stamp.incarnation);
    assert_eq!(tree(&store, COPY), tree(&store, SRC));
}

/// A record creating a file in the root of `volume`.
fn create_in(volume: VolumeId) -> Record {
    Record {
        op: OpId::random(),
        mutation: Mutation::Create {
            parent: Fid::root(volume),
            name: Name::new("x").unwrap(),
            object: ObjectId::random(),
            mode: 0o644,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        },
    }
}
