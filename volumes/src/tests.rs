//! Unit tests of the volume store, driven through the same `apply` entry point the server uses.

use std::time::Duration;

use proto::chunk::chunk_bytes;
use proto::msg::VolumeKind;
use proto::*;

use crate::store::Store;

pub(crate) const CLIENT: ClientId = ClientId(7);
pub(crate) const VOL: VolumeId = VolumeId(10);
pub(crate) static ADMIN: std::sync::LazyLock<crate::Caller> = std::sync::LazyLock::new(crate::Caller::administrator);

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), ServerId(1)).unwrap();
    store.create_volume(VOL, "test", VolumeKind::ReadWrite, 0, &proto::Acl::volume_default()).unwrap();
    (dir, store)
}

fn root() -> Fid {
    Fid::root(VOL)
}

pub(crate) fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub(crate) fn rec(m: Mutation) -> Record {
    Record { op: OpId::random(), mutation: m }
}

/// Applies one record as the administrator (for the other test modules too).
pub(crate) fn apply1(store: &Store, m: Mutation) -> RecordResult {
    store.apply(&ADMIN, CLIENT, None, &[rec(m)]).unwrap().results.remove(0)
}

fn create(store: &Store, parent: Fid, n: &str) -> Attr {
    let object = ObjectId::random();
    let m =
        Mutation::Create { parent, name: name(n), object, mode: 0o644, owner: 0, group: 0, mtime: Timestamp::now() };
    let applied = apply1(store, m).unwrap();
    applied.attrs.into_iter().find(|a| a.fid.object == object).unwrap()
}

fn mkdir(store: &Store, parent: Fid, n: &str) -> Attr {
    let object = ObjectId::random();
    let m =
        Mutation::MakeDir { parent, name: name(n), object, mode: 0o755, owner: 0, group: 0, mtime: Timestamp::now() };
    let applied = apply1(store, m).unwrap();
    applied.attrs.into_iter().find(|a| a.fid.object == object).unwrap()
}

pub(crate) fn upload(store: &Store, data: &[u8]) -> Vec<ChunkRef> {
    let mut up = store.upload();
    let mut refs = Vec::new();
    for (r, bytes) in chunk_bytes(data) {
        up.add(r, bytes).unwrap();
        refs.push(r);
    }
    up.commit().unwrap();
    refs
}

fn store_data(store: &Store, attr: &Attr, data: &[u8]) -> RecordResult {
    let chunks = upload(store, data);
    apply1(
        store,
        Mutation::Store { fid: attr.fid, base: Base::Version(attr.version.clone()), chunks, mtime: Timestamp::now() },
    )
}

