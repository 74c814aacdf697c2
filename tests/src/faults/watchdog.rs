//! `with_watchdog`: runs a test body on its own thread and, if it has not finished within a
//! limit, fails the test with evidence instead of hanging CI.
//!
//! When the limit passes, in this order: (1) a report is collected while everything is still
//! stuck: for every watched process (vice, venus) and for the test process itself, each
//! thread's name, state, wait channel and kernel stack, plus the tail of each watched log;
//! (2) the FUSE connections of the watched mounts are aborted, so test threads blocked in FUSE
//! requests get ENOTCONN and return; (3) the body gets a short grace to unwind (its `Vice` and
//! `VenusMount` handles then stop their processes as usual); (4) if it is still running, the
//! watched processes are SIGKILLed and the mounts lazily unmounted, so nothing outlives the
//! test; (5) the test panics with the report.
//!
//! A watched process is read by its *current* pid at report time (`Vice` and `VenusMount`
//! share their live pid with `Watched`), so a restart storm reports the server running now, not
//! the first one.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use super::procfs::{abort_fuse, stacks};
use crate::{VenusMount, Vice, tail};

/// Where a watched process's pid comes from.
#[derive(Clone, Debug)]
enum Pid {
    None,
    Fixed(u32),
    /// Updated by `Vice`/`VenusMount` on every start and stop; 0 while none runs.
    Live(Arc<AtomicU32>),
}

/// Something the watchdog reports on when a test hangs: a process, a FUSE mount, or both.
#[derive(Clone, Debug)]
pub struct Watched {
    what: String,
    pid: Pid,
    mount: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl Watched {
    /// A vice server: its current process and its log.
    pub fn vice(vice: &Vice) -> Watched {
        Watched {
            what: format!("vice {}", vice.addr),
            pid: Pid::Live(vice.live_pid()),
            mount: None,
            log: Some(vice.log_path().to_path_buf()),
        }
    }

    /// A venus mount: its current process, its mount point (whose FUSE connection is aborted)
    /// and its log.
    pub fn venus(mount: &VenusMount) -> Watched {
        Watched {
            what: format!("venus {}", mount.mountpoint.display()),
            pid: Pid::Live(mount.live_pid()),
            mount: Some(mount.mountpoint.clone()),
            log: Some(mount.log_path().to_path_buf()),
        }
    }

    /// Any process by pid.
    pub fn process(what: &str, pid: u32) -> Watched {
        Watched { what: what.to_string(), pid: Pid::Fixed(pid), mount: None, log: None }
    }

    /// A FUSE mount not managed by `VenusMount`.
    pub fn mount(what: &str, mountpoint: &Path) -> Watched {
        Watched { what: what.to_string(), pid: Pid::None, mount: Some(mountpoint.to_path_buf()), log: None }
    }

    /// The pid to report on now, if a process runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.pid {
            Pid::None => None,
            Pid::Fixed(p) => Some(*p),
            Pid::Live(p) => Some(p.load(Ordering::Relaxed)).filter(|&p| p != 0),
        }
    }

    /// What it is, its threads' stacks and the end of its log.
    pub fn report(&self) -> String {
        let mut out = format!("---- {} ----\n", self.what);
        match (&self.pid, self.pid()) {
            (_, Some(pid)) => out.push_str(&stacks(pid)),
            (Pid::None, None) => {}
            (_, None) => out.push_str("not running (stopped or killed by the test)\n"),
        }
        if let Some(log) = &self.log {
            let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(unreadable: {e})"));
            out.push_str(&format!("last lines of {}:\n{}\n", log.display(), tail(&text, 40)));
        }
        out
    }
}

impl From<&Vice> for Watched {
    fn from(v: &Vice) -> Watched {
        Watched::vice(v)
    }
}

impl From<&VenusMount> for Watched {
    fn from(m: &VenusMount) -> Watched {
        Watched::venus(m)
    }
}

/// The name of the thread that runs a watched test body, as the report shows it.
pub const BODY_THREAD: &str = "test-body";

/// A time limit for a test body, with what to report on and clean up if it passes.
pub struct Watchdog {
    limit: Duration,
    grace: Duration,
    watched: Vec<Watched>,
}

impl Watchdog {
    pub fn new(limit: Duration) -> Watchdog {
        Watchdog { limit, grace: Duration::from_secs(5), watched: Vec::new() }
    }

    pub fn watch(mut self, w: impl Into<Watched>) -> Watchdog {
        self.watched.push(w.into());
        self
    }

