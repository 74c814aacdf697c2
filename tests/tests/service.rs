//! Running as a service (docs/admin.md, "Running as a service"): the systemd units pass
//! `systemd-analyze verify` as `scripts/install` installs them; vice and venus tell
//! `$NOTIFY_SOCKET` READY=1 once they serve and STOPPING=1 when they stop, and log to stderr;
//! the mount helper `mount.fuse.venus` mounts a cell the way mount(8) calls it and returns only
//! once the mount is ready.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use e2e::*;

type R = anyhow::Result<()>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A unix datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> anyhow::Result<NotifySocket> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        Ok(NotifySocket { _dir: dir, path, socket })
    }

    /// The next message, waiting at most `limit`; fails early if `child` exits first.
    fn next(&self, child: &mut Child, limit: Duration, log: &Path) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        self.socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(status) = child.try_wait()? {
                bail!("exited with {status} before notifying:\n{}", fs::read_to_string(log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("no notification in {limit:?}:\n{}", fs::read_to_string(log).unwrap_or_default());
            }
        }
    }

    /// Whether a message is waiting now.
    fn pending(&self) -> anyhow::Result<Option<String>> {
        self.socket.set_nonblocking(true)?;
        let mut buf = [0u8; 4096];
        let got = match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => return Err(e.into()),
        };
        self.socket.set_nonblocking(false)?;
        Ok(got)
    }
}

/// A process this test started, killed if the test ends before it stops it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM and a bounded wait for the exit status.
fn terminate(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mounted(mountpoint: &Path) -> bool {
    let needle = format!(" {} ", mountpoint.display());
    fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|t| t.lines().any(|l| l.contains(&needle) && l.contains("fuse.venus")))
}

#[test]
fn vice_notifies_ready_once_it_answers_and_stopping_on_sigterm() -> R {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bin("vice"))
        .args(["init", "--cell", "notify.test", "--data"])
        .arg(&data)
        .args(["--listen", &addr])
        .output()?;
    ensure!(out.status.success(), "vice init: {}", String::from_utf8_lossy(&out.stderr));
    let notify = NotifySocket::new()?;
    let log = dir.path().join("vice.stderr");
    let mut vice = Proc(
        Command::new(bin("vice"))
            .args(["serve", "--data"])
            .arg(&data)
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?,
    );
    let watched = [Watched::process("vice serve", vice.0.id())];
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        let ready = notify.next(&mut vice.0, Duration::from_secs(30), &log)?;
        assert_eq!(ready.lines().collect::<Vec<_>>(), ["READY=1"], "{ready:?}");
        // Ready means serving: a client's first Hello is answered, with no waiting.
        let cell = proto::cell::CellFile::load(&data.join("cell.toml"))?;
        assert!(probe(&cell), "vice said READY=1 but does not answer");
        assert!(notify.pending()?.is_none(), "one READY=1, nothing else while serving");
        let status = terminate(&mut vice.0)?;
        assert!(status.success(), "vice exited with {status} on SIGTERM");
        let stopping = notify.pending()?.context("no STOPPING=1 on SIGTERM")?;
        assert_eq!(stopping.trim(), "STOPPING=1");
        // Foreground vice logs to stderr at info by default: what the journal keeps.
        let text = fs::read_to_string(&log)?;
        assert!(text.contains("vice serving") && text.contains("shutting down"), "{text}");
        Ok(())
    })
}

