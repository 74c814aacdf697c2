//! Harness pieces for fault injection: a lossy, delaying, reordering UDP proxy
//! (`LossyProxy`), a watchdog that turns a hung test into a failure carrying the kernel stacks of
//! every thread involved (`with_watchdog`), readers of thread states under /proc for asserting
//! that nothing is stuck, and small size-limited file systems for full-disk tests (`TmpFs`).
//!
//! Everything here is bounded: no call waits without a deadline, so a fault that wedges a
//! process shows up as a failed test with evidence, never as a CI job that hangs.

mod netns;
mod procfs;
mod proxy;
mod tmpfs;
mod watchdog;

pub use netns::{Host, TestNetwork};
pub use procfs::{
    ThreadInfo, abort_fuse, fuse_connection, stacks, threads, threads_in_fuse, threads_in_state, threads_stuck_in,
};
pub use proxy::{DirStats, Direction, Impairment, LossyProxy};
pub use tmpfs::TmpFs;
pub use watchdog::{BODY_THREAD, Watchdog, Watched, with_watchdog, with_watchdog_async};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VenusMount, Vice};

    /// The placement and restart pieces on real processes: vice's data and venus's cache on a
    /// tmpfs, and a kill / wait / start cycle as a restart storm does it.
    #[test]
    fn vice_and_venus_run_on_a_tmpfs_and_vice_restarts_in_steps() {
        if !crate::fuse_available() {
            return;
        }
        // Declared first, so it is dropped after the processes using it.
        let disk = TmpFs::new(64 << 20).expect("mount a tmpfs (run as root)");
        let mut vice = Vice::start_in("placed.test", disk.path()).expect("start vice on the tmpfs");
        assert!(vice.data().starts_with(disk.path()), "{} is not on the tmpfs", vice.data().display());
        assert!(vice.data().join("cell.toml").exists());
        let cache = disk.path().join("venus-cache");
        let m = VenusMount::start_with_cache(&vice.cell_file_path(), "placed.test", &cache, &[]).expect("mount");
        assert_eq!(m.cache(), cache);
        assert!(cache.join("venus.sock").exists(), "venus's control socket is not in the given cache");
        std::fs::write(m.path("f"), b"on a small disk").expect("write through the mount");
        assert_eq!(std::fs::read(m.path("f")).expect("read back"), b"on a small disk");

        let first = vice.pid().expect("vice runs");
        let watched = Watched::vice(&vice);
        assert_eq!(watched.pid(), Some(first));
        assert!(vice.is_running());
        assert!(vice.spawn_again().is_err(), "a second vice on one data directory was started");
        vice.kill9();
        assert!(!vice.is_running());
        assert_eq!(watched.pid(), None, "the watched pid outlived the kill");
        vice.spawn_again_nowait().expect("start again");
        vice.wait_ready().expect("ready again");
        assert!(vice.is_running());
        let second = vice.pid().expect("vice runs again");
        assert_ne!(second, first);
        assert_eq!(watched.pid(), Some(second), "the watched pid follows the restart");
        assert!(threads_stuck_in(second, 'D', std::time::Duration::from_millis(100)).is_empty());
        let vm = Watched::venus(&m);
        assert_eq!(vm.pid(), m.pid());
    }

    /// QUIC through a lossy, slow, reordering link still carries a mount's traffic, and the
    /// counters show the proxy did impair it.
    #[test]
    fn a_mount_works_through_a_lossy_delaying_proxy() {
        use std::time::Duration;
        if !crate::fuse_available() {
            return;
        }
        let vice = Vice::start("lossy.test").expect("start vice");
        let bad = Impairment { loss: 0.05, delay: Duration::from_millis(10), jitter: Duration::from_millis(5) };
        let proxy = LossyProxy::start_with(&vice.addr, 11, bad, bad).expect("proxy");
        let dir = tempfile::tempdir().expect("tempdir");
        let cell_file = proxy.cell_file(&vice, dir.path()).expect("proxied cell file");
        let m = VenusMount::start_with_cell_file(&cell_file, "lossy.test", &[]).expect("mount through the proxy");
        let data = crate::Noise::bytes(5, 256 << 10);
        let watched = [Watched::vice(&vice), Watched::venus(&m)];
        let path = m.path("through-loss");
        let back = with_watchdog(Duration::from_secs(120), &watched, move || {
            std::fs::write(&path, &data).expect("write through the lossy link");
            (std::fs::read(&path).expect("read back"), data)
        });
        assert!(back.0 == back.1, "the file came back different");
        let (up, down) = (proxy.stats(Direction::ToServer), proxy.stats(Direction::ToClient));
        assert!(up.forwarded > 0 && down.forwarded > 0, "{up:?} {down:?}");
        assert!(up.lost + down.lost > 0, "5 % loss lost nothing: {up:?} {down:?}");
        assert_eq!(proxy.impairment(Direction::ToClient), bad);
    }
}