    pub fn watch_all(mut self, ws: impl IntoIterator<Item = Watched>) -> Watchdog {
        self.watched.extend(ws);
        self
    }

    /// How long the body may take to unwind once FUSE connections were aborted (5 s unless
    /// set). Not waited for when there was no mount to abort: nothing would unblock it.
    pub fn grace(mut self, grace: Duration) -> Watchdog {
        self.grace = grace;
        self
    }

    /// The report the watchdog would give now: every watched process, then the test process.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for w in &self.watched {
            out.push_str(&w.report());
        }
        out.push_str("---- the test process ----\n");
        out.push_str(&stacks(std::process::id()));
        out
    }

    /// Runs `body` on its own thread and returns what it returns; a panic in it propagates
    /// as is. If it takes longer than the limit, panics with the report (see the module note).
    pub fn run<T, F>(self, body: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(BODY_THREAD.into())
            .spawn(move || {
                let value = body();
                let _ = tx.send(value);
            })
            .expect("spawning the test body's thread");
        match rx.recv_timeout(self.limit) {
            Ok(value) => {
                // The thread has nothing left to do but return.
                let _ = handle.join();
                value
            }
            Err(RecvTimeoutError::Disconnected) => match handle.join() {
                Err(payload) => std::panic::resume_unwind(payload),
                Ok(()) => panic!("the test body's thread ended without a result"),
            },
            Err(RecvTimeoutError::Timeout) => self.fire(rx, handle),
        }
    }

    fn fire<T>(self, rx: mpsc::Receiver<T>, handle: std::thread::JoinHandle<()>) -> ! {
        let mut report =
            format!("the test body did not finish within {:?}: stacks of the threads involved follow\n", self.limit);
        report.push_str(&self.report());
        report.push_str("---- what the watchdog did ----\n");
        let mut aborted = false;
        for m in self.watched.iter().filter_map(|w| w.mount.as_deref()) {
            match abort_fuse(m) {
                Ok(line) => {
                    aborted |= line.contains("aborted");
                    report.push_str(&line);
                }
                Err(e) => report.push_str(&format!("{}: could not abort the FUSE connection: {e:#}", m.display())),
            }
            report.push('\n');
        }
        let outcome = if aborted { rx.recv_timeout(self.grace) } else { Err(RecvTimeoutError::Timeout) };
        match outcome {
            Ok(_) => report.push_str("after the abort, the body returned\n"),
            Err(RecvTimeoutError::Disconnected) => {
                let why = handle.join().err().map(|p| panic_text(p.as_ref())).unwrap_or_default();
                report.push_str(&format!("after the abort, the body failed: {why}\n"));
            }
            Err(RecvTimeoutError::Timeout) => {
                // The body's handles will never drop: stop what they would have stopped.
                for w in &self.watched {
                    if let Some(pid) = w.pid() {
                        // SAFETY: kill(2) with a pid the harness started (or was told to watch).
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        report.push_str(&format!("SIGKILLed {} (pid {pid})\n", w.what));
                    }
                }
                for m in self.watched.iter().filter_map(|w| w.mount.as_deref()) {
                    lazy_unmount(m);
                }
                report.push_str("the body is still running; its thread is left behind\n");
            }
        }
        panic!("{report}");
    }
}

/// Runs `body` with a time limit, reporting on `watched` if it passes: see `Watchdog`.
///
/// ```ignore
/// let w = [Watched::vice(&vice), Watched::venus(&mount)];
/// with_watchdog(Duration::from_secs(120), &w, move || storm(vice, mount))
/// ```
pub fn with_watchdog<T, F>(limit: Duration, watched: &[Watched], body: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Watchdog::new(limit).watch_all(watched.iter().cloned()).run(body)
}

