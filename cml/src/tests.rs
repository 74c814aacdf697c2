//! Unit tests: each optimisation rule by record counts, persistence, and corrupt data.

use proto::{Base, ChunkHash, ChunkRef, Fid, Mutation, Name, ObjectId, OpId, Record, Seen, SetAttrs, Timestamp};
use proto::{ServerId, VersionVector, VolumeId};

use crate::{Cml, CmlError};

const CELL: &str = "example.org";
const V: VolumeId = VolumeId(7);
/// Pre-existing objects (the server had them before the log began).
const P: ObjectId = ObjectId(0x1_0001);
const Q: ObjectId = ObjectId(0x1_0002);
const OLD: ObjectId = ObjectId(0x1_0003);
/// Objects created offline.
const X: ObjectId = ObjectId(0x2_0001);
const Y: ObjectId = ObjectId(0x2_0002);

fn open() -> (tempfile::TempDir, Cml) {
    let dir = tempfile::tempdir().unwrap();
    let cml = Cml::open(&dir.path().join("cml.db")).unwrap();
    (dir, cml)
}

fn fid(o: ObjectId) -> Fid {
    Fid::new(V, o)
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn v0() -> Base {
    Base::Version(VersionVector::first(ServerId(1)))
}

/// Builds records with fresh op ids, the way a client does.
struct Ops(u128);

impl Ops {
    fn rec(&mut self, mutation: Mutation) -> Record {
        self.0 += 1;
        Record { op: OpId(self.0), mutation }
    }

    fn create(&mut self, parent: ObjectId, n: &str, object: ObjectId) -> Record {
        self.rec(Mutation::Create {
            parent: fid(parent),
            name: name(n),
            object,
            mode: 0o644,
            owner: 1,
            group: 1,
            mtime: Timestamp::default(),
        })
    }

    fn mkdir(&mut self, parent: ObjectId, n: &str, object: ObjectId) -> Record {
        self.rec(Mutation::MakeDir {
            parent: fid(parent),
            name: name(n),
            object,
            mode: 0o755,
            owner: 1,
            group: 1,
            mtime: Timestamp::default(),
        })
    }

    fn store(&mut self, file: ObjectId, base: Base, byte: u8) -> Record {
        let chunks = vec![ChunkRef { hash: ChunkHash([byte; 32]), len: 100 + u32::from(byte) }];
        self.rec(Mutation::Store { fid: fid(file), base, chunks, mtime: Timestamp { secs: i64::from(byte), nanos: 0 } })
    }

    fn setattr(&mut self, o: ObjectId, base: Base, set: SetAttrs) -> Record {
        self.rec(Mutation::SetAttr { fid: fid(o), base, set })
    }

    fn remove(&mut self, parent: ObjectId, n: &str, object: ObjectId, base: Base) -> Record {
        self.rec(Mutation::Remove { parent: fid(parent), name: name(n), seen: Seen { object, base } })
    }

    fn rmdir(&mut self, parent: ObjectId, n: &str, object: ObjectId) -> Record {
        self.rec(Mutation::RemoveDir { parent: fid(parent), name: name(n), object })
    }

    fn rename(
        &mut self,
        from: (ObjectId, &str),
        object: ObjectId,
        to: (ObjectId, &str),
        replaced: Option<Seen>,
    ) -> Record {
        self.rec(Mutation::Rename {
            from: fid(from.0),
            from_name: name(from.1),
            object,
            to: fid(to.0),
            to_name: name(to.1),
            replaced,
        })
    }

    fn link(&mut self, parent: ObjectId, n: &str, target: ObjectId) -> Record {
        self.rec(Mutation::Link { parent: fid(parent), name: name(n), target })
    }
}

fn after(r: &Record) -> Base {
    Base::AfterOp(r.op)
}

fn records(cml: &Cml) -> Vec<Record> {
    cml.pending(CELL, V).unwrap().into_iter().map(|e| e.record).collect()
}

fn append(cml: &Cml, r: &Record) -> Option<u64> {
    cml.append(CELL, r.clone()).unwrap()
}

#[test]
fn writing_a_new_file_100_times_leaves_create_and_one_store() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let create = ops.create(P, "a", X);
    append(&cml, &create);
    let mut base = after(&create);
    let mut last = None;
    for i in 0..100u8 {
        let store = ops.store(X, base, i);
        base = after(&store);
        assert!(append(&cml, &store).is_some());
        last = Some(store);
    }
    let log = records(&cml);
    assert_eq!(log.len(), 2);
    assert_eq!(log[0], create);
    let Some(Record { op, mutation: Mutation::Store { base, chunks, .. } }) = log.get(1).cloned() else {
        panic!("second record is not a store: {log:?}")
    };
    let Some(Record { op: last_op, mutation: Mutation::Store { chunks: last_chunks, .. } }) = last else { panic!() };
    assert_eq!(op, last_op);
    assert_eq!(chunks, last_chunks);
    assert_eq!(base, after(&create), "the surviving store is based on the create");
    assert_eq!(cml.base_of(CELL, fid(X)).unwrap(), Some(Base::AfterOp(op)));
}

