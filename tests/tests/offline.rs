//! End-to-end tests of disconnected operation: a real vice, real venus mounts, disconnection by
//! `venus disconnect`, by stopping vice, and by dropping packets in a UDP proxy.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use e2e::*;

type R = anyhow::Result<()>;

/// Options for mounts in these tests: notice a dead server quickly.
const QUICK: &[&str] = &["--timeout", "4"];

fn list(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> =
        fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<anyhow::Result<_>>()?;
    v.sort();
    Ok(v)
}

/// A cell whose client `a` reaches its server only through a proxy that can cut the network.
/// Fields drop in order: the mount before the proxy and the server.
struct BehindProxy {
    a: VenusMount,
    _cell_dir: tempfile::TempDir,
    proxy: UdpProxy,
    vice: Vice,
}

fn behind_proxy(cell: &str) -> anyhow::Result<BehindProxy> {
    let vice = Vice::start(cell)?;
    let proxy = UdpProxy::start(&vice.addr)?;
    let cell_dir = tempfile::tempdir()?;
    let cell_file = proxy.cell_file(&vice, cell_dir.path())?;
    let a = VenusMount::start_with_cell_file(&cell_file, cell, QUICK)?;
    Ok(BehindProxy { a, _cell_dir: cell_dir, proxy, vice })
}

/// The same offline work, whatever cut the connection; checked from the other client.
fn offline_work(a: &VenusMount) -> R {
    fs::write(a.path("new.txt"), b"made offline")?;
    let mut edit = fs::read(a.path("edit.txt"))?;
    edit.extend_from_slice(b" + offline");
    fs::write(a.path("edit.txt"), &edit)?;
    fs::rename(a.path("keep.txt"), a.path("dir/moved.txt"))?;
    fs::remove_file(a.path("gone.txt"))?;
    fs::create_dir(a.path("newdir"))?;
    fs::write(a.path("newdir/inner"), b"inner")?;
    assert_eq!(fs::read(a.path("dir/moved.txt"))?, b"keep");
    Ok(())
}

fn prepare(a: &VenusMount, b: &VenusMount) -> R {
    fs::write(a.path("keep.txt"), b"keep")?;
    fs::write(a.path("edit.txt"), b"edit")?;
    fs::write(a.path("gone.txt"), b"gone")?;
    fs::create_dir(a.path("dir"))?;
    // Warm both caches.
    for m in [a, b] {
        for f in ["keep.txt", "edit.txt", "gone.txt"] {
            fs::read(m.path(f))?;
        }
        list(&m.path("dir"))?;
    }
    Ok(())
}

fn check_seen_by(b: &VenusMount) -> R {
    // If the other client also found the server gone, it works from its cache until its probe
    // sees the server again.
    b.wait_connected()?;
    assert_eq!(list(&b.path(""))?, vec!["dir", "edit.txt", "new.txt", "newdir"]);
    assert_eq!(fs::read(b.path("new.txt"))?, b"made offline");
    assert_eq!(fs::read(b.path("edit.txt"))?, b"edit + offline");
    assert_eq!(fs::read(b.path("dir/moved.txt"))?, b"keep");
    assert_eq!(fs::read(b.path("newdir/inner"))?, b"inner");
    Ok(())
}

#[test]
fn venus_disconnect_then_reconnect_reintegrates_exactly_the_changes() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("off.test")?;
    let a = VenusMount::start_with(&vice, "off.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "off.test", QUICK)?;
    prepare(&a, &b)?;
    a.venus_ok(&["disconnect"]);
    offline_work(&a)?;
    let st = a.status();
    assert_eq!(st["volumes"][0]["state"], "disconnected", "{st}");
    assert!(st["pending_records"].as_u64() >= Some(6), "{st}");
    // The other client does not see offline changes yet.
    assert!(b.path("gone.txt").exists());
    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);
    assert_eq!(a.pending(), 0);
    check_seen_by(&b)?;
    assert_eq!(a.status()["conflicts"], 0);
    Ok(())
}