/// As `with_watchdog` for an async body: it runs on a runtime of its own on the body's thread,
/// so a hung future is reported like a hung call (call this from a plain `#[test]`).
pub fn with_watchdog_async<T, F, Fut>(limit: Duration, watched: &[Watched], body: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    with_watchdog(limit, watched, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the test body");
        rt.block_on(body())
    })
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Detaches a mount without touching it (no process to wait for, no lookup of a dead mount).
fn lazy_unmount(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(p) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; failure (not mounted) is harmless.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Instant;

    fn message(r: std::thread::Result<()>) -> String {
        match r {
            Ok(()) => panic!("the watchdog did not fire"),
            Err(p) => panic_text(p.as_ref()),
        }
    }

    #[test]
    fn a_body_that_finishes_returns_its_value_and_a_panic_propagates() {
        assert_eq!(with_watchdog(Duration::from_secs(30), &[], || 42), 42);
        let r = catch_unwind(|| with_watchdog(Duration::from_secs(30), &[], || -> u32 { panic!("boom in the body") }));
        assert_eq!(message(r.map(|_| ())), "boom in the body");
        assert_eq!(with_watchdog_async(Duration::from_secs(30), &[], || async { 7 }), 7);
    }

    #[test]
    fn a_body_past_its_limit_fails_with_stacks_and_the_watched_process_is_killed() {
        let mut sleeper = std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep");
        let watched = [Watched::process("a sleeper", sleeper.id())];
        let (release, wait) = mpsc::channel::<()>();
        let started = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            with_watchdog(Duration::from_millis(200), &watched, move || {
                let _ = wait.recv_timeout(Duration::from_secs(60));
            })
        }));
        let report = message(r);
        assert!(started.elapsed() < Duration::from_secs(30), "the watchdog took {:?}", started.elapsed());
        assert!(report.contains("did not finish within 200ms"), "{report}");
        assert!(report.contains("---- a sleeper ----"), "{report}");
        assert!(report.contains(&format!("process {}", sleeper.id())), "{report}");
        assert!(report.contains(&format!("process {}", std::process::id())), "{report}");
        assert!(report.contains(&format!("{BODY_THREAD:?}")), "the report names the body's thread:\n{report}");
        assert!(report.contains("SIGKILLed a sleeper"), "{report}");
        let status = sleeper.wait().expect("wait for sleep");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Lets the abandoned body finish.
        drop(release);
    }

    /// The whole path on a real mount: venus is frozen (SIGSTOP), a lookup in the body blocks in
    /// the kernel waiting on it, the watchdog reports that thread waiting in FUSE, aborts the
    /// connection found through mountinfo, and the body comes back with an error.
    #[test]
    fn a_body_blocked_on_a_frozen_venus_is_reported_and_released_by_aborting_fuse() {
        use std::os::unix::fs::MetadataExt;
        if !crate::fuse_available() {
            return;
        }
        let vice = Vice::start("watchdog.test").expect("start vice");
        let mut mount = VenusMount::start(&vice, "watchdog.test").expect("mount venus");
        let pid = mount.pid().expect("venus runs");
        // While it is healthy, the connection found through mountinfo is the mount's device.
        let dev = std::fs::metadata(&mount.mountpoint).expect("stat the mount point").dev();
        assert_eq!(super::super::fuse_connection(&mount.mountpoint), Some(u64::from(libc::minor(dev))));
        let watched = [Watched::vice(&vice), Watched::venus(&mount)];
        // SAFETY: signals to the venus child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        // A thread of our own blocks first, to see it found by its wait channel.
        let other = mount.path(&format!("never-looked-up-{}", rand::random::<u64>()));
        let bystander = std::thread::spawn(move || std::fs::metadata(other).is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while super::super::threads_in_fuse(std::process::id()).is_empty() {
            assert!(std::time::Instant::now() < deadline, "no thread of ours seen waiting on FUSE");
            std::thread::sleep(Duration::from_millis(10));
        }
        let probe = mount.path(&format!("never-looked-up-{}", rand::random::<u64>()));
        let r = catch_unwind(AssertUnwindSafe(|| {
            with_watchdog(Duration::from_secs(1), &watched, move || std::fs::metadata(probe).map(|_| ()))
        }));
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let report = message(r.map(|_| ()));
        assert!(report.contains(&format!("---- venus {} ----", mount.mountpoint.display())), "{report}");
        assert!(report.contains(&format!("---- vice {} ----", vice.addr)), "{report}");
        assert!(report.contains(&format!("process {pid}")), "{report}");
        assert!(report.contains("aborted FUSE connection"), "{report}");
        assert!(report.contains("after the abort, the body returned"), "{report}");
        let body = report.lines().find(|l| l.contains(&format!("{BODY_THREAD:?}"))).expect("the body's thread");
        // The body waits in FUSE itself, or in the VFS behind the bystander's lookup of the
        // cell's directory (`d_alloc_parallel`): asleep either way, and the report shows a
        // thread waiting for venus's answer.
        assert!(!body.contains(": R "), "the body is not blocked: {body}\n{report}");
        assert!(report.contains("request_wait_answer"), "no thread shown waiting on FUSE:\n{report}");
        assert!(vice.pid().is_some() && mount.pid().is_some(), "the watchdog killed what the body had released");
        assert!(bystander.join().expect("the bystander thread"), "the aborted lookup succeeded");
        assert!(super::super::threads_in_fuse(std::process::id()).is_empty());
        mount.kill9();
    }
}