#[test]
fn venus_notifies_ready_once_mounted_and_stopping_when_it_unmounts() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("venusnotify.test")?;
    let dir = tempfile::tempdir()?;
    let (mountpoint, cache, log) = (dir.path().join("afs"), dir.path().join("cache"), dir.path().join("venus.stderr"));
    fs::create_dir(&mountpoint)?;
    let notify = NotifySocket::new()?;
    let _unmount = Unmount(mountpoint.clone());
    let mut venus = Proc(
        Command::new(bin("venus"))
            .arg("mount")
            .arg("--cell-file")
            .arg(vice.cell_file_path())
            .arg("--cache")
            .arg(&cache)
            .arg(&mountpoint)
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?,
    );
    let watched =
        [Watched::vice(&vice), Watched::process("venus mount", venus.0.id()), Watched::mount("venus", &mountpoint)];
    let password = vice.admin_password();
    let mp = mountpoint.clone();
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        let (_vice, mountpoint) = (vice, mp);
        let ready = notify.next(&mut venus.0, Duration::from_secs(30), &log)?;
        assert_eq!(ready.trim(), "READY=1");
        // Ready means the mount and the control socket are both up, with no waiting.
        assert!(mounted(&mountpoint), "READY=1 before the mount showed");
        let venus_cmd = |args: &[&str]| Command::new(bin("venus")).args(args).env("VENUS_CACHE", &cache).output();
        let status = venus_cmd(&["status", "--json"])?;
        assert!(status.status.success(), "READY=1 before the control socket answered");
        let mut login = Command::new(bin("venus"))
            .args(["login", "admin"])
            .env("VENUS_CACHE", &cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        std::io::Write::write_all(&mut login.stdin.take().context("stdin")?, format!("{password}\n").as_bytes())?;
        assert!(login.wait()?.success());
        let file = mountpoint.join("venusnotify.test/ready.txt");
        fs::write(&file, b"written once ready")?;
        assert_eq!(fs::read(&file)?, b"written once ready");
        let status = terminate(&mut venus.0)?;
        assert!(status.success(), "venus exited with {status} on SIGTERM");
        assert!(!mounted(&mountpoint), "SIGTERM left the mount behind");
        let stopping = notify.pending()?.context("no STOPPING=1 on SIGTERM")?;
        assert_eq!(stopping.trim(), "STOPPING=1");
        let text = fs::read_to_string(&log)?;
        assert!(text.contains("venus mounted") && text.contains("unmounting"), "{text}");
        Ok(())
    })
}

/// Unmounts what a test mounted if it did not get as far as unmounting.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new(bin("venus")).arg("unmount").arg(&self.0).output();
        }
        if mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.0).status();
        }
    }
}

#[test]
fn the_mount_helper_mounts_a_cell_as_mount_calls_it_and_returns_once_ready() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("helper.test")?;
    let dir = tempfile::tempdir()?;
    let (mountpoint, cache) = (dir.path().join("afs"), dir.path().join("cache"));
    fs::create_dir(&mountpoint)?;
    let helper = repo().join("dist/mount.fuse.venus");
    let notify = NotifySocket::new()?;
    let run_helper = |opts: &str| {
        Command::new(&helper)
            .arg(vice.cell_file_path())
            .arg(&mountpoint)
            .args(["-o", opts])
            // As mount(8) runs it: with no PATH.
            .env_clear()
            .env("VENUS", bin("venus"))
            // A detached venus must not claim a service manager's socket (readiness is the
            // helper returning).
            .env("NOTIFY_SOCKET", &notify.path)
            .output()
    };

    // What venus cannot honour, and what nobody knows, is refused before anything is mounted.
    for bad in ["defaults,ro", "cache_size=1G,frobnicate"] {
        let out = run_helper(bad)?;
        assert_eq!(out.status.code(), Some(1), "-o {bad}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("mount.fuse.venus:"), "{out:?}");
        assert!(!mounted(&mountpoint));
    }

    let _unmount = Unmount(mountpoint.clone());
    let opts =
        format!("defaults,_netdev,nodev,nosuid,rw,noauto,user,cache={},cache_size=1G,timeout=5", cache.display());
    let out = run_helper(&opts)?;
    assert!(out.status.success(), "mount.fuse.venus: {}", String::from_utf8_lossy(&out.stderr));
    // Returned means ready: mounted and answering, with no polling.
    assert!(mounted(&mountpoint), "the helper returned before the mount showed");
    let venus = |args: &[&str]| Command::new(bin("venus")).args(args).env("VENUS_CACHE", &cache).output();
    let status = venus(&["status", "--json"])?;
    assert!(status.status.success(), "the helper returned before venus answered");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["cache"]["limit"].as_u64(), Some(1 << 30), "cache_size=1G was not passed on");
    assert!(notify.pending()?.is_none(), "the detached venus notified the caller's socket");

    let watched = [Watched::vice(&vice), Watched::mount("mount.fuse.venus", &mountpoint)];
    let password_file = dir.path().join("admin.password");
    fs::write(&password_file, vice.admin_password())?;
    let cell_file = vice.cell_file_path();
    let (mp, cache_dir) = (mountpoint.clone(), cache.clone());
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        let (_vice, mountpoint, cache) = (vice, mp, cache_dir);
        let login = Command::new(bin("venus"))
            .args(["login", "admin", "--password-file"])
            .arg(&password_file)
            .env("VENUS_CACHE", &cache)
            .output()?;
        assert!(login.status.success(), "{login:?}");
        let file = mountpoint.join("helper.test/through-the-helper.txt");
        fs::write(&file, b"mounted by mount.fuse.venus")?;
        assert_eq!(fs::read(&file)?, b"mounted by mount.fuse.venus");
        // It reached the server: another client sees it.
        let other = VenusMount::start_with_cell_file(&cell_file, "helper.test", &[])?;
        assert_eq!(fs::read(other.path("through-the-helper.txt"))?, b"mounted by mount.fuse.venus");
        drop(other);

        let out = Command::new(bin("venus")).arg("unmount").arg(&mountpoint).output()?;
        assert!(out.status.success(), "venus unmount: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!mounted(&mountpoint));
        // The background venus logged to its cache directory.
        let log = fs::read_to_string(cache.join("venus.log"))?;
        assert!(log.contains("venus mounted") && log.contains("unmounting"), "{log}");
        Ok(())
    })?;

    // -f (fake) says what it would run and mounts nothing.
    let out = Command::new(&helper)
        .arg("/etc/afs/cell.toml")
        .arg(&mountpoint)
        .args(["-f", "-o", "cache_size=2G"])
        .env("VENUS", bin("venus"))
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("mount --background --cell-file /etc/afs/cell.toml --cache-size 2G"), "{said}");
    assert!(!mounted(&mountpoint));
    Ok(())
}

