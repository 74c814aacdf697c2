//! What the kernel knows about a process's threads, read from /proc: name, scheduler state,
//! wait channel and kernel stack, for failure reports (`stacks`) and for asserting at the end of
//! a fault test that no thread is stuck (`threads_in_state`, `threads_stuck_in`). And the FUSE
//! control file system, to abort the connection of a hung mount.
//!
//! Nothing here touches a FUSE mount point: a `stat` of a mount whose daemon is stuck would hang
//! the very code that is meant to report it, so mounts are found through /proc/self/mountinfo.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One thread of a process, as /proc shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    pub tid: u32,
    /// `/proc/PID/task/TID/comm`: the thread's name, at most 15 bytes.
    pub comm: String,
    /// The state letter of `/proc/PID/task/TID/stat`: R, S, D (uninterruptible, which is where
    /// a thread waiting on FUSE or on a disk sits), Z, T, t, I, X.
    pub state: char,
    /// The kernel function it sleeps in (`0` or empty while running).
    pub wchan: String,
}

fn task_dir(pid: u32, tid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}"))
}

fn read_trimmed(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim_end().to_string())
}

/// The state letter from a `stat` line; the name in parentheses may itself hold spaces and
/// parentheses, so the state is found after the last `)`.
fn state_of(stat: &str) -> Option<char> {
    stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next())
}

fn describe_state(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "uninterruptible wait",
        'Z' => "zombie",
        'T' => "stopped",
        't' => "tracing stop",
        'I' => "idle",
        'X' => "dead",
        _ => "unknown",
    }
}

fn thread_ids(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

fn thread_info(pid: u32, tid: u32) -> Option<ThreadInfo> {
    let dir = task_dir(pid, tid);
    // A thread that exits between listing and reading is simply left out.
    let stat = read_trimmed(&dir.join("stat")).ok()?;
    Some(ThreadInfo {
        tid,
        comm: read_trimmed(&dir.join("comm")).unwrap_or_default(),
        state: state_of(&stat).unwrap_or('?'),
        wchan: read_trimmed(&dir.join("wchan")).unwrap_or_default(),
    })
}

/// Every thread of `pid` now (empty if the process is gone).
pub fn threads(pid: u32) -> Vec<ThreadInfo> {
    thread_ids(pid).unwrap_or_default().into_iter().filter_map(|tid| thread_info(pid, tid)).collect()
}

/// The threads of `pid` in `state` now, e.g. `'D'`: one quick snapshot. A thread may be in D
/// for a moment doing ordinary disk I/O; `threads_stuck_in` tells those apart from stuck ones.
pub fn threads_in_state(pid: u32, state: char) -> Vec<ThreadInfo> {
    threads(pid).into_iter().filter(|t| t.state == state).collect()
}

/// The threads of `pid` blocked inside FUSE now: waiting for the daemon's answer, or with FUSE
/// frames on their kernel stack. Such a wait starts interruptible (state S, wait channel
/// `request_wait_answer`), so `threads_in_state(pid, 'D')` alone misses a test thread blocked on
/// a hung mount. Threads queued in the VFS behind another thread's FUSE request (a lookup of
/// the same name waits in `d_alloc_parallel`, a second writer on the inode lock) are not
/// counted: they show no FUSE frame; `stacks` shows them.
pub fn threads_in_fuse(pid: u32) -> Vec<ThreadInfo> {
    threads(pid)
        .into_iter()
        .filter(|t| {
            t.wchan.contains("request_wait_answer")
                || t.wchan.starts_with("fuse_")
                || std::fs::read_to_string(task_dir(pid, t.tid).join("stack")).is_ok_and(|s| s.contains("] fuse_"))
        })
        .collect()
}

/// The threads of `pid` found in `state` at every look over `over` (one every 20 ms, at least
/// two looks): those waiting there for a long time, not passing through.
pub fn threads_stuck_in(pid: u32, state: char, over: Duration) -> Vec<ThreadInfo> {
    let end = Instant::now() + over;
    let mut stuck = threads_in_state(pid, state);
    loop {
        std::thread::sleep(Duration::from_millis(20).min(over));
        let now: Vec<u32> = threads_in_state(pid, state).into_iter().map(|t| t.tid).collect();
        stuck.retain(|t| now.contains(&t.tid));
        if stuck.is_empty() || Instant::now() >= end {
            return stuck;
        }
    }
}

/// The command line of `pid`, arguments joined by spaces and cut at 300 characters.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: String = raw.split(|&b| b == 0).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ");
    let text = text.trim().to_string();
    if text.chars().count() > 300 { format!("{}…", text.chars().take(300).collect::<String>()) } else { text }
}