/// A chunk file as servers wrote them before packs.
fn legacy_chunk_file(store: &Store, hash: &ChunkHash, data: &[u8]) {
    let path = store.chunks.path(hash);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn read_all(store: &Store, fid: Fid) -> Vec<u8> {
    let (_, chunks, _) = store.fetch_data(&ADMIN, fid).unwrap();
    chunks.iter().flat_map(|c| store.read_chunk(c).unwrap()).collect()
}

#[test]
fn store_bumps_version_and_stamp() {
    let (_d, store) = setup();
    let before = store.stamp(VOL).unwrap();
    let f = create(&store, root(), "a");
    let applied = store_data(&store, &f, b"hello").unwrap();
    let after = applied.attrs.iter().find(|a| a.fid == f.fid).unwrap();
    assert_eq!(after.version.compare(&f.version), VvOrder::Dominates);
    assert_eq!(after.size, 5);
    assert!(applied.stamp.follows(&before, 2), "{} then {}", before, applied.stamp);
    assert_eq!(read_all(&store, f.fid), b"hello");
    let info = store.volume(VOL).unwrap();
    assert_eq!((info.files, info.used), (1, 5));
}

#[test]
fn stale_base_is_a_conflict_and_changes_nothing() {
    let (_d, store) = setup();
    let f = create(&store, root(), "a");
    store_data(&store, &f, b"first").unwrap();
    // A second writer still based on the version before "first".
    let err = store_data(&store, &f, b"second").unwrap_err();
    assert!(matches!(err, RemoteError::Conflict(ConflictKind::VersionChanged { .. })), "{err:?}");
    assert_eq!(read_all(&store, f.fid), b"first");
}

#[test]
fn after_op_base_certifies_offline_chains() {
    let (_d, store) = setup();
    let object = ObjectId::random();
    let create_op = OpId::random();
    let chunks = upload(&store, b"offline");
    let batch = vec![
        Record {
            op: create_op,
            mutation: Mutation::Create {
                parent: root(),
                name: name("new"),
                object,
                mode: 0o600,
                owner: 0,
                group: 0,
                mtime: Timestamp::now(),
            },
        },
        rec(Mutation::Store {
            fid: Fid::new(VOL, object),
            base: Base::AfterOp(create_op),
            chunks,
            mtime: Timestamp::now(),
        }),
    ];
    let out = store.apply(&ADMIN, CLIENT, Some(VOL), &batch).unwrap();
    assert!(out.results.iter().all(|r| r.is_ok()), "{:?}", out.results);
    assert_eq!(read_all(&store, Fid::new(VOL, object)), b"offline");
    // The same chain based on an op that is not the object's last fails to certify.
    let err = apply1(
        &store,
        Mutation::SetAttr {
            fid: Fid::new(VOL, object),
            base: Base::AfterOp(create_op),
            set: SetAttrs { mode: Some(0o644), ..Default::default() },
        },
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Conflict(ConflictKind::VersionChanged { .. })));
}

#[test]
fn replayed_op_is_applied_once() {
    let (_d, store) = setup();
    let f = create(&store, root(), "a");
    let chunks = upload(&store, b"once");
    let r =
        rec(Mutation::Store { fid: f.fid, base: Base::Version(f.version.clone()), chunks, mtime: Timestamp::now() });
    let first = store.apply(&ADMIN, CLIENT, None, std::slice::from_ref(&r)).unwrap();
    let stamp = store.stamp(VOL).unwrap();
    let second = store.apply(&ADMIN, CLIENT, None, std::slice::from_ref(&r)).unwrap();
    assert_eq!(first.results, second.results);
    assert_eq!(store.stamp(VOL).unwrap(), stamp, "the replay changed nothing");
    assert!(second.changed.is_empty());
}

#[test]
fn identical_content_is_stored_once_and_reclaimed_when_unreferenced() {
    let (_d, store) = setup();
    let content = proto::samples::pseudo_random(3 * 1024 * 1024, 1);
    let a = create(&store, root(), "a");
    let b = create(&store, root(), "b");
    store_data(&store, &a, &content).unwrap();
    let (n1, bytes1) = store.chunk_usage().unwrap();
    assert_eq!(
        store.missing_chunks(&chunk_bytes(&content).iter().map(|(r, _)| r.hash).collect::<Vec<_>>()).unwrap(),
        Vec::<u32>::new()
    );
    store_data(&store, &b, &content).unwrap();
    assert_eq!(store.chunk_usage().unwrap(), (n1, bytes1), "second copy added no chunks");
    assert_eq!(bytes1, content.len() as u64);

    // Removing one copy keeps the chunks; removing both lets the sweep reclaim them.
    let b_attr = store.fetch_status(&ADMIN, b.fid).unwrap().0;
    apply1(
        &store,
        Mutation::Remove {
            parent: root(),
            name: name("b"),
            seen: Seen { object: b.fid.object, base: Base::Version(b_attr.version) },
        },
    )
    .unwrap();
    assert_eq!(store.sweep(Duration::ZERO).unwrap().chunks_removed, 0);
    let a_attr = store.fetch_status(&ADMIN, a.fid).unwrap().0;
    apply1(
        &store,
        Mutation::Remove {
            parent: root(),
            name: name("a"),
            seen: Seen { object: a.fid.object, base: Base::Version(a_attr.version) },
        },
    )
    .unwrap();
    let report = store.sweep(Duration::ZERO).unwrap();
    assert_eq!(report.chunks_removed, n1);
    assert_eq!(report.bytes_removed, bytes1);
    assert_eq!(store.chunk_usage().unwrap(), (0, 0));
    assert!(store.chunks.packs().unwrap().is_empty(), "packs deleted");
}

