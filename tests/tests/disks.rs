//! Full disks (the fault suite, c): venus's cache on a small tmpfs, and vice's data on another.
//! A full disk is an answer (`ENOSPC`), never a wedge, never `EIO`, never a reason to take a
//! live server for a dead one, and once space comes back everything works again without a
//! restart.

use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::*;

type R = anyhow::Result<()>;

const MIB: usize = 1 << 20;
const QUICK: &[&str] = &["--timeout", "4"];

/// Writes `data` in 1 MiB pieces and closes the file, returning the first error of either
/// (`fs::write` would drop the error of `close`, where venus reports a refused store).
fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    for piece in data.chunks(MIB) {
        f.write_all(piece)?;
    }
    let fd = f.into_raw_fd();
    // SAFETY: we own the descriptor and close it once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits (bounded) until venus has no file open: the kernel releases files after `close`
/// returns, and until then their containers cannot be evicted.
fn wait_closed(m: &VenusMount) -> R {
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.status()["cache"]["files_open"].as_u64() != Some(0) {
        anyhow::ensure!(Instant::now() < deadline, "files still open: {}", m.status()["cache"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Fault 3: with its cache on a 48 MiB disk and the default 4 GiB `--cache-size`, an 80 MiB
/// write got `ENOSPC`, and from then on even a 6-byte file failed with `EIO` ("database or disk
/// is full") until venus was restarted. Now the size is fitted to the disk, the databases
/// always have room to commit (a reserve venus gives up when the disk fills), clean files are
/// evicted to make room, and only dirty data that alone fills the disk is refused, with
/// `ENOSPC`.
#[test]
fn a_full_cache_disk_answers_enospc_and_recovers_without_a_restart() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let disk = TmpFs::new(48 << 20)?;
    let vice = Vice::start("cachefull.test")?;
    let a = VenusMount::start_with_cache(&vice.cell_file_path(), "cachefull.test", &disk.path().join("cache"), QUICK)?;
    let b = VenusMount::start_with(&vice, "cachefull.test", QUICK)?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(180), &watched, move || -> R {
        let limit = a.status()["cache"]["limit"].as_u64().unwrap_or(0);
        assert!(limit > 0 && limit < 48 << 20, "the 4 GiB cache size was not fitted to a 48 MiB disk: {limit}");
        assert!(a.log_text().contains("more than its disk can hold"), "no warning about the cache size");

        // Far more than the disk holds: refused with ENOSPC, as a local disk would.
        let err = write_and_close(&a.path("huge"), &Noise::bytes(1, 80 * MIB)).expect_err("80 MiB on a 48 MiB disk");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        wait_closed(&a)?;
        // Afterwards small files work again, at once and with no restart.
        for i in 0..5 {
            write_and_close(&a.path(&format!("small{i}")), b"hello!")?;
        }
        assert_eq!(fs::read(b.path("small4"))?, b"hello!");
        // What did fit of the big file is a file like any other: on the server, evictable.
        let stored = fs::metadata(b.path("huge"))?.len();
        assert!(stored > 0 && stored < (80 * MIB) as u64);
        assert_eq!(a.pending(), 0);

        // Offline, dirty data alone fills the disk: ENOSPC, and the rest of the work goes on.
        a.venus_ok(&["disconnect"]);
        let mut written = Vec::new();
        let mut refused = None;
        for i in 0..20 {
            let name = format!("offline{i}");
            let body = Noise::bytes(100 + i as u64 * 2 + 1, 4 * MIB);
            match write_and_close(&a.path(&name), &body) {
                Ok(()) => written.push((name, body)),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("the disk never filled with dirty data");
        assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
        assert!(written.len() >= 3, "only {} dirty files fit", written.len());
        // Removing a dirty file frees its space; then a new one fits.
        let (gone, _) = written.remove(0);
        fs::remove_file(a.path(&gone))?;
        wait_closed(&a)?;
        write_and_close(&a.path("after"), b"after the disk was full")?;
        a.venus_ok(&["reconnect"]);
        a.venus_ok(&["sync"]);
        for (name, body) in &written {
            assert_eq!(&fs::read(b.path(name))?, body, "{name}");
        }
        assert_eq!(fs::read(b.path("after"))?, b"after the disk was full");
        assert!(!b.path(&gone).exists());
        Ok(())
    })
}

/// Fault 4: with vice's data on a 96 MiB disk, the store that did not fit came back to `cp` as
/// `EIO`, the client took the server's error for a disconnection, and its later changes (the
/// `rm` that would have freed the space, a new file) queued behind the failed store for ever.
/// Now the store is refused with `ENOSPC` and its data kept on the client (listed by `venus
/// conflicts`), the client stays connected, and removals always commit on the full disk.
#[test]
fn a_full_server_disk_refuses_stores_with_enospc_and_never_blocks_the_changes_behind() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let disk = TmpFs::new(96 << 20)?;
    let vice = Vice::start_in("serverfull.test", disk.path())?;
    let a = VenusMount::start_with(&vice, "serverfull.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "serverfull.test", QUICK)?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(180), &watched, move || -> R {
        let mut stored = Vec::new();
        let mut refused = None;
        for i in 0..12u64 {
            let name = format!("big{i}");
            let body = Noise::bytes(2 * i + 1, 10 * MIB);
            match write_and_close(&a.path(&name), &body) {
                Ok(()) => stored.push(name),
                Err(e) => {
                    refused = Some((name, body, e));
                    break;
                }
            }
        }
        let (name, body, err) = refused.expect("a 96 MiB server took 120 MiB");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(stored.len() >= 3, "only {} files fit", stored.len());
        // A refusal is an answer: the client is connected, nothing waits in its log.
        assert_eq!(a.counter("servers_unreachable"), 0, "{}", tail(&a.log_text(), 20));
        assert_eq!(a.pending(), 0);
        // The data of the refused store is kept on the client and listed.
        let listed: serde_json::Value = serde_json::from_str(&a.venus_ok(&["conflicts", "--json"]))?;
        let kept = listed
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(name.as_str())))
            .and_then(|c| c["local_copy"].as_str())
            .map(std::path::PathBuf::from)
            .expect("the refused store is listed with its kept copy");
        assert_eq!(hash_file(&kept)?, blake3::hash(&body));

        // Removals commit on the full disk, and free it; then new files fit again.
        for f in &stored {
            fs::remove_file(a.path(f))?;
        }
        write_and_close(&a.path("note"), b"written once the space was back").context("a small file after rm")?;
        write_and_close(&a.path(&name), &body).context("the refused file again after rm")?;
        assert_eq!(fs::read(b.path("note"))?, b"written once the space was back");
        assert_eq!(hash_file(&b.path(&name))?, blake3::hash(&body));
        assert!(stored.iter().all(|f| !b.path(f).exists()));

        // Offline, the same: a logged store that does not fit is kept aside, and the records
        // behind it (a removal that frees space, a new file) still reach the server.
        for i in 0..2u64 {
            write_and_close(&a.path(&format!("fill{i}")), &Noise::bytes(41 + 2 * i, 10 * MIB))
                .with_context(|| format!("fill{i}"))?;
        }
        a.venus_ok(&["disconnect"]);
        let too_big = Noise::bytes(77, 40 * MIB);
        write_and_close(&a.path("too-big"), &too_big).context("offline too-big")?;
        fs::remove_file(a.path("fill0"))?;
        write_and_close(&a.path("behind"), b"behind the refused store").context("offline behind")?;
        a.venus_ok(&["reconnect"]);
        a.venus_ok(&["sync"]);
        assert_eq!(fs::read(b.path("behind"))?, b"behind the refused store");
        assert!(!b.path("fill0").exists());
        let listed = a.venus_ok(&["conflicts"]);
        assert!(listed.contains("too-big"), "{listed}");
        Ok(())
    })
}