#[test]
fn stores_of_a_pre_existing_file_keep_the_version_it_was_seen_at() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let s1 = ops.store(OLD, v0(), 1);
    let s2 = ops.store(OLD, after(&s1), 2);
    let s3 = ops.store(OLD, after(&s2), 3);
    for s in [&s1, &s2, &s3] {
        append(&cml, s);
    }
    let log = records(&cml);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].op, s3.op);
    assert!(matches!(&log[0].mutation, Mutation::Store { base, .. } if *base == v0()));
}

#[test]
fn a_setattr_between_stores_is_rebased() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let s1 = ops.store(OLD, v0(), 1);
    let a = ops.setattr(OLD, after(&s1), SetAttrs { mode: Some(0o600), ..Default::default() });
    let s2 = ops.store(OLD, after(&a), 2);
    for r in [&s1, &a, &s2] {
        append(&cml, r);
    }
    let log = records(&cml);
    assert_eq!(log.len(), 2);
    assert!(matches!(&log[0].mutation, Mutation::SetAttr { base, .. } if *base == v0()));
    assert!(matches!(&log[1].mutation, Mutation::Store { base, .. } if *base == after(&a)));
}

#[test]
fn create_store_remove_cancels() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "a", X);
    let s = ops.store(X, after(&c), 1);
    let r = ops.remove(P, "a", X, after(&s));
    append(&cml, &c);
    append(&cml, &s);
    assert_eq!(append(&cml, &r), None);
    assert!(records(&cml).is_empty());
    assert_eq!(cml.total_records().unwrap(), 0);
    assert_eq!(cml.base_of(CELL, fid(P)).unwrap(), None);
}

#[test]
fn mkdir_create_child_remove_child_rmdir_cancels() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let m = ops.mkdir(P, "d", X);
    let c = ops.create(X, "f", Y);
    let s = ops.store(Y, after(&c), 1);
    let r = ops.remove(X, "f", Y, after(&s));
    let rd = ops.rmdir(P, "d", X);
    for rec in [&m, &c, &s] {
        append(&cml, rec);
    }
    assert_eq!(append(&cml, &r), None);
    assert_eq!(records(&cml), vec![m.clone()]);
    assert_eq!(append(&cml, &rd), None);
    assert!(records(&cml).is_empty());
}

#[test]
fn a_directory_still_holding_a_moved_out_child_is_not_cancelled() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let m = ops.mkdir(P, "d", X);
    let c = ops.create(X, "f", Y);
    // Moved out over an existing name, so it cannot fold into the create.
    let mv = ops.rename((X, "f"), Y, (P, "old"), Some(Seen { object: OLD, base: v0() }));
    let rd = ops.rmdir(P, "d", X);
    for rec in [&m, &c, &mv, &rd] {
        append(&cml, rec);
    }
    assert_eq!(records(&cml).len(), 4);
}