#[test]
fn grace_period_protects_fresh_uploads_and_orphans_are_swept() {
    let (_d, store) = setup();
    upload(&store, b"not yet referenced");
    assert_eq!(store.sweep(Duration::from_secs(3600)).unwrap().chunks_removed, 0);
    // A chunk file with no record (a crash between write and commit) is an orphan.
    let h = ChunkHash::of(b"torn");
    legacy_chunk_file(&store, &h, b"torn");
    assert_eq!(store.sweep(Duration::from_secs(3600)).unwrap().orphan_files_removed, 1);
}

#[test]
fn upload_rejects_data_that_does_not_match_its_hash() {
    let (_d, store) = setup();
    let mut up = store.upload();
    let r = ChunkRef { hash: ChunkHash::of(b"abc"), len: 3 };
    assert!(up.add(r, b"abd").is_err());
    assert!(up.add(ChunkRef { hash: r.hash, len: 4 }, b"abc").is_err());
}

#[test]
fn store_with_missing_chunks_is_refused() {
    let (_d, store) = setup();
    let f = create(&store, root(), "a");
    let err = apply1(
        &store,
        Mutation::Store {
            fid: f.fid,
            base: Base::Version(f.version),
            chunks: vec![ChunkRef { hash: ChunkHash::of(b"never sent"), len: 10 }],
            mtime: Timestamp::now(),
        },
    )
    .unwrap_err();
    assert_eq!(err, RemoteError::MissingChunks(1));
}

#[test]
fn a_failed_record_leaves_no_trace_but_the_batch_goes_on() {
    let (_d, store) = setup();
    let f = create(&store, root(), "a");
    let before = store.fetch_dir(&ADMIN, root()).unwrap();
    let batch = vec![
        // Conflicts: the name exists.
        rec(Mutation::Create {
            parent: root(),
            name: name("a"),
            object: ObjectId::random(),
            mode: 0o644,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        }),
        rec(Mutation::SetAttr {
            fid: f.fid,
            base: Base::Version(f.version.clone()),
            set: SetAttrs { mode: Some(0o600), ..Default::default() },
        }),
    ];
    let out = store.apply(&ADMIN, CLIENT, Some(VOL), &batch).unwrap();
    assert!(
        matches!(out.results[0], Err(RemoteError::Conflict(ConflictKind::NameTaken { existing })) if existing == f.fid.object)
    );
    assert!(out.results[1].is_ok());
    let after = store.fetch_dir(&ADMIN, root()).unwrap();
    assert_eq!(before.1, after.1);
    assert_eq!(store.fetch_status(&ADMIN, f.fid).unwrap().0.mode, 0o600);
}