/// The units as `scripts/install` installs them into a DESTDIR, with `ExecStart` pointed at the
/// binaries installed there, pass `systemd-analyze verify` without a word: it works offline,
/// with no systemd running, and prints warnings (unknown keys, missing commands) while still
/// exiting 0, so any output fails the test.
#[test]
fn the_installed_units_pass_systemd_analyze_verify() -> R {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists());
    let analyze = analyze.expect(
        "systemd-analyze is missing: install it with `apt-get install -y systemd` (.ci/run does) \
         to check the units in dist/systemd",
    );
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let from = bin("venus").parent().expect("target dir").to_path_buf();
    let out = Command::new(repo().join("scripts/install")).arg("--from").arg(&from).env("DESTDIR", &root).output()?;
    assert!(out.status.success(), "scripts/install: {}", String::from_utf8_lossy(&out.stderr));
    for file in [
        "usr/local/bin/vice",
        "usr/local/bin/venus",
        "usr/local/bin/vos",
        "usr/local/bin/pts",
        "usr/local/bin/hoard",
        "sbin/mount.fuse.venus",
        "etc/systemd/system/vice.service",
        "etc/systemd/system/venus.service",
    ] {
        assert!(root.join(file).exists(), "scripts/install did not install {file}");
    }
    assert!(root.join("etc/afs").is_dir(), "scripts/install did not create /etc/afs");
    let helper = fs::read_to_string(root.join("sbin/mount.fuse.venus"))?;
    assert!(helper.contains("VENUS=${VENUS:-/usr/local/bin/venus}"), "the helper does not name the installed venus");

    let units = dir.path().join("units");
    fs::create_dir(&units)?;
    let bindir = format!("{}/usr/local/bin/", root.display());
    for unit in ["vice.service", "venus.service"] {
        let text = fs::read_to_string(root.join("etc/systemd/system").join(unit))?;
        assert!(text.contains("ExecStart=/usr/local/bin/"), "{unit} does not run the installed binary");
        fs::write(units.join(unit), text.replace("/usr/local/bin/", &bindir))?;
    }
    let verify = |files: &[PathBuf]| -> anyhow::Result<(bool, String)> {
        let out = Command::new(analyze).arg("verify").args(files).output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    };
    let (ok, said) = verify(&[units.join("vice.service"), units.join("venus.service")])?;
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify complained about the units:\n{said}");

    // The check sees warnings: a misspelt key in a copy is reported.
    let bad = units.join("bad.service");
    fs::write(&bad, fs::read_to_string(units.join("vice.service"))?.replace("Restart=", "Restrat="))?;
    let (_, said) = verify(&[bad])?;
    assert!(said.contains("Restrat"), "systemd-analyze verify did not report an unknown key: {said:?}");
    Ok(())
}