#[test]
fn setattrs_merge() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let a1 = ops.setattr(OLD, v0(), SetAttrs { mode: Some(0o600), owner: Some(5), ..Default::default() });
    let a2 = ops.setattr(OLD, after(&a1), SetAttrs { mode: Some(0o640), ..Default::default() });
    let a3 = ops.setattr(OLD, after(&a2), SetAttrs { group: Some(9), ..Default::default() });
    let first = append(&cml, &a1);
    assert_eq!(append(&cml, &a2), first, "merged into the earlier record");
    assert_eq!(append(&cml, &a3), first);
    let log = records(&cml);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].op, a3.op, "the merged record carries the latest op");
    let Mutation::SetAttr { base, set, .. } = &log[0].mutation else { panic!("{log:?}") };
    assert_eq!(*base, v0());
    assert_eq!(*set, SetAttrs { mode: Some(0o640), owner: Some(5), group: Some(9), mtime: None });
}

#[test]
fn setattrs_do_not_merge_across_a_store_or_an_entry_change() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let a1 = ops.setattr(OLD, v0(), SetAttrs { mtime: Some(Timestamp { secs: 1, nanos: 0 }), ..Default::default() });
    let s = ops.store(OLD, after(&a1), 1);
    let a2 =
        ops.setattr(OLD, after(&s), SetAttrs { mtime: Some(Timestamp { secs: 2, nanos: 0 }), ..Default::default() });
    for r in [&a1, &s, &a2] {
        append(&cml, r);
    }
    assert_eq!(records(&cml).len(), 3);

    // A directory's mtime is set by every entry change: a later SetAttr must stay later.
    let d1 = ops.setattr(P, v0(), SetAttrs { mode: Some(0o700), ..Default::default() });
    let c = ops.create(P, "a", X);
    let d2 = ops.setattr(P, after(&c), SetAttrs { mtime: Some(Timestamp { secs: 3, nanos: 0 }), ..Default::default() });
    for r in [&d1, &c, &d2] {
        append(&cml, r);
    }
    assert_eq!(records(&cml).len(), 6);
}

#[test]
fn removing_a_pre_existing_file_drops_its_changes() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let s = ops.store(OLD, v0(), 1);
    let a = ops.setattr(OLD, after(&s), SetAttrs { mode: Some(0o600), ..Default::default() });
    let r = ops.remove(P, "old", OLD, after(&a));
    append(&cml, &s);
    append(&cml, &a);
    assert!(cml.append_removing_last_name(CELL, r.clone()).unwrap().is_some());
    let log = records(&cml);
    assert_eq!(log.len(), 1);
    assert!(matches!(&log[0].mutation, Mutation::Remove { seen, .. } if seen.base == v0()));
}

#[test]
fn removing_a_name_of_a_file_older_than_the_log_keeps_its_changes() {
    // The file may have other names the log never saw: what was stored must still reach them.
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let s = ops.store(OLD, v0(), 1);
    let r = ops.remove(P, "old", OLD, after(&s));
    append(&cml, &s);
    append(&cml, &r);
    assert_eq!(records(&cml), vec![s, r]);
}

#[test]
fn removing_a_directory_drops_its_setattrs() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let a = ops.setattr(Q, v0(), SetAttrs { mode: Some(0o700), ..Default::default() });
    let r = ops.rmdir(P, "q", Q);
    append(&cml, &a);
    append(&cml, &r);
    assert_eq!(records(&cml), vec![r]);
}