#[test]
fn directories_rename_and_rmdir_follow_posix() {
    let (_d, store) = setup();
    let d1 = mkdir(&store, root(), "d1");
    let d2 = mkdir(&store, root(), "d2");
    let f = create(&store, d1.fid, "f");
    assert_eq!(store.fetch_status(&ADMIN, root()).unwrap().0.nlink, 4);

    // rmdir of a non-empty directory.
    let err =
        apply1(&store, Mutation::RemoveDir { parent: root(), name: name("d1"), object: d1.fid.object }).unwrap_err();
    assert_eq!(err, RemoteError::Conflict(ConflictKind::DirectoryNotEmpty));

    // Move a file between directories.
    apply1(
        &store,
        Mutation::Rename {
            from: d1.fid,
            from_name: name("f"),
            object: f.fid.object,
            to: d2.fid,
            to_name: name("g"),
            replaced: None,
        },
    )
    .unwrap();
    assert!(store.fetch_dir(&ADMIN, d1.fid).unwrap().1.is_empty());
    assert_eq!(store.fetch_dir(&ADMIN, d2.fid).unwrap().1[0].name.as_str(), "g");
    // The file's version is untouched by a rename: an edit elsewhere does not conflict.
    assert_eq!(store.fetch_status(&ADMIN, f.fid).unwrap().0.version, f.version);

    // A directory cannot move below itself.
    let sub = mkdir(&store, d1.fid, "sub");
    let err = apply1(
        &store,
        Mutation::Rename {
            from: root(),
            from_name: name("d1"),
            object: d1.fid.object,
            to: sub.fid,
            to_name: name("x"),
            replaced: None,
        },
    )
    .unwrap_err();
    assert_eq!(err, RemoteError::WouldLoop);

    // Move a directory: parents and link counts follow.
    apply1(
        &store,
        Mutation::Rename {
            from: d1.fid,
            from_name: name("sub"),
            object: sub.fid.object,
            to: d2.fid,
            to_name: name("sub"),
            replaced: None,
        },
    )
    .unwrap();
    assert_eq!(store.fetch_status(&ADMIN, sub.fid).unwrap().0.parent, Some(d2.fid.object));
    assert_eq!(store.fetch_status(&ADMIN, d1.fid).unwrap().0.nlink, 2);
    assert_eq!(store.fetch_status(&ADMIN, d2.fid).unwrap().0.nlink, 3);

    // Replacing a target requires having seen it.
    let h = create(&store, d2.fid, "h");
    let err = apply1(
        &store,
        Mutation::Rename {
            from: d2.fid,
            from_name: name("g"),
            object: f.fid.object,
            to: d2.fid,
            to_name: name("h"),
            replaced: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Conflict(ConflictKind::NameTaken { .. })));
    let before = store.fetch_status(&ADMIN, d2.fid).unwrap().0.version;
    let applied = apply1(
        &store,
        Mutation::Rename {
            from: d2.fid,
            from_name: name("g"),
            object: f.fid.object,
            to: d2.fid,
            to_name: name("h"),
            replaced: Some(Seen { object: h.fid.object, base: Base::Version(h.version) }),
        },
    )
    .unwrap();
    assert_eq!(applied.removed, vec![h.fid.object]);
    // Three entry changes, one operation: the directory's version moves once, so the client
    // that made it can tell that nobody else's change came in between.
    let after = store.fetch_status(&ADMIN, d2.fid).unwrap().0.version;
    assert!(after.directly_follows(&before), "{before} -> {after}");
    assert!(matches!(store.fetch_status(&ADMIN, h.fid), Err(crate::StoreError::Refused(RemoteError::NotFound))));

    // Now d1 is empty and can go.
    apply1(&store, Mutation::RemoveDir { parent: root(), name: name("d1"), object: d1.fid.object }).unwrap();
    assert_eq!(store.volume(VOL).unwrap().directories, 3); // root, d2, sub
}

#[test]
fn hard_links_share_contents_until_the_last_name_goes() {
    let (_d, store) = setup();
    let f = create(&store, root(), "a");
    store_data(&store, &f, b"shared").unwrap();
    apply1(&store, Mutation::Link { parent: root(), name: name("b"), target: f.fid.object }).unwrap();
    assert_eq!(store.fetch_status(&ADMIN, f.fid).unwrap().0.nlink, 2);
    let v = store.fetch_status(&ADMIN, f.fid).unwrap().0.version;
    let out = apply1(
        &store,
        Mutation::Remove {
            parent: root(),
            name: name("a"),
            seen: Seen { object: f.fid.object, base: Base::Version(v.clone()) },
        },
    )
    .unwrap();
    assert!(out.removed.is_empty());
    assert_eq!(read_all(&store, f.fid), b"shared");
    apply1(
        &store,
        Mutation::Remove {
            parent: root(),
            name: name("b"),
            seen: Seen { object: f.fid.object, base: Base::Version(v) },
        },
    )
    .unwrap();
    assert_eq!(store.volume(VOL).unwrap().used, 0);
}