#[test]
fn the_log_is_optimised_one_store_per_file_and_nothing_for_create_then_delete() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("cml.test")?;
    let a = VenusMount::start_with(&vice, "cml.test", QUICK)?;
    fs::write(a.path("hot"), b"0")?;
    fs::read(a.path("hot"))?;
    a.venus_ok(&["disconnect"]);
    for i in 0..100 {
        fs::write(a.path("hot"), format!("version {i}"))?;
    }
    assert_eq!(a.pending(), 1, "100 offline writes of one file are one store record");
    fs::write(a.path("ephemeral"), b"here and gone")?;
    fs::remove_file(a.path("ephemeral"))?;
    fs::create_dir(a.path("tmpdir"))?;
    fs::write(a.path("tmpdir/x"), b"x")?;
    fs::remove_file(a.path("tmpdir/x"))?;
    fs::remove_dir(a.path("tmpdir"))?;
    assert_eq!(a.pending(), 1, "what was created and deleted offline leaves no records");
    let out = a.venus(&["sync", "--timeout", "5"]);
    assert!(!out.status.success(), "sync while disconnected must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("disconnected"), "{}", String::from_utf8_lossy(&out.stderr));
    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);
    let b = VenusMount::start(&vice, "cml.test")?;
    assert_eq!(fs::read(b.path("hot"))?, b"version 99");
    assert_eq!(list(&b.path(""))?, vec!["hot"]);
    Ok(())
}

#[test]
fn stopping_vice_disconnects_and_restarting_it_reintegrates_by_itself() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start("stop.test")?;
    let a = VenusMount::start_with(&vice, "stop.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "stop.test", QUICK)?;
    prepare(&a, &b)?;
    vice.kill9();
    offline_work(&a)?;
    assert_eq!(a.status()["volumes"][0]["state"], "disconnected");
    // A file never cached is a clear error, and counted.
    let err = fs::read(a.path("dir/never-seen")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "a name not in a cached listing does not exist: {err}");
    vice.restart()?;
    a.wait_reintegrated()?;
    check_seen_by(&b)?;
    Ok(())
}

#[test]
fn a_network_cut_by_a_proxy_then_mended_reintegrates_by_itself() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let BehindProxy { a, proxy, vice, .. } = &behind_proxy("cut.test")?;
    let b = VenusMount::start_with(vice, "cut.test", QUICK)?;
    prepare(a, &b)?;
    proxy.cut(true);
    offline_work(a)?;
    assert_eq!(a.status()["volumes"][0]["state"], "disconnected");
    // What waits for the server says so, on the file and in the status.
    assert_eq!(xattr(&a.path("edit.txt"), "user.afs.state").as_deref(), Some("pending"));
    let status = a.venus_ok(&["status"]);
    assert!(status.contains("disconnected (its servers do not answer)"), "{status}");
    proxy.cut(false);
    a.wait_reintegrated()?;
    check_seen_by(&b)?;
    Ok(())
}

#[test]
fn a_network_cut_in_the_middle_of_a_large_store_logs_it_whole_and_reintegrates_it() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let BehindProxy { a, proxy, vice, .. } = &behind_proxy("bigcut.test")?;
    let b = VenusMount::start_with(vice, "bigcut.test", QUICK)?;
    // 256 MiB: about 1,000 chunks, so the upload is several batches long.
    let mut h = blake3::Hasher::new();
    let mut noise = Noise::new(5);
    let mut block = vec![0u8; 1 << 20];
    let mut f = fs::File::create(a.path("big"))?;
    for _ in 0..256 {
        noise.fill(&mut block);
        h.update(&block);
        std::io::Write::write_all(&mut f, &block)?;
    }
    let expected = h.finalize();
    // The network goes away once the first chunks are on the server; the close still succeeds,
    // from the log. (Watched on the server's disk: asking venus would fork a process, and a
    // forked child's close of the inherited descriptor stores the file by itself.)
    let chunks = vice.data().join("store/chunks");
    let stored = || -> usize {
        let Ok(dirs) = fs::read_dir(&chunks) else { return 0 };
        dirs.flatten()
            .filter(|d| d.file_name() != "tmp")
            .map(|d| fs::read_dir(d.path()).map(|f| f.count()).unwrap_or(0))
            .sum()
    };
    assert_eq!(stored(), 0);
    std::thread::scope(|s| -> R {
        let cutter = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while stored() == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            proxy.cut(true);
        });
        drop(f);
        cutter.join().map_err(|_| anyhow::anyhow!("the cutting thread panicked"))?;
        Ok(())
    })?;
    let at_cut = stored();
    assert!(a.pending() >= 1, "the store is in the log");
    assert_eq!(hash_file(&a.path("big"))?, expected, "the writer reads its own data offline");
    proxy.cut(false);
    a.wait_reintegrated()?;
    b.wait_connected()?;
    assert_eq!(fs::metadata(b.path("big"))?.len(), 256 << 20);
    assert_eq!(hash_file(&b.path("big"))?, expected, "the whole file arrived, none of it torn");
    assert!(at_cut < stored(), "the cut came in the middle of the upload ({at_cut} of {} chunks)", stored());
    Ok(())
}