#[test]
fn renames_of_an_offline_created_file_fold_into_its_creation() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "tmp", X);
    let s = ops.store(X, after(&c), 1);
    let r1 = ops.rename((P, "tmp"), X, (P, "b"), None);
    let r2 = ops.rename((P, "b"), X, (Q, "c"), None);
    let created = append(&cml, &c);
    append(&cml, &s);
    assert_eq!(append(&cml, &r1), created);
    assert_eq!(append(&cml, &r2), created);
    let log = records(&cml);
    assert_eq!(log.len(), 2);
    let Mutation::Create { parent, name: n, .. } = &log[0].mutation else { panic!("{log:?}") };
    assert_eq!((*parent, n.as_str()), (fid(Q), "c"));
    assert_eq!(log[1], s);
}

#[test]
fn a_rename_over_an_existing_name_stays() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "tmp", X);
    let s = ops.store(X, after(&c), 1);
    let r = ops.rename((P, "tmp"), X, (P, "old"), Some(Seen { object: OLD, base: v0() }));
    for rec in [&c, &s, &r] {
        append(&cml, rec);
    }
    assert_eq!(records(&cml).len(), 3);
    // Removing the file now leaves only the removal of what it replaced.
    let rm = ops.remove(P, "old", X, after(&s));
    assert_eq!(append(&cml, &rm), None);
    let log = records(&cml);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].op, r.op);
    assert!(matches!(&log[0].mutation, Mutation::Remove { parent, seen, .. }
        if *parent == fid(P) && seen.object == OLD && seen.base == v0()));
}

#[test]
fn a_rename_does_not_fold_past_a_use_of_its_target_name() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "tmp", X);
    let rm = ops.remove(P, "old", OLD, v0());
    let r = ops.rename((P, "tmp"), X, (P, "old"), None);
    for rec in [&c, &rm, &r] {
        append(&cml, rec);
    }
    assert_eq!(records(&cml).len(), 3);
}

#[test]
fn a_linked_offline_file_is_not_cancelled() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "a", X);
    let s = ops.store(X, after(&c), 1);
    let l = ops.link(P, "b", X);
    let r = ops.remove(P, "a", X, after(&s));
    for rec in [&c, &s, &l, &r] {
        append(&cml, rec);
    }
    assert_eq!(records(&cml).len(), 4);
}

#[test]
fn frozen_records_are_never_optimised() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "a", X);
    let s1 = ops.store(X, after(&c), 1);
    append(&cml, &c);
    append(&cml, &s1);
    assert_eq!(cml.first(CELL, V, 10).unwrap().len(), 2);
    let s2 = ops.store(X, after(&s1), 2);
    append(&cml, &s2);
    assert_eq!(records(&cml).len(), 3, "the frozen store stays");
    let a1 = ops.setattr(X, after(&s2), SetAttrs { mode: Some(0o600), ..Default::default() });
    append(&cml, &a1);
    cml.first(CELL, V, 10).unwrap();
    let a2 = ops.setattr(X, after(&a1), SetAttrs { mode: Some(0o644), ..Default::default() });
    append(&cml, &a2);
    assert_eq!(records(&cml).len(), 5, "no merge into a frozen setattr");
    let r = ops.remove(P, "a", X, after(&a2));
    assert!(append(&cml, &r).is_some(), "the create may be on the server: no cancelling");
    let log = records(&cml);
    assert_eq!(log.len(), 5, "{log:?}");
    assert!(matches!(&log[4].mutation, Mutation::Remove { seen, .. } if seen.base == after(&a1)));
}

#[test]
fn cancelling_that_would_orphan_a_directory_base_is_not_done() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    // P's version before the log is unknown to the log: its first stamp is the create.
    let c = ops.create(P, "a", X);
    let a = ops.setattr(P, after(&c), SetAttrs { mode: Some(0o700), ..Default::default() });
    let r = ops.remove(P, "a", X, after(&c));
    for rec in [&c, &a, &r] {
        append(&cml, rec);
    }
    assert_eq!(records(&cml), vec![c, a, r]);
}