#[test]
fn quota_refuses_growth_beyond_it() {
    let (_d, store) = setup();
    store.set_quota(VOL, 1000).unwrap();
    let f = create(&store, root(), "a");
    let err = store_data(&store, &f, &vec![1u8; 1001]).unwrap_err();
    assert_eq!(err, RemoteError::QuotaExceeded);
    assert_eq!(store.fetch_status(&ADMIN, f.fid).unwrap().0.size, 0, "nothing partial is visible");
    store_data(&store, &f, &[1u8; 1000]).unwrap();
}

#[test]
fn bad_inputs_are_refused() {
    let (_d, store) = setup();
    let err = apply1(
        &store,
        Mutation::Symlink {
            parent: root(),
            name: name("l"),
            object: ObjectId::random(),
            target: String::new(),
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Invalid(_)));
    let err = apply1(
        &store,
        Mutation::MakeMountPoint {
            parent: root(),
            name: name("m"),
            object: ObjectId::random(),
            target: "nope".into(),
            owner: 0,
            mtime: Timestamp::now(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Invalid(_)));
    apply1(
        &store,
        Mutation::MakeMountPoint {
            parent: root(),
            name: name("m"),
            object: ObjectId::random(),
            target: "#example.org:user.alice".into(),
            owner: 0,
            mtime: Timestamp::now(),
        },
    )
    .unwrap();
    let err = apply1(
        &store,
        Mutation::Create {
            parent: root(),
            name: name("x"),
            object: ObjectId(5),
            mode: 0,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Invalid(_)));
    let dup = create(&store, root(), "y");
    let err = apply1(
        &store,
        Mutation::Create {
            parent: root(),
            name: name("z"),
            object: dup.fid.object,
            mode: 0,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        },
    )
    .unwrap_err();
    assert_eq!(err, RemoteError::DuplicateObject);
    let err = apply1(
        &store,
        Mutation::Create {
            parent: Fid::root(VolumeId(999)),
            name: name("z"),
            object: ObjectId::random(),
            mode: 0,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        },
    )
    .unwrap_err();
    assert_eq!(err, RemoteError::NoSuchVolume);
}

#[test]
fn store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let content = proto::samples::pseudo_random(600_000, 9);
    let fid = {
        let store = Store::open(dir.path(), ServerId(1)).unwrap();
        store.create_volume(VOL, "test", VolumeKind::ReadWrite, 0, &proto::Acl::volume_default()).unwrap();
        let f = create(&store, root(), "a");
        store_data(&store, &f, &content).unwrap();
        f.fid
    };
    let store = Store::open(dir.path(), ServerId(1)).unwrap();
    assert_eq!(read_all(&store, fid), content);
}

