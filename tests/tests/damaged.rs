//! Damaged databases (the fault suite, d): venus's cache index and its modification log
//! overwritten or cut short while venus is stopped. Venus starts, says what it found, puts the
//! damaged file aside, and keeps what can be kept: above all, the data of changes not yet on a
//! server. Never a panic, never a refusal to start.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use e2e::*;

type R = anyhow::Result<()>;

const QUICK: &[&str] = &["--timeout", "4"];

/// Overwrites everything past the first page of a database with garbage.
fn scribble(db: &Path) -> R {
    let len = fs::metadata(db)?.len();
    anyhow::ensure!(len > 4096, "{} is too small to damage ({len} bytes)", db.display());
    let mut f = fs::OpenOptions::new().write(true).open(db)?;
    f.seek(SeekFrom::Start(4096))?;
    f.write_all(&vec![0xa5u8; (len - 4096) as usize])?;
    f.sync_all()?;
    Ok(())
}

fn damaged_copies(cache: &Path, prefix: &str) -> anyhow::Result<usize> {
    Ok(fs::read_dir(cache)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("damaged") && !n.ends_with("-wal") && !n.ends_with("-shm"))
        .count())
}

#[test]
fn a_damaged_cache_index_is_put_aside_and_offline_changes_still_reach_the_server() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("index.test")?;
    let mut a = VenusMount::start_with(&vice, "index.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "index.test", QUICK)?;
    for i in 0..40 {
        fs::write(a.path(&format!("warm{i}")), format!("warm {i}"))?;
    }
    fs::write(a.path("edited"), b"before")?;
    a.venus_ok(&["disconnect"]);
    fs::write(a.path("edited"), b"edited offline")?;
    fs::write(a.path("made"), b"made offline")?;
    assert!(a.pending() >= 2);
    a.stop()?;
    scribble(&a.cache().join("cache.sqlite"))?;
    a.restart_stopped()?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        assert!(a.log_text().contains("cache index is damaged"), "{}", tail(&a.log_text(), 20));
        assert_eq!(damaged_copies(&a.cache(), "cache.sqlite")?, 1);
        a.venus_ok(&["sync"]);
        assert_eq!(fs::read(b.path("edited"))?, b"edited offline");
        assert_eq!(fs::read(b.path("made"))?, b"made offline");
        // The rest is fetched again.
        assert_eq!(fs::read(a.path("warm7"))?, b"warm 7");
        assert_eq!(fs::read(a.path("edited"))?, b"edited offline");
        assert!(!a.log_text().contains("panicked"));
        Ok(())
    })
}

#[test]
fn a_damaged_modification_log_is_put_aside_and_the_changed_files_data_is_kept() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("log.test")?;
    let mut a = VenusMount::start_with(&vice, "log.test", QUICK)?;
    let b = VenusMount::start_with(&vice, "log.test", QUICK)?;
    fs::write(a.path("edited"), b"before")?;
    a.venus_ok(&["disconnect"]);
    fs::write(a.path("edited"), b"edited offline")?;
    // Enough records that the log has pages to damage.
    for i in 0..200 {
        fs::write(a.path(&format!("made{i:03}")), format!("made offline {i}"))?;
    }
    a.stop()?;
    scribble(&a.cache().join("cml.sqlite"))?;
    a.restart_stopped()?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        assert!(a.log_text().contains("modification log was damaged"), "{}", tail(&a.log_text(), 20));
        assert_eq!(damaged_copies(&a.cache(), "cml.sqlite")?, 1);
        a.venus_ok(&["sync"]);
        // The edit of a file the server knows reaches it from the cached contents.
        assert_eq!(fs::read(b.path("edited"))?, b"edited offline");
        // Files made offline whose creation was lost with the log: their data is kept, at
        // their name or (the name unknown to the server) as a listed conflict copy.
        let listed: serde_json::Value = serde_json::from_str(&a.venus_ok(&["conflicts", "--json"]))?;
        let conflicts = listed.as_array().cloned().unwrap_or_default();
        for i in [0, 99, 199] {
            let name = format!("made{i:03}");
            let body = format!("made offline {i}").into_bytes();
            if b.path(&name).exists() {
                assert_eq!(fs::read(b.path(&name))?, body);
                continue;
            }
            let kept = conflicts.iter().any(|c| {
                let copies = c["copy_name"].as_str().map(|n| [b.path(n), b.path(&format!(".conflicts/{n}"))]);
                let local = c["local_copy"].as_str().map(std::path::PathBuf::from);
                copies.into_iter().flatten().chain(local).any(|p| fs::read(&p).is_ok_and(|d| d == body))
            });
            assert!(kept, "{name}'s data was lost ({} conflicts listed)", conflicts.len());
        }
        assert!(!a.log_text().contains("panicked"));
        Ok(())
    })
}