#[test]
fn cancelling_rebases_a_directory_on_its_earlier_stamp() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c0 = ops.create(P, "keep", Y);
    let c = ops.create(P, "a", X);
    let a = ops.setattr(P, after(&c), SetAttrs { mode: Some(0o700), ..Default::default() });
    let r = ops.remove(P, "a", X, after(&c));
    for rec in [&c0, &c, &a] {
        append(&cml, rec);
    }
    assert_eq!(append(&cml, &r), None);
    let log = records(&cml);
    assert_eq!(log.len(), 2);
    assert!(matches!(&log[1].mutation, Mutation::SetAttr { base, .. } if *base == after(&c0)));
    assert_eq!(cml.base_of(CELL, fid(P)).unwrap(), Some(Base::AfterOp(a.op)));
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cml.db");
    let mut ops = Ops(0);
    let c = ops.create(P, "a", X);
    let s = ops.store(X, after(&c), 7);
    {
        let cml = Cml::open(&path).unwrap();
        append(&cml, &c);
        append(&cml, &s);
        cml.sync().unwrap();
    }
    let cml = Cml::open(&path).unwrap();
    assert_eq!(records(&cml), vec![c.clone(), s.clone()]);
    // Optimisation still finds the reopened records.
    let r = ops.remove(P, "a", X, after(&s));
    assert_eq!(append(&cml, &r), None);
    assert!(records(&cml).is_empty());
}

#[test]
fn summary_counts_records_and_bytes_per_volume() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    append(&cml, &ops.store(OLD, v0(), 1));
    append(&cml, &ops.create(P, "a", X));
    let other = Record {
        op: OpId(999),
        mutation: Mutation::Store {
            fid: Fid::new(VolumeId(8), OLD),
            base: v0(),
            chunks: vec![],
            mtime: Timestamp::default(),
        },
    };
    cml.append("other.org", other).unwrap();
    let summary = cml.summary().unwrap();
    assert_eq!(summary.len(), 2);
    assert_eq!((summary[0].cell.as_str(), summary[0].volume, summary[0].records, summary[0].bytes), (CELL, V, 2, 101));
    assert!(summary[0].oldest.is_some());
    assert_eq!((summary[1].records, summary[1].bytes), (1, 0));
    assert_eq!(cml.total_records().unwrap(), 3);
    assert!(cml.pending("other.org", V).unwrap().is_empty(), "cells are kept apart");
}

#[test]
fn first_remove_and_replace() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let c = ops.create(P, "a", X);
    let s = ops.store(X, after(&c), 1);
    let seq_c = append(&cml, &c).unwrap();
    let seq_s = append(&cml, &s).unwrap();
    let first = cml.first(CELL, V, 1).unwrap();
    assert_eq!((first.len(), first[0].seq), (1, seq_c));
    let refreshed = ops.store(X, after(&c), 2);
    let refreshed = Record { op: s.op, mutation: refreshed.mutation };
    cml.replace(&[(seq_s, refreshed.clone())]).unwrap();
    assert_eq!(records(&cml), vec![c.clone(), refreshed.clone()]);
    assert_eq!(cml.summary().unwrap()[0].bytes, 102);
    cml.replace(&[(12345, refreshed.clone())]).unwrap();
    cml.remove(&[seq_c, 777]).unwrap();
    assert_eq!(records(&cml), vec![refreshed]);
    assert_eq!(cml.base_of(CELL, fid(P)).unwrap(), None);
}

#[test]
fn a_corrupt_blob_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cml.db");
    let mut ops = Ops(0);
    let c = ops.create(P, "a", X);
    {
        let cml = Cml::open(&path).unwrap();
        append(&cml, &c);
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE records SET record = x'ff00ff'", []).unwrap();
    }
    let cml = Cml::open(&path).unwrap();
    assert!(matches!(cml.pending(CELL, V), Err(CmlError::Corrupt(_))));
    let s = ops.store(X, after(&c), 1);
    assert!(matches!(cml.append(CELL, s), Err(CmlError::Corrupt(_))));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cml.db");
    drop(Cml::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    assert!(matches!(Cml::open(&path), Err(CmlError::Corrupt(_))));
}