#[test]
fn small_chunks_live_in_the_database_and_large_ones_in_files() {
    let (_d, store) = setup();
    let small = create(&store, root(), "small");
    let large = create(&store, root(), "large");
    let small_data = proto::samples::pseudo_random(crate::chunks::INLINE_MAX as usize, 3);
    let large_data = proto::samples::pseudo_random(2 << 20, 4);
    store_data(&store, &small, &small_data).unwrap();
    assert!(store.chunks.packs().unwrap().is_empty(), "a small file is in no pack");
    store_data(&store, &large, &large_data).unwrap();
    let chunks = chunk_bytes(&large_data);
    let packed: u64 =
        chunks.iter().filter(|(r, _)| r.len > crate::chunks::INLINE_MAX).map(|(r, _)| u64::from(r.len)).sum();
    let packs = store.chunks.packs().unwrap();
    assert_eq!(packs.len(), 1, "one pack per upload");
    assert_eq!(packs[0].1, packed, "only chunks over the inline limit are packed");
    assert!(store.chunks.list().unwrap().is_empty(), "no chunk files of their own");
    assert_eq!(read_all(&store, small.fid), small_data);
    assert_eq!(read_all(&store, large.fid), large_data);

    // Reclaimed like any other chunk.
    for (n, attr) in [("small", &small), ("large", &large)] {
        let version = store.fetch_status(&ADMIN, attr.fid).unwrap().0.version;
        let seen = Seen { object: attr.fid.object, base: Base::Version(version) };
        apply1(&store, Mutation::Remove { parent: root(), name: name(n), seen }).unwrap();
    }
    let report = store.sweep(Duration::ZERO).unwrap();
    assert_eq!(report.bytes_removed, (small_data.len() + large_data.len()) as u64);
    assert_eq!(store.chunk_usage().unwrap(), (0, 0));
    assert!(store.chunks.packs().unwrap().is_empty());
}

#[test]
fn a_small_file_and_its_store_commit_together() {
    let (_d, store) = setup();
    let f = create(&store, root(), "f");
    let data = b"hello, inline world".to_vec();
    let chunk = ChunkRef { hash: ChunkHash::of(&data), len: data.len() as u32 };
    let small = crate::SmallChunk::new(chunk, data.clone()).unwrap();
    let store_rec = |base: VersionVector| {
        rec(Mutation::Store { fid: f.fid, base: Base::Version(base), chunks: vec![chunk], mtime: Timestamp::now() })
    };
    let out =
        store.apply_with_chunks(&ADMIN, CLIENT, None, std::slice::from_ref(&small), &[store_rec(f.version.clone())]);
    out.unwrap().results.remove(0).unwrap();
    assert_eq!(read_all(&store, f.fid), data);

    // A refused record (stale base) still leaves the chunk recorded, as a separate upload would.
    let other = b"other bytes".to_vec();
    let other_ref = ChunkRef { hash: ChunkHash::of(&other), len: other.len() as u32 };
    let other_small = crate::SmallChunk::new(other_ref, other).unwrap();
    let out = store.apply_with_chunks(&ADMIN, CLIENT, None, &[other_small], &[store_rec(f.version.clone())]).unwrap();
    assert!(matches!(out.results[0], Err(RemoteError::Conflict { .. })), "{:?}", out.results[0]);
    assert!(store.missing_chunks(&[other_ref.hash]).unwrap().is_empty());

    // What does not match its hash, or is not small, is refused before any transaction.
    assert!(crate::SmallChunk::new(chunk, b"tampered bytes here".to_vec()).is_err());
    let big = proto::samples::pseudo_random(crate::chunks::INLINE_MAX as usize + 1, 5);
    let big_ref = ChunkRef { hash: ChunkHash::of(&big), len: big.len() as u32 };
    assert!(crate::SmallChunk::new(big_ref, big).is_err());
}