#[test]
fn venus_starts_offline_from_a_warm_cache_and_reintegrates_when_vice_appears() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start("cold.test")?;
    let mut a = VenusMount::start_with(&vice, "cold.test", QUICK)?;
    fs::write(a.path("laptop.txt"), b"cached before the train")?;
    fs::create_dir(a.path("notes"))?;
    fs::read(a.path("laptop.txt"))?;
    a.stop()?;
    vice.stop()?;
    // The laptop reboots on a train: no server at all.
    a.restart_stopped()?;
    assert_eq!(fs::read(a.path("laptop.txt"))?, b"cached before the train");
    fs::write(a.path("notes/train.txt"), b"written on the train")?;
    assert!(a.pending() >= 2);
    vice.restart()?;
    a.wait_reintegrated()?;
    let b = VenusMount::start(&vice, "cold.test")?;
    assert_eq!(fs::read(b.path("notes/train.txt"))?, b"written on the train");
    Ok(())
}

#[test]
fn sigkill_of_venus_while_disconnected_loses_nothing_that_was_closed() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start("crash.test")?;
    let mut a = VenusMount::start_with(&vice, "crash.test", QUICK)?;
    fs::write(a.path("base.txt"), b"base")?;
    fs::read(a.path("base.txt"))?;
    vice.kill9();
    for i in 0..20 {
        fs::write(a.path(&format!("closed-{i}")), format!("closed before the crash {i}"))?;
    }
    fs::write(a.path("base.txt"), b"changed before the crash")?;
    let before = a.pending();
    a.kill9();
    // Restart, still offline: the log and the data are intact.
    a.restart_stopped()?;
    assert_eq!(a.pending(), before);
    assert_eq!(fs::read(a.path("closed-7"))?, b"closed before the crash 7");
    assert_eq!(fs::read(a.path("base.txt"))?, b"changed before the crash");
    vice.restart()?;
    a.wait_reintegrated()?;
    let b = VenusMount::start(&vice, "crash.test")?;
    for i in 0..20 {
        assert_eq!(fs::read(b.path(&format!("closed-{i}")))?, format!("closed before the crash {i}").as_bytes());
    }
    assert_eq!(fs::read(b.path("base.txt"))?, b"changed before the crash");
    Ok(())
}

