//! POSIX details an independent conformance suite found (fault 5 of the fault issue), beside
//! AFS's own semantics: name length, an unlinked file still open, chmod's set-group-ID rule,
//! fallocate, and what plain `venus status` says about volumes.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use e2e::*;

type R = anyhow::Result<()>;

const CAROL: u32 = 4201;

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_name_longer_than_255_bytes_is_enametoolong_for_every_call() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("names.test")?;
    let a = VenusMount::start(&vice, "names.test")?;
    let long = a.path(&"n".repeat(256));
    assert_eq!(errno_of(fs::metadata(&long)), Some(libc::ENAMETOOLONG), "lookup");
    assert_eq!(errno_of(fs::File::open(&long)), Some(libc::ENAMETOOLONG), "open");
    assert_eq!(errno_of(fs::File::create(&long)), Some(libc::ENAMETOOLONG), "create");
    assert_eq!(errno_of(fs::create_dir(&long)), Some(libc::ENAMETOOLONG), "mkdir");
    fs::write(a.path("short"), b"x")?;
    assert_eq!(errno_of(fs::rename(a.path("short"), &long)), Some(libc::ENAMETOOLONG), "rename");
    // 255 bytes is fine.
    fs::write(a.path(&"n".repeat(255)), b"longest")?;
    assert_eq!(fs::read(a.path(&"n".repeat(255)))?, b"longest");
    Ok(())
}

#[test]
fn a_file_unlinked_while_open_still_answers_fstat_and_goes_at_its_last_close() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("orphan.test")?;
    let a = VenusMount::start(&vice, "orphan.test")?;
    let b = VenusMount::start(&vice, "orphan.test")?;
    fs::write(a.path("open"), b"still here")?;
    let mut f = fs::OpenOptions::new().read(true).write(true).open(a.path("open"))?;
    fs::remove_file(a.path("open"))?;
    let st = f.metadata()?;
    assert_eq!(st.nlink(), 0, "an unlinked open file has no links");
    assert_eq!(st.len(), 10);
    let mut back = String::new();
    f.read_to_string(&mut back)?;
    assert_eq!(back, "still here");
    f.seek(std::io::SeekFrom::End(0))?;
    f.write_all(b", written after unlink")?;
    f.sync_all()?;
    assert!(f.metadata().is_ok());
    drop(f);
    assert!(!a.path("open").exists());
    assert!(!b.path("open").exists(), "the write after unlink brought the file back");
    assert!(!a.log_text().contains("storing at release failed"), "{}", tail(&a.log_text(), 10));
    assert_eq!(a.status()["conflicts"], 0);
    // Removed by the other client while open here: the same.
    fs::write(a.path("theirs"), b"theirs")?;
    let f = fs::File::open(a.path("theirs"))?;
    fs::remove_file(b.path("theirs"))?;
    assert_eq!(f.metadata()?.len(), 6);
    Ok(())
}

#[test]
fn chmod_drops_set_group_id_for_a_caller_outside_the_files_group() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("sgid.test")?;
    vice.create_user("carol", "carol password")?;
    let a = VenusMount::start(&vice, "sgid.test")?;
    fs::set_permissions(a.dir.path(), fs::Permissions::from_mode(0o755))?;
    a.login(CAROL, "carol", "carol password")?;
    let dir = a.path("shared");
    fs::create_dir(&dir)?;
    a.venus_ok(&["setacl", &dir.display().to_string(), "carol", "rlidwk"]);
    // Root's file, group 0: carol (not in group 0) may change its mode, not make it setgid.
    let file = dir.join("tool");
    fs::write(&file, b"#!/bin/sh\n")?;
    let chmod =
        |mode: &str| Command::new("chmod").arg(mode).arg(&file).uid(CAROL).gid(CAROL).output().expect("run chmod");
    let out = chmod("2755");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&file)?.mode() & 0o7777, 0o755, "set-group-ID kept for a non-member");
    // Root may.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o2755))?;
    assert_eq!(fs::metadata(&file)?.mode() & 0o7777, 0o2755);
    // A member of the file's group may: carol's own file has her group.
    let own = dir.join("own");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo x > {0} && chmod 2750 {0}", own.display()))
        .uid(CAROL)
        .gid(CAROL)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&own)?.gid(), CAROL);
    assert_eq!(fs::metadata(&own)?.mode() & 0o7777, 0o2750);
    Ok(())
}

#[test]
fn fallocate_reserves_and_extends_and_the_other_client_sees_it() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("falloc.test")?;
    let a = VenusMount::start(&vice, "falloc.test")?;
    let b = VenusMount::start(&vice, "falloc.test")?;
    let f = fs::File::create(a.path("image"))?;
    // SAFETY: a valid descriptor; mode 0 extends the file.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata()?.len(), 1 << 20);
    // KEEP_SIZE reserves beyond the end without changing the size.
    // SAFETY: as above.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata()?.len(), 1 << 20);
    drop(f);
    let seen = fs::read(b.path("image"))?;
    assert_eq!(seen.len(), 1 << 20);
    assert!(seen.iter().all(|&x| x == 0));
    Ok(())
}

#[test]
fn plain_venus_status_shows_each_volumes_state_and_why() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("stat.test")?;
    let a = VenusMount::start(&vice, "stat.test")?;
    fs::write(a.path("f"), b"x")?;
    let out = a.venus_ok(&["status"]);
    assert!(out.contains("volume root.cell of stat.test: connected"), "{out}");
    a.venus_ok(&["disconnect"]);
    fs::write(a.path("g"), b"offline")?;
    let out = a.venus_ok(&["status"]);
    assert!(out.contains("disconnected (disconnected by `venus disconnect`)"), "{out}");
    assert!(out.contains("2 changes pending"), "{out}");
    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);
    Ok(())
}
