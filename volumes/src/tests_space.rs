//! A full disk, simulated: growth is refused with `NoSpace` below the low-water mark, while
//! removals commit, free their space and let the next store through; a database that is full
//! anyway answers `NoSpace` (never an internal error) and gives up the reserve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::chunk::chunk_bytes;
use proto::msg::VolumeKind;
use proto::*;

use crate::space::Limits;
use crate::store::Store;
use crate::tests::{ADMIN, CLIENT, VOL, apply1, name, rec};

const MIB: u64 = 1 << 20;
const LIMITS: Limits = Limits { low_water: 2 * MIB, reserve: 2 * MIB };

/// A store whose free space is whatever the test sets.
fn with_free(free: u64) -> (tempfile::TempDir, Arc<AtomicU64>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(AtomicU64::new(free));
    let d = disk.clone();
    let store =
        Store::open_with(dir.path(), ServerId(1), Box::new(move || Ok(d.load(Ordering::Relaxed))), LIMITS).unwrap();
    store.create_volume(VOL, "test", VolumeKind::ReadWrite, 0, &proto::Acl::volume_default()).unwrap();
    (dir, disk, store)
}

/// A store on a simulated disk of `capacity` bytes, of which its own files use what they
/// really hold: deleting a pack gives its bytes back, as on a real disk.
fn on_disk_of(capacity: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let free = move || Ok(capacity.saturating_sub(usage(&root)));
    let store = Store::open_with(dir.path(), ServerId(1), Box::new(free), LIMITS).unwrap();
    store.create_volume(VOL, "test", VolumeKind::ReadWrite, 0, &proto::Acl::volume_default()).unwrap();
    (dir, store)
}

fn usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => todo.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn root() -> Fid {
    Fid::root(VOL)
}

fn create_m(n: &str) -> Mutation {
    Mutation::Create {
        parent: root(),
        name: name(n),
        object: ObjectId::random(),
        mode: 0o644,
        owner: 0,
        group: 0,
        mtime: Timestamp::now(),
    }
}

fn created(store: &Store, n: &str) -> Attr {
    let m = create_m(n);
    let Mutation::Create { object, .. } = &m else { unreachable!() };
    let object = *object;
    let applied = apply1(store, m).unwrap();
    applied.attrs.into_iter().find(|a| a.fid.object == object).unwrap()
}

/// Distinct bytes for each seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    proto::samples::pseudo_random(len, seed << 1)
}

/// Uploads through the client path (admitted by declared size).
fn upload(store: &Store, data: &[u8]) -> Result<Vec<ChunkRef>, RemoteError> {
    let pieces = chunk_bytes(data);
    let mut up = store.upload_sized(data.len() as u64).map_err(|e| e.to_remote())?;
    for (r, bytes) in &pieces {
        up.add(*r, bytes).map_err(|e| e.to_remote())?;
    }
    up.commit().map_err(|e| e.to_remote())?;
    Ok(pieces.iter().map(|(r, _)| *r).collect())
}

fn store_m(attr: &Attr, chunks: Vec<ChunkRef>) -> Mutation {
    Mutation::Store { fid: attr.fid, base: Base::Version(attr.version.clone()), chunks, mtime: Timestamp::now() }
}

fn remove_m(f: &Attr, n: &str) -> Mutation {
    Mutation::Remove {
        parent: root(),
        name: name(n),
        seen: Seen { object: f.fid.object, base: Base::Version(f.version.clone()) },
    }
}

fn after(applied: &Applied, fid: Fid) -> Attr {
    applied.attrs.iter().find(|a| a.fid == fid).unwrap().clone()
}