#[test]
fn a_cut_in_the_middle_of_reintegrating_2000_records_applies_each_change_once() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let BehindProxy { a, proxy, vice, .. } = &behind_proxy("replay.test")?;
    fs::create_dir(a.path("many"))?;
    a.venus_ok(&["disconnect"]);
    for i in 0..1000 {
        fs::write(a.path(&format!("many/f{i:04}")), format!("file {i}"))?;
    }
    assert_eq!(a.pending(), 2000, "a create and a store per file");
    // The network dies half-way into the reintegration (the whole replay takes ~200 client
    // packets: ten batches, each one upload of its files' chunks and one Reintegrate).
    proxy.cut_after(100);
    a.venus_ok(&["reconnect"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while a.status()["volumes"][0]["state"] != "disconnected" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pending_at_cut = a.pending();
    let done_at_cut = a.counter("records_reintegrated");
    assert!(
        pending_at_cut > 0 && done_at_cut > 0,
        "the cut must fall inside the replay: {done_at_cut} done, {pending_at_cut} pending"
    );
    proxy.cut(false);
    a.wait_reintegrated()?;
    let b = VenusMount::start(vice, "replay.test")?;
    let names = list(&b.path("many"))?;
    assert_eq!(names.len(), 1000, "each file exactly once (no duplicates, no conflict copies)");
    for i in [0, 1, 499, 998, 999] {
        assert_eq!(fs::read(b.path(&format!("many/f{i:04}")))?, format!("file {i}").as_bytes());
    }
    assert_eq!(a.status()["conflicts"], 0);
    Ok(())
}

#[test]
fn a_server_restored_from_an_older_backup_never_overwrites_newer_local_changes() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start("rewind.test")?;
    let a = VenusMount::start_with(&vice, "rewind.test", QUICK)?;
    fs::write(a.path("doc"), b"old, as in the backup")?;
    // On the server before the backup is taken (under a write-back permit a close returns once
    // the store is logged).
    a.venus_ok(&["sync"]);
    // The admin takes a backup of the server's data.
    vice.stop()?;
    let backup = vice.dir.path().join("backup");
    let status = std::process::Command::new("cp").arg("-a").arg(vice.data()).arg(&backup).status()?;
    assert!(status.success());
    vice.restart()?;
    fs::write(a.path("doc"), b"newer, stored after the backup")?;
    // Make sure it reached the server: the restore below really goes back in time.
    a.venus_ok(&["sync"]);
    fs::read(a.path("doc"))?;
    a.venus_ok(&["disconnect"]);
    fs::write(a.path("doc"), b"newest, written offline")?;
    // The server's disk is lost and restored from the older backup.
    vice.stop()?;
    fs::remove_dir_all(vice.data())?;
    let status = std::process::Command::new("cp").arg("-a").arg(&backup).arg(vice.data()).status()?;
    assert!(status.success());
    vice.restart()?;
    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);
    // The restored server keeps its version at the name; the offline change is kept beside it.
    let b = VenusMount::start(&vice, "rewind.test")?;
    assert_eq!(fs::read(b.path("doc"))?, b"old, as in the backup");
    let copies: Vec<String> = list(&b.path(""))?.into_iter().filter(|n| n.starts_with("doc.conflict-")).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(fs::read(b.path(&copies[0]))?, b"newest, written offline");
    let listed: serde_json::Value = serde_json::from_str(&a.venus_ok(&["conflicts", "--json"]))?;
    assert_eq!(listed[0]["kind"], "volume rewound", "{listed}");
    Ok(())
}

#[test]
fn reintegrating_many_small_files_sends_their_data_in_one_request_per_batch() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("upload.test")?;
    let a = VenusMount::start_with(&vice, "upload.test", QUICK)?;
    fs::create_dir(a.path("many"))?;
    a.venus_ok(&["disconnect"]);
    let contents = |i: u64| Noise::bytes(i, 100 + i as usize * 10);
    for i in 0..300 {
        fs::write(a.path(&format!("many/f{i:03}")), contents(i))?;
    }
    assert_eq!(a.pending(), 600);
    let uploads = || a.rpcs("PutChunks") + a.rpcs("PutChunksAndMutate");
    let before = uploads();
    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);
    let (batches, sent) = (a.rpcs("Reintegrate"), uploads() - before);
    assert_eq!(batches, 3, "600 records in batches of 200");
    assert_eq!(sent, batches, "one upload per batch (it was one per file: 300)");
    let b = VenusMount::start(&vice, "upload.test")?;
    for i in [0, 1, 150, 299] {
        assert_eq!(fs::read(b.path(&format!("many/f{i:03}")))?, contents(i));
    }
    Ok(())
}

/// A file made offline and still open when its creation is reintegrated: its container is
/// based on the version the server gave it, so the next store goes through instead of being
/// refused as a conflict with itself (what the server-restart storm saw, where the timing is
/// not chosen).
#[test]
fn a_file_made_offline_and_still_open_after_reintegration_stores_without_a_conflict() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("held.test")?;
    let a = VenusMount::start_with(&vice, "held.test", QUICK)?;
    fs::write(a.path("seen"), b"the directory is cached")?;
    a.venus_ok(&["disconnect"]);
    let mut f = fs::File::create(a.path("held"))?;
    f.write_all(b"offline")?;
    f.sync_all()?;
    a.venus_ok(&["reconnect"]);
    a.wait_reintegrated()?;
    f.write_all(b", then online")?;
    f.sync_all()?;
    drop(f);
    assert_eq!(a.status()["conflicts"], 0);
    let b = VenusMount::start(&vice, "held.test")?;
    assert_eq!(fs::read(b.path("held"))?, b"offline, then online");
    Ok(())
}