#[test]
fn a_version_2_store_is_migrated_and_keeps_its_chunk_files() {
    let dir = tempfile::tempdir().unwrap();
    let content = proto::samples::pseudo_random(1000, 6);
    let fid = {
        let store = Store::open(dir.path(), ServerId(1)).unwrap();
        store.create_volume(VOL, "test", VolumeKind::ReadWrite, 0, &proto::Acl::volume_default()).unwrap();
        let f = create(&store, root(), "a");
        // As a version-2 server stored it: a chunk file, a row without bytes.
        let chunk = ChunkRef { hash: ChunkHash::of(&content), len: content.len() as u32 };
        legacy_chunk_file(&store, &chunk.hash, &content);
        store
            .lock_writer()
            .execute(
                "INSERT INTO chunks (hash, len, added_at) VALUES (?1, ?2, 0)",
                rusqlite::params![&chunk.hash.0[..], chunk.len],
            )
            .unwrap();
        let m = Mutation::Store {
            fid: f.fid,
            base: Base::Version(f.version),
            chunks: vec![chunk],
            mtime: Timestamp::now(),
        };
        apply1(&store, m).unwrap();
        store
            .lock_writer()
            .execute_batch(
                "DROP INDEX chunks_pack; ALTER TABLE chunks DROP COLUMN pack; ALTER TABLE chunks DROP COLUMN pack_offset;
                 ALTER TABLE chunks DROP COLUMN data; DROP TABLE permits; DROP TABLE replicated;
                 DROP INDEX op_results_volume; ALTER TABLE op_results DROP COLUMN volume; PRAGMA user_version=2;",
            )
            .unwrap();
        f.fid
    };
    let store = Store::open(dir.path(), ServerId(1)).unwrap();
    let version: i64 = store.lock_writer().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 6);
    assert_eq!(read_all(&store, fid), content);
    assert!(store.permits().unwrap().is_empty(), "the permits table was made");
    assert_eq!(store.sweep(Duration::ZERO).unwrap().orphan_files_removed, 0, "the recorded file is kept");
    assert_eq!(store.chunks.list().unwrap().len(), 1);
}

#[test]
fn a_chunk_file_left_beside_an_inline_row_is_swept() {
    let (_d, store) = setup();
    // A crash after writing the file, before its row; the chunk then came again, small.
    let data = b"left behind".to_vec();
    let h = ChunkHash::of(&data);
    legacy_chunk_file(&store, &h, &data);
    upload(&store, &data);
    assert_eq!(store.sweep(Duration::from_secs(3600)).unwrap().orphan_files_removed, 1);
    assert!(store.chunks.list().unwrap().is_empty());
    assert!(store.missing_chunks(&[h]).unwrap().is_empty(), "the recorded chunk stays");
}

/// Two files, `{prefix}keep` and `{prefix}dead`, whose chunks went up in one upload (one pack),
/// then `{prefix}dead` removed: the pack is mostly dead. Returns the kept file.
fn mostly_dead_pack(store: &Store, prefix: &str, keep: &[u8], dead: &[u8]) -> Attr {
    let mut up = store.upload();
    let (mut keep_refs, mut dead_refs) = (Vec::new(), Vec::new());
    for (data, refs) in [(keep, &mut keep_refs), (dead, &mut dead_refs)] {
        for (r, bytes) in chunk_bytes(data) {
            up.add(r, bytes).unwrap();
            refs.push(r);
        }
    }
    up.commit().unwrap();
    let (k, d) = (create(store, root(), &format!("{prefix}keep")), create(store, root(), &format!("{prefix}dead")));
    for (attr, chunks) in [(&k, keep_refs), (&d, dead_refs)] {
        let m = Mutation::Store {
            fid: attr.fid,
            base: Base::Version(attr.version.clone()),
            chunks,
            mtime: Timestamp::now(),
        };
        apply1(store, m).unwrap();
    }
    let version = store.fetch_status(&ADMIN, d.fid).unwrap().0.version;
    let seen = Seen { object: d.fid.object, base: Base::Version(version) };
    apply1(store, Mutation::Remove { parent: root(), name: name(&format!("{prefix}dead")), seen }).unwrap();
    k
}

