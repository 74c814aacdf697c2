//! The fault suite: faults that once lost data, wedged a client or quietly broke a promise, each
//! reproduced with real processes (vice SIGKILLed and restarted, a lossy and slow link, many
//! clients in one directory, offline sessions followed by other clients' writes) and checked
//! by what every client sees afterwards. Every test runs under a watchdog: a wedged mount fails
//! the test with the kernel stacks of the stuck threads instead of hanging CI.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::*;

type R = anyhow::Result<()>;

/// Notice a dead server quickly.
const QUICK: &[&str] = &["--timeout", "4"];

fn state(path: &Path) -> Option<String> {
    xattr(path, "user.afs.state")
}

fn list(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> =
        fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<anyhow::Result<_>>()?;
    v.sort();
    Ok(v)
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Fault 0: files written offline stayed `dirty` after reintegration (the check that no record
/// was left for them ran before their own record left the log), kept their stale contents over
/// another client's later write, and then overwrote it (the store's base was the server's new
/// version, learned while the container was held). After any offline session, another
/// client's later write is neither hidden nor overwritten; a real double edit is a conflict.
#[test]
fn after_an_offline_session_another_clients_write_is_neither_hidden_nor_overwritten() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("after.test")?;
    let a = VenusMount::start_with(&vice, "after.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "after.test", QUICK)?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(150), &watched, move || -> R {
        for name in ["edited", "renamed", "chmodded", "linked", "both"] {
            fs::write(a.path(name), format!("{name} v1"))?;
            fs::read(b.path(name))?;
        }
        a.venus_ok(&["disconnect"]);
        // Offline work of many kinds: edits, a truncation and regrowth, a new file, a rename, a
        // chmod, a hard link.
        fs::write(a.path("edited"), b"edited offline")?;
        let f = fs::OpenOptions::new().write(true).open(a.path("edited"))?;
        f.set_len(4)?;
        f.set_len(100)?;
        drop(f);
        fs::write(a.path("edited"), b"edited offline, final")?;
        fs::write(a.path("made"), b"made offline")?;
        fs::rename(a.path("renamed"), a.path("renamed2"))?;
        let mut perms = fs::metadata(a.path("chmodded"))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        fs::set_permissions(a.path("chmodded"), perms)?;
        fs::hard_link(a.path("linked"), a.path("linked2"))?;
        fs::write(a.path("both"), b"a's offline edit")?;
        // Meanwhile b edits `both` too: a real conflict, and the only one.
        fs::write(b.path("both"), b"b's edit")?;
        a.venus_ok(&["reconnect"]);
        a.venus_ok(&["sync"]);
        assert_eq!(a.pending(), 0);
        for name in ["edited", "made", "renamed2", "chmodded", "linked", "linked2"] {
            assert_eq!(state(&a.path(name)).as_deref(), Some("cached"), "{name} after reintegration");
        }
        assert_eq!(a.status()["conflicts"], 1, "only `both` was changed on both sides");

        // Another client's later writes: seen, not hidden behind the old local copy.
        b.wait_connected()?;
        assert_eq!(fs::read(b.path("edited"))?, b"edited offline, final");
        fs::write(b.path("edited"), b"b's later write")?;
        fs::write(b.path("made"), b"b's later write of made")?;
        fs::write(b.path("renamed2"), b"b's later write of renamed2")?;
        assert_eq!(fs::read(a.path("edited"))?, b"b's later write");
        assert_eq!(fs::read(a.path("made"))?, b"b's later write of made");
        assert_eq!(fs::read(a.path("renamed2"))?, b"b's later write of renamed2");
        // This client's later edit goes on top of it, never over it.
        append(&a.path("edited"), b" + a's append")?;
        assert_eq!(fs::read(b.path("edited"))?, b"b's later write + a's append");
        assert_eq!(fs::read(b.path("linked2"))?, b"linked v1");
        assert_eq!(a.status()["conflicts"], 1);
        assert_eq!(a.venus_ok(&["flush", &a.path("edited").display().to_string()]).trim(), "flushed");
        Ok(())
    })
}