#[test]
fn a_record_with_a_stale_base_is_not_optimised() {
    // A client that names an older state than the log's expects a conflict: keep it one.
    let (_d, cml) = open();
    let mut ops = Ops(0);
    let s1 = ops.store(OLD, v0(), 1);
    let s2 = ops.store(OLD, v0(), 2);
    append(&cml, &s1);
    append(&cml, &s2);
    assert_eq!(records(&cml), vec![s1, s2]);
}

#[test]
fn the_log_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Cml>();
}

/// Set in the child process of `a_process_killed_mid_append_loses_no_append_that_returned`: the
/// log the child appends to.
const KILLED_CHILD_DB: &str = "CML_SIGKILL_DB";

/// The `n`th record the killed child appends (from 1): a create of its own name and object.
fn nth_create(n: u128) -> Record {
    Record {
        op: OpId(n),
        mutation: Mutation::Create {
            parent: fid(P),
            name: name(&format!("f{n}")),
            object: ObjectId(0x3_0000 + n),
            mode: 0o644,
            owner: 1,
            group: 1,
            mtime: Timestamp::default(),
        },
    }
}

/// The child: continues the log at `path` with one append after another, and reports each once
/// it has returned (`committed N`, flushed), until it is killed. It never ends by itself.
fn append_until_killed(path: &std::path::Path) -> ! {
    use std::io::Write;
    let cml = Cml::open(path).unwrap();
    let mut n = u128::from(cml.total_records().unwrap());
    let mut out = std::io::stdout();
    loop {
        n += 1;
        append(&cml, &nth_create(n));
        writeln!(out, "committed {n}").unwrap();
        out.flush().unwrap();
    }
}

/// An append is committed before it returns (the log's promise to venus): a process killed with
/// SIGKILL in the middle of a stream of appends keeps every append that returned, in order, at
/// most the one it was killed in beyond them, and an undamaged log that takes more. The test runs
/// itself again as the child (told so by `CML_SIGKILL_DB`), kills it with appends in flight,
/// reopens the log, and does so three times over one log.
#[test]
fn a_process_killed_mid_append_loses_no_append_that_returned() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    if let Some(path) = std::env::var_os(KILLED_CHILD_DB) {
        append_until_killed(std::path::Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cml.db");
    let mut logged = 0u128;
    for round in 0..3u128 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::a_process_killed_mid_append_loses_no_append_that_returned"])
            .args(["--nocapture", "--test-threads=1"])
            .env(KILLED_CHILD_DB, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let committed = |line: std::io::Result<String>| -> Option<u128> {
            line.unwrap().strip_prefix("committed ").map(|n| n.parse().unwrap())
        };
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill at a different point each round, while the child is appending without pause.
        let kill_after = logged + 40 + 17 * round;
        let reported = lines.by_ref().filter_map(committed).find(|&n| n >= kill_after);
        assert_eq!(reported, Some(kill_after), "the child stopped appending before it was killed");
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the child was not killed: {status}");
        // What the child had reported before it died is still in the pipe.
        let reported = lines.filter_map(committed).last().unwrap_or(kill_after);

        let (cml, salvage) = Cml::open_or_salvage(&path).unwrap();
        assert!(salvage.is_none(), "the killed log was damaged: {salvage:?}");
        let got = records(&cml);
        let n = got.len() as u128;
        assert!((reported..=reported + 1).contains(&n), "round {round}: {n} records, {reported} appends had returned");
        assert_eq!(got, (1..=n).map(nth_create).collect::<Vec<_>>(), "round {round}");
        logged = n;
    }
}

#[test]
fn a_damaged_log_is_put_aside_and_what_can_be_read_is_logged_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cml.db");
    let mut ops = Ops(0);
    {
        let cml = Cml::open(&path).unwrap();
        for i in 0..300u128 {
            cml.append(CELL, ops.create(P, &format!("f{i}"), ObjectId(0x3_0000 + i))).unwrap();
        }
    }
    // An undamaged log opens as it is.
    let (cml, salvage) = Cml::open_or_salvage(&path).unwrap();
    assert!(salvage.is_none());
    assert_eq!(cml.total_records().unwrap(), 300);
    drop(cml);
    // Garbage over everything past the first pages: the tail of the records is lost.
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 3 * 4096, "{len}");
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&vec![0x5a; (len - len / 2) as usize]).unwrap();
    }
    let (cml, salvage) = Cml::open_or_salvage(&path).unwrap();
    let salvage = salvage.expect("the damage was found");
    assert!(salvage.saved_as.exists() && salvage.saved_as != path);
    assert_eq!(cml.total_records().unwrap(), salvage.kept as u64);
    assert!(salvage.kept < 300, "{salvage:?}");
    // The records kept are the first ones, in order.
    let kept = cml.pending(CELL, V).unwrap();
    for (i, e) in kept.iter().enumerate() {
        assert_eq!(e.record.op, OpId(i as u128 + 1));
    }
    // A log from a newer venus is not damage: it is refused, never moved aside.
    drop(cml);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    assert!(matches!(Cml::open_or_salvage(&path), Err(CmlError::Corrupt(_))));
    assert!(path.exists());
}