#[test]
fn a_mostly_dead_pack_is_rewritten_and_an_unrecorded_one_removed() {
    let (_d, store) = setup();
    let keep = proto::samples::pseudo_random(1 << 20, 11);
    let k = mostly_dead_pack(&store, "", &keep, &proto::samples::pseudo_random(4 << 20, 13));
    let before = store.chunks.packs().unwrap();
    assert_eq!(before.len(), 1);
    // An upload that never committed (a crash, a refused chunk) leaves a pack no row names.
    let mut torn = store.upload();
    let big = proto::samples::pseudo_random(200_000, 15);
    torn.add(ChunkRef { hash: ChunkHash::of(&big), len: big.len() as u32 }, &big).unwrap();
    drop(torn);
    assert_eq!(store.chunks.packs().unwrap().len(), 2);

    let report = store.sweep(Duration::ZERO).unwrap();
    assert_eq!((report.packs_rewritten, report.packs_removed), (1, 1), "{report:?}");
    let after = store.chunks.packs().unwrap();
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].0, before[0].0, "a new pack");
    assert!(after[0].1 <= keep.len() as u64, "only live bytes copied: {} of {}", after[0].1, before[0].1);
    assert_eq!(report.pack_bytes_freed, before[0].1 - after[0].1 + big.len() as u64);
    assert_eq!(read_all(&store, k.fid), keep, "the kept file reads from its new place");
    // A second sweep finds nothing to do.
    let again = store.sweep(Duration::ZERO).unwrap();
    assert_eq!((again.packs_rewritten, again.packs_removed), (0, 0));
}

#[test]
fn an_upload_keeps_a_bounded_amount_of_small_chunks_in_memory_and_writes_a_repeat_once() {
    let (_d, store) = setup();
    let chunks: Vec<(ChunkRef, Vec<u8>)> = (0..200)
        .map(|i| {
            let data = proto::samples::pseudo_random(60_000, 1001 + 2 * i);
            (ChunkRef { hash: ChunkHash::of(&data), len: data.len() as u32 }, data)
        })
        .collect();
    let mut up = store.upload();
    for (r, data) in &chunks {
        up.add(*r, data).unwrap();
    }
    up.add(chunks[0].0, &chunks[0].1).unwrap();
    assert_eq!(up.commit().unwrap(), 200, "the repeated chunk counted once");
    let packs = store.chunks.packs().unwrap();
    assert_eq!(packs.len(), 1, "what did not fit in memory went to a pack");
    let total: u64 = chunks.iter().map(|(r, _)| u64::from(r.len)).sum();
    assert!(packs[0].1 > 0 && packs[0].1 <= total - (8 << 20) + 60_000, "pack of {} bytes", packs[0].1);
    for (r, data) in &chunks {
        assert_eq!(&store.read_chunk(r).unwrap(), data);
    }
}

#[test]
fn a_damaged_pack_is_left_alone_and_the_sweep_goes_on() {
    let (dir, store) = setup();
    // Two mostly dead packs; one of them then damaged.
    let mut attrs = Vec::new();
    for (prefix, seed) in [("a-", 21u64), ("b-", 23)] {
        let keep = proto::samples::pseudo_random(1 << 20, seed);
        let k = mostly_dead_pack(&store, prefix, &keep, &proto::samples::pseudo_random(4 << 20, seed + 100));
        attrs.push((k, keep));
    }
    // Damage the first live chunk of "a" in its pack.
    let first = store.fetch_data(&ADMIN, attrs[0].0.fid).unwrap().1[0];
    let (pack, offset): (i64, i64) = store
        .lock_writer()
        .query_row("SELECT pack, pack_offset FROM chunks WHERE hash = ?1", [&first.hash.0[..]], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let path = dir.path().join(format!("chunks/packs/{pack:016x}.pack"));
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(b"damage", offset as u64 + 10).unwrap();
    }
    let report = store.sweep(Duration::ZERO).unwrap();
    assert_eq!(report.pack_errors.len(), 1, "{report:?}");
    assert_eq!(report.packs_rewritten, 1, "the other pack is rewritten all the same");
    assert_eq!(store.chunks.packs().unwrap().len(), 2, "the damaged pack and the rewritten one; no partial pack left");
    assert_eq!(read_all(&store, attrs[1].0.fid), attrs[1].1);
}