#[test]
fn below_the_low_water_mark_growth_is_refused_and_the_rest_goes_on() {
    let (_d, disk, store) = with_free(100 * MIB);
    let f = created(&store, "f");
    let chunks = upload(&store, b"some contents").unwrap();
    let f = after(&apply1(&store, store_m(&f, chunks)).unwrap(), f.fid);
    let g = created(&store, "g");
    let dir = {
        let object = ObjectId::random();
        let m = Mutation::MakeDir {
            parent: root(),
            name: name("d"),
            object,
            mode: 0o755,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        };
        apply1(&store, m).unwrap();
        object
    };
    let bigger = upload(&store, &noise(1, 200_000)).unwrap();

    disk.store(LIMITS.low_water - 1, Ordering::Relaxed);
    let now = Timestamp::now();
    let growing = [
        create_m("new"),
        Mutation::MakeDir {
            parent: root(),
            name: name("d2"),
            object: ObjectId::random(),
            mode: 0o755,
            owner: 0,
            group: 0,
            mtime: now,
        },
        Mutation::Symlink {
            parent: root(),
            name: name("l"),
            object: ObjectId::random(),
            target: "f".into(),
            owner: 0,
            group: 0,
            mtime: now,
        },
        Mutation::MakeMountPoint {
            parent: root(),
            name: name("m"),
            object: ObjectId::random(),
            target: "#other".into(),
            owner: 0,
            mtime: now,
        },
        Mutation::Link { parent: root(), name: name("f2"), target: f.fid.object },
        store_m(&f, bigger),
    ];
    for m in growing {
        assert_eq!(apply1(&store, m.clone()), Err(RemoteError::NoSpace), "{}", m.verb());
    }
    assert_eq!(upload(&store, b"x").unwrap_err(), RemoteError::NoSpace);
    let info = store.volume(VOL).unwrap();
    assert_eq!((info.files, info.directories), (2, 2), "nothing was created");

    // What frees space or costs next to nothing still commits.
    let set = SetAttrs { mode: Some(0o600), ..Default::default() };
    let f = after(
        &apply1(&store, Mutation::SetAttr { fid: f.fid, base: Base::Version(f.version.clone()), set }).unwrap(),
        f.fid,
    );
    let rename = Mutation::Rename {
        from: root(),
        from_name: name("g"),
        object: g.fid.object,
        to: root(),
        to_name: name("h"),
        replaced: None,
    };
    let g = after(&apply1(&store, rename).unwrap(), g.fid);
    let truncated = after(&apply1(&store, store_m(&f, Vec::new())).unwrap(), f.fid);
    assert_eq!(truncated.size, 0, "a truncation frees space");
    apply1(&store, remove_m(&g, "h")).unwrap();
    apply1(&store, Mutation::RemoveDir { parent: root(), name: name("d"), object: dir }).unwrap();
    let info = store.volume(VOL).unwrap();
    assert_eq!((info.files, info.directories, info.used), (1, 1, 0));
}

#[test]
fn in_one_batch_a_refused_store_does_not_stop_the_removal_behind_it() {
    let (_d, disk, store) = with_free(100 * MIB);
    let a = created(&store, "a");
    let b = created(&store, "b");
    let chunks = upload(&store, &noise(2, 100_000)).unwrap();
    disk.store(0, Ordering::Relaxed);
    let batch = [rec(store_m(&a, chunks)), rec(remove_m(&b, "b"))];
    let out = store.apply(&ADMIN, CLIENT, Some(VOL), &batch).unwrap();
    assert_eq!(out.results[0], Err(RemoteError::NoSpace));
    assert!(out.results[1].is_ok(), "{:?}", out.results[1]);
    assert_eq!(store.volume(VOL).unwrap().files, 1);
}

#[test]
fn removals_on_a_full_disk_give_their_space_to_the_next_store() {
    let (dir, store) = on_disk_of(40 * MIB);
    assert!(store.space().reserve_held());
    let file = 4 * MIB as usize;
    let mut files = Vec::new();
    let refused = loop {
        let n = format!("f{}", files.len());
        let f = created(&store, &n);
        match upload(&store, &noise(files.len() as u64 + 10, file)) {
            Ok(chunks) => {
                let f = after(&apply1(&store, store_m(&f, chunks)).unwrap(), f.fid);
                files.push((n, f));
            }
            Err(e) => break e,
        }
        assert!(files.len() < 20, "the disk never filled");
    };
    assert_eq!(refused, RemoteError::NoSpace);
    assert!(files.len() >= 4, "{} files before the disk was full", files.len());
    assert!(usage(dir.path()) <= 40 * MIB - LIMITS.low_water, "the low-water mark held");
    assert!(store.space().reserve_held(), "never truly full: the reserve stayed");

    for (n, f) in files.drain(..2) {
        apply1(&store, remove_m(&f, &n)).unwrap();
    }
    // The removed files' chunks are swept at once (no grace period under pressure).
    let chunks = upload(&store, &noise(99, file)).expect("room again after the removals");
    let f = created(&store, "again");
    apply1(&store, store_m(&f, chunks)).unwrap();
}

#[test]
fn a_full_database_is_no_space_and_gives_up_the_reserve_until_space_returns() {
    let (_d, disk, store) = with_free(100 * MIB);
    assert!(store.space().reserve_held());
    // Just enough room to let growth through, not enough to allocate the reserve again once it
    // is released; and SQLite itself full (as when another process fills the disk past the
    // guard's measurement).
    disk.store(LIMITS.low_water + LIMITS.reserve, Ordering::Relaxed);
    let pages: i64 = store.lock_writer().query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let _: i64 = store.lock_writer().query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0)).unwrap();
    let batch: Vec<Record> = (0..500).map(|i| rec(create_m(&format!("n{i}")))).collect();
    let err = store.apply(&ADMIN, CLIENT, Some(VOL), &batch).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(err.to_remote(), RemoteError::NoSpace, "never Internal");
    assert!(!store.space().reserve_held(), "released for the retry");
    assert!(!store.space().reserve_path().exists());

    let _: i64 = store.lock_writer().query_row("PRAGMA max_page_count = 1000000", [], |r| r.get(0)).unwrap();
    disk.store(100 * MIB, Ordering::Relaxed);
    let out = store.apply(&ADMIN, CLIENT, Some(VOL), &batch).unwrap();
    assert!(out.results.iter().all(|r| r.is_ok()));
    assert!(store.space().reserve_held(), "allocated again: there is room");
    assert!(store.space().reserve_path().exists());
}