/// Fault 0's second half: a store based on a version the server no longer has must never
/// succeed silently, even connected. `a` holds a file open for writing while `b` stores a new
/// version; `a`'s close is refused and its version is kept beside `b`'s, which stays.
#[test]
fn a_write_over_a_version_that_moved_on_is_kept_beside_it_not_stored_over_it() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("moved.test")?;
    let a = VenusMount::start_with(&vice, "moved.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "moved.test", QUICK)?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(90), &watched, move || -> R {
        fs::write(a.path("f"), b"v1")?;
        let mut held = fs::OpenOptions::new().write(true).open(a.path("f"))?;
        fs::write(b.path("f"), b"b's v2")?;
        // a learns of v2 (its promise was broken) while it still has its own open: it asks
        // the server for the file's status again (what it shows is its own open copy's).
        fs::metadata(a.path("f"))?;
        held.write_all(b"a's version")?;
        let err = held.sync_all().expect_err("a store based on v1 over v2 must be refused");
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
        drop(held);
        assert_eq!(fs::read(b.path("f"))?, b"b's v2");
        let names = list(&b.path(""))?;
        let copy = names.iter().find(|n| n.starts_with("f.conflict-")).expect("a's version kept beside");
        assert_eq!(fs::read(b.path(copy))?, b"a's version");
        assert_eq!(a.status()["conflicts"], 1);
        assert_eq!(fs::read(a.path("f"))?, b"b's v2");
        Ok(())
    })
}

