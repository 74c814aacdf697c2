//! POSIX details an independent conformance suite found (fault 5 of the fault issue), beside
//! AFS's own semantics: name length, an unlinked file still open, chmod's set-group-ID rule,
//! fallocate, and what plain `venus status` says about volumes.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

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
    let a = VenusMount::start_with(&vice, "stat.test", &["--write-back-window", "1000"])?;
    fs::read_dir(a.path(""))?.count();
    let out = a.venus_ok(&["status"]);
    assert!(out.contains("volume root.cell of stat.test: connected"), "{out}");
    // A change goes to the server, and venus asks for the volume's write-back permit.
    fs::write(a.path("f"), b"x")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while a.counter("permits_granted") == 0 {
        assert!(std::time::Instant::now() < deadline, "no permit: {}", a.venus_ok(&["status"]));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = a.venus_ok(&["status"]);
    assert!(
        out.contains("volume root.cell of stat.test: write_back (write-back: changes go to the server in batches)"),
        "{out}"
    );
    a.venus_ok(&["sync"]);
    a.venus_ok(&["disconnect"]);
    fs::write(a.path("g"), b"offline")?;
    let out = a.venus_ok(&["status"]);
    assert!(out.contains("disconnected (disconnected by `venus disconnect`)"), "{out}");
    assert!(out.contains("2 changes pending"), "{out}");
    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);
    Ok(())
}

fn mknod(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; mknod(2) reads nothing else.
    if unsafe { libc::mknod(c.as_ptr(), mode, 0) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[test]
fn fifos_and_sockets_are_shared_names_whose_pipes_live_in_each_kernel_and_device_nodes_are_eperm() -> R {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("nodes.test")?;
    let a = VenusMount::start(&vice, "nodes.test")?;
    let b = VenusMount::start(&vice, "nodes.test")?;

    // mkfifo(3): a pipe between two processes of one client, through the name on /afs.
    mknod(&a.path("pipe"), libc::S_IFIFO | 0o640)?;
    let st = fs::metadata(a.path("pipe"))?;
    assert!(st.file_type().is_fifo(), "{:?}", st.file_type());
    assert_eq!(st.mode() & 0o7777, 0o640);
    let writer = {
        let path = a.path("pipe");
        std::thread::spawn(move || fs::write(path, b"through the pipe"))
    };
    assert_eq!(fs::read(a.path("pipe"))?, b"through the pipe");
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    // The other client sees the name and its kind, not the bytes (those never left a's kernel).
    let theirs = fs::metadata(b.path("pipe"))?;
    assert!(theirs.file_type().is_fifo());
    assert_eq!(theirs.len(), 0);

    // bind(2) of a UNIX socket makes its name; connect(2) through it reaches the listener.
    let listener = UnixListener::bind(a.path("sock"))?;
    let mut client = UnixStream::connect(a.path("sock"))?;
    let (mut served, _) = listener.accept()?;
    client.write_all(b"ping")?;
    let mut got = [0u8; 4];
    served.read_exact(&mut got)?;
    assert_eq!(&got, b"ping");
    assert!(fs::symlink_metadata(b.path("sock"))?.file_type().is_socket());
    drop((client, served, listener));

    // They move and go like any name; listings show their kind.
    fs::rename(a.path("pipe"), a.path("pipe2"))?;
    fs::remove_file(a.path("sock"))?;
    assert!(fs::metadata(b.path("pipe2"))?.file_type().is_fifo());
    assert!(!b.path("sock").exists());
    let kinds: Vec<_> = fs::read_dir(b.path(""))?.map(|e| e.and_then(|e| e.file_type())).collect::<Result<_, _>>()?;
    assert!(kinds.iter().any(|k| k.is_fifo()), "{kinds:?}");

    // Device nodes are refused (the mount is nodev); mknod of a regular file makes one.
    assert_eq!(errno_of(mknod(&a.path("null"), libc::S_IFCHR | 0o666)), Some(libc::EPERM));
    assert_eq!(errno_of(mknod(&a.path("disk"), libc::S_IFBLK | 0o666)), Some(libc::EPERM));
    mknod(&a.path("plain"), libc::S_IFREG | 0o644)?;
    assert!(fs::metadata(b.path("plain"))?.is_file());

    // Made offline, logged, and reintegrated like any creation.
    a.venus_ok(&["disconnect"]);
    mknod(&a.path("offline-pipe"), libc::S_IFIFO | 0o600)?;
    assert!(a.pending() >= 1);
    a.venus_ok(&["reconnect"]);
    a.wait_reintegrated()?;
    let st = fs::metadata(b.path("offline-pipe"))?;
    assert!(st.file_type().is_fifo());
    assert_eq!(st.mode() & 0o7777, 0o600);
    assert_eq!(a.status()["conflicts"], 0);
    Ok(())
}

/// `statvfs(2)` of a path: (size, available) in bytes.
fn room(path: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

#[test]
fn df_shows_the_volumes_quota_and_use_and_the_cache_only_at_the_root() -> R {
    const MIB: u64 = 1 << 20;
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("df.test")?;
    let a = VenusMount::start_with(&vice, "df.test", &["--cache-size", "300M"])?;
    let made = vice.vos(&["create", "small", "--quota", "10M"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    a.venus_ok(&["mkmount", &a.path("small").display().to_string(), "small"]);

    assert_eq!(room(&a.path("small"))?, (10 * MIB, 10 * MIB), "an empty volume with a 10 MiB quota");
    fs::write(a.path("small/one-mib"), vec![7u8; MIB as usize])?;
    // Our own store moved the volume on: the next statfs asks again.
    assert_eq!(room(&a.path("small/one-mib"))?, (10 * MIB, 9 * MIB));
    // What df(1) prints, for the volume and for the file's directory alike.
    let df = Command::new("df").args(["-B1", "--output=size,avail"]).arg(a.path("small")).output()?;
    let text = String::from_utf8_lossy(&df.stdout);
    assert!(text.contains(&(10 * MIB).to_string()) && text.contains(&(9 * MIB).to_string()), "{text}");

    // Without a quota: what is used plus the room the server has.
    let (size, avail) = room(&a.path(""))?;
    assert!(avail > 0 && size >= avail, "{size} {avail}");
    assert_ne!((size, avail), (10 * MIB, 9 * MIB));
    // The mount's root (the list of cells) shows the cache.
    assert_eq!(room(&a.mountpoint)?.0, 300 * MIB);

    // Offline: the last answer stands.
    a.venus_ok(&["disconnect"]);
    assert_eq!(room(&a.path("small"))?, (10 * MIB, 9 * MIB));
    Ok(())
}
