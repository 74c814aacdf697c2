//! The cache's disk: how much of it venus may use, and the reserve that keeps venus's databases
//! able to commit when the disk fills up.
//!
//! Venus cannot stop applications from filling its disk: writes through kernel passthrough go
//! straight to container files. When they do, the application gets `ENOSPC` from the kernel,
//! which is right; but then venus's own databases could not commit either (SQLite needs room
//! even to record that a file is dirty or to log an offline change), and every later call failed
//! with `EIO` until a restart. So venus holds a *reserve*: a file of real, allocated blocks in
//! the cache directory. When a commit finds the disk full, the reserve is released and clean
//! containers are evicted (the space venus may take back without losing anything), and the
//! commit is tried again; the reserve is made again once the disk has room. Only when dirty data
//! alone fills the disk does a call fail, with `ENOSPC`.
//!
//! The byte limit (`--cache-size`) is also fitted to the file system at start: a limit larger
//! than the disk could ever hold is clamped, with a warning, so eviction starts before the disk
//! is full rather than never.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The reserve's share of the file system, and its bounds: large enough for the databases to
/// record a burst of changes (a few MiB of index rows and log records), small enough not to
/// matter on a laptop's disk, and never more than an eighth of a tiny one.
const RESERVE_SHARE: u64 = 32;
const RESERVE_MIN: u64 = 1 << 20;
const RESERVE_MAX: u64 = 64 << 20;
/// Room kept free beyond the containers' limit for the databases and temporary files.
const DB_ALLOWANCE_SHARE: u64 = 16;

/// Free space and size of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub free: u64,
    pub total: u64,
}

/// The file system holding `path`.
pub fn room(path: &Path) -> std::io::Result<Room> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs(3) fills the struct we pass for a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok(Room { free: st.f_bavail as u64 * unit, total: st.f_blocks as u64 * unit })
}

/// Whether an I/O error means the disk (or the user's quota on it) is full.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub struct CacheDisk {
    dir: PathBuf,
    reserve: PathBuf,
    reserve_size: u64,
    /// The reserve file is in place.
    held: AtomicBool,
}

impl CacheDisk {
    /// The disk of the cache in `dir`; makes the reserve if there is room for it.
    pub fn open(dir: &Path) -> std::io::Result<CacheDisk> {
        let total = room(dir)?.total;
        let reserve_size = (total / RESERVE_SHARE).clamp(RESERVE_MIN, RESERVE_MAX).min(total / 8);
        let disk = CacheDisk {
            dir: dir.to_path_buf(),
            reserve: dir.join("reserve"),
            reserve_size,
            held: AtomicBool::new(false),
        };
        let held = std::fs::metadata(&disk.reserve).is_ok_and(|m| m.len() == reserve_size);
        disk.held.store(held, Ordering::Relaxed);
        if !held {
            disk.restore();
        }
        Ok(disk)
    }

    pub fn reserve_size(&self) -> u64 {
        self.reserve_size
    }

    pub fn holds_reserve(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Free bytes on the disk now.
    pub fn free(&self) -> u64 {
        room(&self.dir).map_or(0, |r| r.free)
    }

    /// The most the containers may take: what they hold now plus what is free, less the
    /// reserve (if not yet made) and room for the databases.
    pub fn fit(&self, requested: u64, containers: u64) -> u64 {
        let Ok(r) = room(&self.dir) else { return requested };
        let reserve_missing = if self.holds_reserve() { 0 } else { self.reserve_size };
        let allowance = r.total / DB_ALLOWANCE_SHARE;
        let most = (containers + r.free).saturating_sub(reserve_missing + allowance);
        requested.min(most)
    }

    /// Gives the reserve's blocks back to the disk; says whether there was one.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::Relaxed) {
            return false;
        }
        match std::fs::remove_file(&self.reserve) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.reserve_size,
                    "the cache disk is full: released venus's reserve so its databases can commit"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the cache disk's reserve");
                false
            }
        }
    }

    /// Makes the reserve again if the disk has room for it and some to spare.
    pub fn restore(&self) {
        if self.holds_reserve() || self.free() < 2 * self.reserve_size {
            return;
        }
        match allocate(&self.reserve, self.reserve_size) {
            Ok(()) => self.held.store(true, Ordering::Relaxed),
            Err(e) => {
                let _ = std::fs::remove_file(&self.reserve);
                tracing::info!(error = %e, "cannot make the cache disk's reserve yet");
            }
        }
    }
}

/// A file of `size` bytes whose blocks are really allocated (not a sparse file).
fn allocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tmp = path.with_extension("new");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
    let len = libc::off_t::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: a descriptor we own, a valid range.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // Not synced: the reserve is space, not data; after a crash it is simply made again.
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_real_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let disk = CacheDisk::open(dir.path()).unwrap();
        assert!(disk.holds_reserve());
        let meta = std::fs::metadata(dir.path().join("reserve")).unwrap();
        assert_eq!(meta.len(), disk.reserve_size());
        // Allocated, not sparse: its blocks count.
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= disk.reserve_size());
        assert!(disk.release());
        assert!(!disk.release(), "released once");
        assert!(!dir.path().join("reserve").exists());
        disk.restore();
        assert!(disk.holds_reserve());
        // Reopening finds it in place.
        assert!(CacheDisk::open(dir.path()).unwrap().holds_reserve());
    }

    #[test]
    fn a_limit_larger_than_the_disk_is_fitted_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk = CacheDisk::open(dir.path()).unwrap();
        let r = room(dir.path()).unwrap();
        assert_eq!(disk.fit(1 << 20, 0), 1 << 20, "a small limit stands");
        let fitted = disk.fit(u64::MAX, 0);
        assert!(fitted < r.free, "{fitted} < {}", r.free);
        assert!(fitted > 0);
    }
}