/// A report of every thread of `pid`: name, state, wait channel and kernel stack (readable as
/// root; the report says so when it is not). For failure messages.
pub fn stacks(pid: u32) -> String {
    let mut out = String::new();
    let tids = match thread_ids(pid) {
        Ok(t) => t,
        Err(e) => return format!("process {pid}: not readable under /proc ({e}); it has exited?\n"),
    };
    let infos: Vec<ThreadInfo> = tids.iter().filter_map(|&tid| thread_info(pid, tid)).collect();
    let in_d: Vec<String> = infos.iter().filter(|t| t.state == 'D').map(|t| format!("{} {}", t.tid, t.comm)).collect();
    let _ = writeln!(out, "process {pid} `{}`: {} threads", cmdline(pid), infos.len());
    if !in_d.is_empty() {
        let _ = writeln!(out, "  in uninterruptible wait (D): {}", in_d.join(", "));
    }
    for t in &infos {
        let _ = writeln!(
            out,
            "  thread {} {:?}: {} ({}), wchan {}",
            t.tid,
            t.comm,
            t.state,
            describe_state(t.state),
            if t.wchan.is_empty() || t.wchan == "0" { "-" } else { &t.wchan }
        );
        match std::fs::read_to_string(task_dir(pid, t.tid).join("stack")) {
            Ok(stack) if stack.trim().is_empty() => {
                let _ = writeln!(out, "      (empty kernel stack: running in user space)");
            }
            Ok(stack) => {
                for line in stack.lines() {
                    let _ = writeln!(out, "      {}", line.trim());
                }
            }
            Err(e) => {
                let _ = writeln!(out, "      kernel stack unreadable: {e} (needs root and CONFIG_STACKTRACE)");
            }
        }
    }
    out
}

/// Undoes the octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = field.get(i + 1..i + 4)
            && oct.bytes().all(|d| (b'0'..=b'7').contains(&d))
            && let Ok(b) = u8::from_str_radix(oct, 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as mountinfo spells it: the parent resolved (through symlinks such as a /tmp
/// that points elsewhere), the last component kept, so that the mount point itself, which may
/// be a hung FUSE mount, is never looked up.
fn mount_path(mountpoint: &Path) -> PathBuf {
    match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| mountpoint.to_path_buf())
        }
        _ => mountpoint.to_path_buf(),
    }
}

/// The FUSE connection number of the file system mounted at `mountpoint` (the topmost one if
/// several are stacked there): the kernel's device number of the mount, which is what names its
/// directory under /sys/fs/fuse/connections. None if nothing FUSE is mounted there.
pub fn fuse_connection(mountpoint: &Path) -> Option<u64> {
    let want = mount_path(mountpoint);
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options... - fstype source superoptions
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(mp)) = (fields.get(2), fields.get(4)) else { continue };
        let fstype = line.split(" - ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("");
        if !fstype.starts_with("fuse") || Path::new(&unescape_mountinfo(mp)) != want {
            continue;
        }
        let Some((major, minor)) = dev.split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else { continue };
        // The kernel's own dev_t encoding (MKDEV: 12 bits of major above 20 of minor); FUSE
        // mounts have major 0, so this is the minor number.
        found = Some((major << 20) | minor);
    }
    found
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Mounts the FUSE control file system if nobody has (systemd usually does; containers often
/// do not). Returns what it did, for the report.
fn ensure_fusectl() -> Result<&'static str> {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().any(|l| l.split(" - ").nth(1).is_some_and(|r| r.starts_with("fusectl "))))
        .unwrap_or(false);
    if mounted {
        return Ok("fusectl already mounted");
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "fusectl", "fusectl", FUSECTL])
        .output()
        .context("running mount -t fusectl")?;
    if !status.status.success() {
        bail!("mount -t fusectl {FUSECTL} failed: {}", String::from_utf8_lossy(&status.stderr).trim());
    }
    Ok("mounted fusectl")
}

/// Aborts the FUSE connection of the mount at `mountpoint` (writes `1` to its `abort` file):
/// every request waiting on the daemon fails at once with ENOTCONN, so threads blocked in it
/// return. Returns a line saying what was done.
pub fn abort_fuse(mountpoint: &Path) -> Result<String> {
    let Some(conn) = fuse_connection(mountpoint) else {
        return Ok(format!("{}: no FUSE mount there; nothing to abort", mountpoint.display()));
    };
    let how = ensure_fusectl()?;
    let abort = Path::new(FUSECTL).join(conn.to_string()).join("abort");
    std::fs::write(&abort, "1").with_context(|| format!("writing 1 to {}", abort.display()))?;
    Ok(format!("{}: aborted FUSE connection {conn} ({how})", mountpoint.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_read_after_the_last_parenthesis() {
        assert_eq!(state_of("42 (a) b) c) D 1 2 3"), Some('D'));
        assert_eq!(state_of("7 (tokio-runtime-w) S 1"), Some('S'));
        assert_eq!(state_of("garbage"), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/odd\04"), r"/odd\04");
    }

    #[test]
    fn this_process_is_described_thread_by_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("procfs-probe".into())
            .spawn(move || {
                let _ = rx.recv();
            })
            .expect("spawn");
        let pid = std::process::id();
        // A new thread names itself once it runs, and sleeps once it reaches `recv`: poll.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = threads(pid);
            if all.iter().any(|t| t.comm == "procfs-probe" && t.state == 'S') {
                break;
            }
            assert!(Instant::now() < deadline, "the probe thread never showed up asleep: {all:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = stacks(pid);
        assert!(report.contains("procfs-probe"), "{report}");
        assert!(report.contains(&format!("process {pid}")), "{report}");
        assert!(threads_stuck_in(pid, 'S', Duration::from_millis(60)).iter().any(|t| t.comm == "procfs-probe"));
        assert!(threads_in_state(pid, 'Z').is_empty());
        drop(tx);
        t.join().expect("probe thread");
        assert!(stacks(u32::MAX).contains("not readable"));
    }

    #[test]
    fn a_directory_that_is_no_mount_has_no_fuse_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(fuse_connection(dir.path()), None);
        assert!(abort_fuse(dir.path()).expect("nothing to do").contains("nothing to abort"));
    }
}