#[test]
fn a_record_sent_whose_answer_was_lost_is_never_optimised_away() {
    let (_d, cml) = open();
    let mut ops = Ops(0);
    // A store of a file the server had, in flight when the server went away: it may be there.
    let s = ops.store(OLD, v0(), 1);
    cml.append_sent(CELL, s.clone()).unwrap();
    // Removing the file's last name would drop a pending store; not this one.
    let r = ops.remove(P, "old", OLD, Base::AfterOp(s.op));
    cml.append_removing_last_name(CELL, r.clone()).unwrap();
    let log = records(&cml);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], s);
    assert!(matches!(&log[1].mutation, Mutation::Remove { seen, .. } if seen.base == Base::AfterOp(s.op)));
}

#[test]
fn a_record_in_flight_is_no_readers_until_it_stays_and_an_answered_one_leaves_with_the_next_commit() {
    let (dir, cml) = open();
    let mut ops = Ops(0);
    let sent: Vec<u64> = (0..3)
        .map(|i| cml.append_in_flight("c", ops.create(ObjectId::ROOT, &format!("f{i}"), ObjectId(100 + i))).unwrap())
        .collect();
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
    assert!(!cml.has_pending("c", V).unwrap(), "in flight is not pending");
    cml.answered(sent[0]);
    cml.answered(sent[1]);
    // On its way, a record is its system call's: reintegration does not see it.
    assert!(cml.first("c", V, 10).unwrap().is_empty());
    assert_eq!(cml.total_records().unwrap(), 0);
    // venus dies with the third unanswered: it is pending when the log is opened again,
    // frozen (it may be on the server), and the answered ones are gone.
    drop(cml);
    let cml = Cml::open(&dir.path().join("cml.db")).unwrap();
    assert!(cml.has_pending("c", V).unwrap() && !cml.has_pending("c", VolumeId(8)).unwrap());
    let e = cml.first("c", V, 10).unwrap();
    assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![sent[2]]);
    cml.append("c", ops.remove(ObjectId::ROOT, "f2", ObjectId(102), Base::AfterOp(e[0].record.op))).unwrap();
    assert_eq!(cml.total_records().unwrap(), 2, "frozen: a later removal cannot optimise it away");
}