/// Fault 1, no server restart needed: six clients creating files in one shared directory at
/// once wedged every mount within seconds. A callback break invalidated the kernel's names on a
/// tokio worker; the kernel takes the directory's lock for that, while it holds the same lock
/// for a create waiting for that worker. Now invalidations never block venus, and breaks are
/// acked once the kernel has them.
#[test]
fn clients_creating_in_one_directory_never_wedge_each_other() -> R {
    if !fuse_available() {
        return Ok(());
    }
    const CLIENTS: usize = 6;
    const FILES: usize = 120;
    let vice = Vice::start("crowd.test")?;
    let mounts: Vec<Arc<VenusMount>> = (0..CLIENTS)
        .map(|_| VenusMount::start_with(&vice, "crowd.test", QUICK).map(Arc::new))
        .collect::<Result<_, _>>()?;
    fs::create_dir(mounts[0].path("shared"))?;
    for m in &mounts {
        list(&m.path("shared"))?;
    }
    let mut watched = vec![Watched::vice(&vice)];
    watched.extend(mounts.iter().map(|m| Watched::venus(m)));
    let ms = mounts.clone();
    with_watchdog(Duration::from_secs(240), &watched, move || -> R {
        let writers: Vec<_> = ms
            .iter()
            .enumerate()
            .map(|(c, m)| {
                let m = m.clone();
                std::thread::spawn(move || -> R {
                    for i in 0..FILES {
                        let path = m.path(&format!("shared/c{c}-{i:03}"));
                        let mut f = fs::File::create(&path)?;
                        f.write_all(format!("{c}/{i}").as_bytes())?;
                        if i % 10 == 0 {
                            f.sync_all()?;
                        }
                        drop(f);
                        // Others look around while the directory changes under them.
                        if i % 25 == 0 {
                            list(&m.path("shared"))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        for m in ms.iter() {
            let names = list(&m.path("shared"))?;
            assert_eq!(names.len(), CLIENTS * FILES, "{}", m.mountpoint.display());
            assert_eq!(fs::read(m.path("shared/c3-077"))?, b"3/77");
            assert_eq!(m.counter("late_invalidations"), 0);
            assert_eq!(m.counter("servers_unreachable"), 0);
        }
        Ok(())
    })?;
    assert!(!vice.log_text().contains("not acknowledged"), "a client missed a break:\n{}", tail(&vice.log_text(), 40));
    Ok(())
}

/// What a writer's acknowledged calls promised: the tree a fresh client must find.
#[derive(Default)]
struct Acked {
    files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Fault 1 with server restarts (suite a): vice SIGKILLed and restarted every 0.3–1.5 s under
/// a writer that creates, writes, fsyncs, renames and removes files. The mount wedged after a
/// few restarts ("callback promises lost; revalidating" invalidated names on a request's own
/// path). Now every call returns, and every acknowledged change is found by a fresh client.
#[test]
fn vice_killed_and_restarted_under_a_writer_loses_nothing_acknowledged() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start("storm.test")?;
    let a = Arc::new(VenusMount::start_with(&vice, "storm.test", QUICK)?);
    fs::create_dir(a.path("w"))?;
    let watched = [Watched::vice(&vice), Watched::venus(&a)];
    let writer_mount = a.clone();
    let log_of = a.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = stop.clone();
    let acked = with_watchdog(Duration::from_secs(240), &watched, move || -> anyhow::Result<(Acked, Vice)> {
        let writer = std::thread::spawn(move || -> anyhow::Result<Acked> {
            let m = writer_mount;
            let mut acked = Acked::default();
            let mut i = 0u32;
            while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w/f{i:04}");
                let body = format!("file {i} written at {:?}", Instant::now()).into_bytes();
                let mut f = fs::File::create(m.path(&name)).with_context(|| format!("create {name}"))?;
                f.write_all(&body).with_context(|| format!("write {name}"))?;
                f.sync_all().with_context(|| format!("fsync {name}"))?;
                drop(f);
                acked.files.insert(name.clone(), body);
                if i % 5 == 4 {
                    let to = format!("w/r{i:04}");
                    fs::rename(m.path(&name), m.path(&to)).with_context(|| format!("rename {name}"))?;
                    let body = acked.files.remove(&name).expect("just written");
                    acked.files.insert(to, body);
                }
                if i % 7 == 6 {
                    let victim = format!("w/f{:04}", i - 3);
                    if acked.files.remove(&victim).is_some() {
                        fs::remove_file(m.path(&victim)).with_context(|| format!("unlink {victim}"))?;
                    }
                }
                i += 1;
                // A steady writer, not a flood: what it did stays checkable in seconds.
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(acked)
        });
        // The storm: a dozen SIGKILLs at random moments, each followed by a restart.
        let mut rng = Noise::new(7);
        for _ in 0..12 {
            let mut pause = [0u8; 2];
            rng.fill(&mut pause);
            let pause = 300 + u64::from(u16::from_le_bytes(pause)) % 1200;
            std::thread::sleep(Duration::from_millis(pause));
            vice.kill9();
            vice.spawn_again()?;
        }
        // Let the writer see the server back for a moment, then stop it.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acked = writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))?;
        // A refused call is a race to find: what venus saw just before it says which.
        let acked = acked.map_err(|e| e.context(format!("venus's log ends:\n{}", tail(&log_of.log_text(), 60))))?;
        Ok((acked, vice))
    })?;
    let (acked, vice) = acked;
    a.venus_ok(&["sync"]);
    assert_eq!(a.status()["conflicts"], 0, "no one else wrote: nothing may conflict");
    // A fresh client sees exactly what the writer was told it had done.
    let fresh = VenusMount::start_with(&vice, "storm.test", QUICK)?;
    let mut seen = std::collections::BTreeMap::new();
    for name in list(&fresh.path("w"))? {
        let rel = format!("w/{name}");
        seen.insert(rel.clone(), fs::read(fresh.path(&rel))?);
    }
    assert!(acked.files.len() > 20, "the writer got little done: {} files", acked.files.len());
    let missing: Vec<&String> = acked.files.keys().filter(|k| !seen.contains_key(*k)).collect();
    let extra: Vec<&String> = seen.keys().filter(|k| !acked.files.contains_key(*k)).collect();
    let differ: Vec<&String> =
        acked.files.iter().filter(|(k, v)| seen.get(*k).is_some_and(|s| s != *v)).map(|(k, _)| k).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "of {} acknowledged files: missing {missing:?}, not removed {extra:?}, other contents {differ:?}\n{}",
        acked.files.len(),
        tail(&a.log_text(), 60)
    );
    Ok(())
}

/// A client whose link to the server drops 5 % of datagrams each way and adds 20 ms (and
/// reorders some), and a second client on a clean link. The proxy sits between `a` and vice.
struct SlowLink {
    a: VenusMount,
    b: VenusMount,
    _dir: tempfile::TempDir,
    proxy: LossyProxy,
    vice: Vice,
}

fn slow_link(cell: &str) -> anyhow::Result<SlowLink> {
    let vice = Vice::start(cell)?;
    let bad = Impairment { loss: 0.05, delay: Duration::from_millis(20), jitter: Duration::from_millis(4) };
    let proxy = LossyProxy::start_with(&vice.addr, 16, bad, bad)?;
    let dir = tempfile::tempdir()?;
    let a = VenusMount::start_with_cell_file(&proxy.cell_file(&vice, dir.path())?, cell, QUICK)?;
    let b = VenusMount::start_with(&vice, cell, QUICK)?;
    Ok(SlowLink { a, b, _dir: dir, proxy, vice })
}

fn small_files(root: &Path, n: usize) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    fs::create_dir_all(root)?;
    let mut out = Vec::new();
    for i in 0..n {
        let path = root.join(format!("s{i:03}"));
        let body = Noise::bytes(i as u64 + 1, 100 + i * 37);
        fs::write(&path, &body)?;
        out.push((path, body));
    }
    Ok(out)
}

/// Fault 2: on a slow, lossy link a 16 MiB store hit a 5 s limit on the whole request, venus
/// declared the server unreachable, logged the store, and `close` returned 0 while the other
/// client saw the old file; reintegration hit the same limit on every try. A live server is
/// waited for while data moves: every change reaches the server (at its `close`, or trickled
/// under a write-back permit) and `venus sync` returns once it has.
#[test]
fn a_slow_lossy_link_is_waited_for_not_taken_for_a_dead_server() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let link = slow_link("slow.test")?;
    let watched = [Watched::vice(&link.vice), Watched::venus(&link.a), Watched::venus(&link.b)];
    with_watchdog(Duration::from_secs(300), &watched, move || -> R {
        let (a, b) = (&link.a, &link.b);
        let big = Noise::bytes(99, 16 << 20);
        fs::write(b.path("big"), b"old contents")?;
        let small = small_files(&a.path("tree"), 200)?;
        fs::write(a.path("big"), &big)?;
        // Stored at each close, or logged under a write-back permit and trickled over the
        // link: either way everything reaches the server, and the slow link is never taken
        // for a dead server.
        let out = a.venus(&["sync", "--timeout", "240"]);
        assert!(out.status.success(), "venus sync: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a.pending(), 0, "{}", a.venus_ok(&["status"]));
        assert_eq!(a.counter("servers_unreachable"), 0, "{}", tail(&a.log_text(), 30));
        assert_eq!(hash_file(&b.path("big"))?, blake3::hash(&big));
        for (path, body) in &small {
            let rel = path.strip_prefix(a.path(""))?;
            assert_eq!(&fs::read(b.path(&rel.display().to_string()))?, body);
        }
        let lost = link.proxy.stats(Direction::ToServer).lost + link.proxy.stats(Direction::ToClient).lost;
        assert!(lost > 100, "the link lost only {lost} datagrams: not much of a test");
        Ok(())
    })
}

/// Fault 2's other half: changes logged offline reintegrate over the slow link, and `venus
/// sync` waits for them (showing progress) instead of failing while the server is alive.
#[test]
fn venus_sync_waits_with_progress_for_a_slow_link_to_carry_the_log() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let link = slow_link("slowsync.test")?;
    let watched = [Watched::vice(&link.vice), Watched::venus(&link.a), Watched::venus(&link.b)];
    with_watchdog(Duration::from_secs(300), &watched, move || -> R {
        let (a, b) = (&link.a, &link.b);
        fs::write(a.path("seen"), b"x")?;
        a.venus_ok(&["disconnect"]);
        let big = Noise::bytes(5, 6 << 20);
        fs::write(a.path("big"), &big)?;
        let small = small_files(&a.path("tree"), 30)?;
        assert!(a.pending() >= 32);
        a.venus_ok(&["reconnect"]);
        let out = a.venus(&["sync", "--timeout", "240"]);
        assert!(out.status.success(), "venus sync: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("syncing:"), "no progress shown");
        assert_eq!(a.pending(), 0);
        assert_eq!(hash_file(&b.path("big"))?, blake3::hash(&big));
        assert_eq!(list(&b.path("tree"))?.len(), small.len());
        assert_eq!(state(&a.path("big")).as_deref(), Some("cached"));
        Ok(())
    })
}