#[test]
fn records_kept_from_flight_keep_their_place_before_later_ones_and_leave_when_answered_late() {
    let (_dir, cml) = open();
    let mut ops = Ops(0);
    let a = ops.create(ObjectId::ROOT, "a", ObjectId(100));
    let b = ops.create(ObjectId::ROOT, "b", ObjectId(101));
    let c = ops.mkdir(ObjectId::ROOT, "c", ObjectId(102));
    let sa = cml.append_in_flight("c", a.clone()).unwrap();
    let sb = cml.append_in_flight("c", b.clone()).unwrap();
    // Logged offline (a forced disconnection) while both are on their way.
    let sc = cml.append("c", c.clone()).unwrap().unwrap();
    assert!(sa < sb && sb < sc, "{sa} {sb} {sc}");
    // One answer was lost: both in flight stay, before the offline one.
    cml.keep_in_flight().unwrap();
    let pending: Vec<Record> = cml.pending("c", V).unwrap().into_iter().map(|e| e.record).collect();
    assert_eq!(pending, vec![a, b.clone(), c.clone()]);
    // The other's answer came after all: it leaves from where it was moved.
    cml.answered(sa);
    let pending: Vec<Record> = cml.pending("c", V).unwrap().into_iter().map(|e| e.record).collect();
    assert_eq!(pending, vec![b, c]);
    // Seqs are never handed out twice, whichever table they were in.
    let sd = cml.append_in_flight("c", ops.mkdir(ObjectId::ROOT, "d", ObjectId(103))).unwrap();
    assert!(sd > sc, "{sd} {sc}");
}

#[test]
fn a_log_of_version_1_is_upgraded_and_its_records_left_in_flight_are_indexed() {
    let (dir, cml) = open();
    let mut ops = Ops(0);
    let mkdir = ops.mkdir(ObjectId::ROOT, "d", ObjectId(200));
    cml.append("c", mkdir.clone()).unwrap();
    drop(cml);
    // What a venus of version 1 left when it died with the record in flight: no `touches`
    // rows, no `in_flight` table.
    let path = dir.path().join("cml.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("DELETE FROM touches; DROP TABLE in_flight; PRAGMA user_version = 1")
        .unwrap();
    let cml = Cml::open(&path).unwrap();
    assert_eq!(cml.base_of("c", fid(ObjectId(200))).unwrap(), Some(after(&mkdir)));
    let seq = cml.append_in_flight("c", ops.mkdir(ObjectId::ROOT, "e", ObjectId(201))).unwrap();
    cml.answered(seq);
    assert_eq!(cml.total_records().unwrap(), 1);
}

#[test]
fn a_record_in_flight_that_stays_is_indexed_like_any_other() {
    let (dir, cml) = open();
    let mut ops = Ops(0);
    let create = ops.create(ObjectId::ROOT, "f", ObjectId(100));
    let store = ops.rec(Mutation::Store {
        fid: fid(ObjectId(100)),
        base: after(&create),
        chunks: vec![],
        mtime: Timestamp::default(),
    });
    cml.append_in_flight("c", create).unwrap();
    cml.append_in_flight("c", store.clone()).unwrap();
    // Its answer was lost: it stays, and later records chain on it.
    cml.keep_in_flight().unwrap();
    assert_eq!(cml.base_of("c", fid(ObjectId(100))).unwrap(), Some(after(&store)));
    // Left unindexed by a venus that died: indexed when the log is opened.
    let mkdir = ops.mkdir(ObjectId::ROOT, "d", ObjectId(200));
    cml.append_in_flight("c", mkdir.clone()).unwrap();
    assert_eq!(cml.base_of("c", fid(ObjectId(200))).unwrap(), None, "in flight, not indexed");
    drop(cml);
    let cml = Cml::open(&dir.path().join("cml.db")).unwrap();
    assert_eq!(cml.total_records().unwrap(), 3);
    assert_eq!(cml.base_of("c", fid(ObjectId(200))).unwrap(), Some(after(&mkdir)));
}
