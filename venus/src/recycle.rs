//! Container files are reused, not deleted and created again.
//!
//! A container that is no longer needed (its file was removed, evicted, flushed or replaced)
//! and that nothing has open is moved to `CACHE/free/` and emptied; the next container venus
//! makes (a new file, a fetch) is one of those, renamed into place. On ext4 without a journal,
//! allocating an inode searches past every inode of its group freed in the last few seconds
//! (`recently_deleted`): copying 2,000 files into a volume right after removing 2,000 spent
//! ~45 % of venus's CPU there. A reused container costs a rename and a truncate, and no inode
//! is allocated or freed.
//!
//! Crash safety: a container is renamed away before it is emptied, so a crash leaves either
//! the whole container where it was, or a free file that is emptied again at the next start.
//!
//! A container that may still be read is never reused: its contents must stay as they were, so
//! it is deleted, as it always was. Venus knows of its own readers (open handles, unstored
//! changes); the kernel may hold one more that venus is not told about: a memory mapping made
//! through a passthrough open keeps the container itself open after the file's RELEASE (the
//! loader maps a binary and closes it). So after moving a container away from its name, venus
//! asks for a write lease on it, which the kernel grants only to the one and only opener of a
//! file: refused, the container is deleted instead of emptied.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many empty containers are kept for reuse; beyond that, retired ones are deleted.
const MAX_FREE: usize = 4096;

#[derive(Debug)]
pub struct Recycler {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl Recycler {
    /// Opens the pool in `dir` (created if missing), emptying what a crash may have left full.
    pub fn open(dir: &Path) -> std::io::Result<Recycler> {
        std::fs::create_dir_all(dir)?;
        let mut free = Vec::new();
        let mut next = 0u64;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let n = path.file_name().and_then(|n| n.to_str()).and_then(|n| u64::from_str_radix(n, 16).ok());
            match n {
                Some(n) if free.len() < MAX_FREE && truncate(&path).is_ok() => {
                    next = next.max(n + 1);
                    free.push(path);
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Recycler { dir: dir.to_path_buf(), free: Mutex::new(free), next: AtomicU64::new(next) })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of empty containers waiting for reuse.
    pub fn len(&self) -> usize {
        self.pool().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts an empty file at `dst` (replacing what is there): a reused container if one is
    /// free, otherwise a new file.
    pub fn make(&self, dst: &Path) -> std::io::Result<()> {
        loop {
            let Some(free) = self.pool().pop() else { break };
            if std::fs::rename(&free, dst).is_ok() {
                // A new file's times are now, not when its container was emptied.
                let _ = touch(dst);
                return Ok(());
            }
            // Gone from under us (someone cleaned the directory): try the next, or create.
            let _ = std::fs::remove_file(&free);
        }
        std::fs::File::create(dst).map(drop)
    }

    /// Disposes of a container no one needs any more. `in_use` says whether something may
    /// still read it (an open file handle; a store or reintegration of its unstored changes):
    /// then it is deleted, so the reader keeps its contents.
    pub fn retire(&self, path: &Path, in_use: bool) {
        if in_use || self.len() >= MAX_FREE {
            let _ = std::fs::remove_file(path);
            return;
        }
        let free = self.dir.join(format!("{:016x}", self.next.fetch_add(1, Ordering::Relaxed)));
        if std::fs::rename(path, &free).is_err() {
            // Nothing there (a directory never cached, a container already gone), or it
            // cannot move: delete it as before.
            let _ = std::fs::remove_file(path);
            return;
        }
        if !opened_elsewhere(&free) && truncate(&free).is_ok() {
            self.pool().push(free);
        } else {
            let _ = std::fs::remove_file(&free);
        }
    }
}

/// `fcntl(2)`'s F_SETSIG (10 on every Linux architecture; the libc crate does not name it).
const F_SETSIG: libc::c_int = 10;

/// Whether anything besides this call has `path` open: a descriptor, or a mapping (which holds
/// the file open). A write lease is granted only when its requester is the file's sole opener;
/// it is given back at once. When in doubt (no leases on this file system, say), yes.
fn opened_elsewhere(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return true };
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        // Should someone open the file in the instant the lease is held, the kernel signals
        // the holder: SIGURG, whose default is to ignore it, rather than SIGIO, whose default
        // would end venus. Their open waits until the lease is given back.
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
            return true;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK as libc::c_int) != 0 {
            return true;
        }
        libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK as libc::c_int);
    }
    false
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Sets a file's access and modification times to now.
fn touch(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; a null times pointer means now.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `truncate(2)` to zero by path: one system call, where opening the file to truncate it
/// takes three.
fn truncate(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; truncate has no memory effects.
    if unsafe { libc::truncate(c.as_ptr(), 0) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_container_is_emptied_and_reused_with_its_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let pool = Recycler::open(&dir.path().join("free")).unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"old contents").unwrap();
        let ino = std::fs::metadata(&a).unwrap().ino();
        pool.retire(&a, false);
        assert!(!a.exists());
        assert_eq!(pool.len(), 1);
        let b = dir.path().join("b");
        pool.make(&b).unwrap();
        let m = std::fs::metadata(&b).unwrap();
        assert_eq!((m.ino(), m.len()), (ino, 0), "the same inode, empty");
        assert!(pool.is_empty());
        // With nothing free, a new file is made.
        let c = dir.path().join("c");
        pool.make(&c).unwrap();
        assert_eq!(std::fs::metadata(&c).unwrap().len(), 0);
    }

    #[test]
    fn an_open_container_is_deleted_and_its_reader_keeps_the_contents() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let pool = Recycler::open(&dir.path().join("free")).unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"still being read").unwrap();
        let mut reader = std::fs::File::open(&a).unwrap();
        pool.retire(&a, true);
        assert!(!a.exists());
        assert!(pool.is_empty());
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        assert_eq!(s, "still being read");
    }

    #[test]
    fn a_free_file_a_crash_left_full_is_emptied_at_start_and_strays_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join("free");
        std::fs::create_dir_all(&free).unwrap();
        std::fs::write(free.join("000000000000002a"), b"renamed, never truncated").unwrap();
        std::fs::write(free.join("not-ours"), b"x").unwrap();
        let pool = Recycler::open(&free).unwrap();
        assert_eq!(pool.len(), 1);
        assert!(!free.join("not-ours").exists());
        assert_eq!(std::fs::metadata(free.join("000000000000002a")).unwrap().len(), 0);
        // New names do not collide with the ones found.
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        pool.retire(&a, false);
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn a_container_someone_else_holds_open_or_mapped_is_deleted_not_reused() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let pool = Recycler::open(&dir.path().join("free")).unwrap();
        // Open elsewhere, though venus believes it closed.
        let a = dir.path().join("a");
        std::fs::write(&a, b"held by a descriptor").unwrap();
        let mut held = std::fs::File::open(&a).unwrap();
        pool.retire(&a, false);
        assert!(pool.is_empty(), "not kept for reuse");
        let mut s = String::new();
        held.read_to_string(&mut s).unwrap();
        assert_eq!(s, "held by a descriptor");
        // Mapped, its descriptor closed (as the loader does).
        let b = dir.path().join("b");
        let contents = b"held by a mapping".to_vec();
        std::fs::write(&b, &contents).unwrap();
        let f = std::fs::File::open(&b).unwrap();
        // SAFETY: a private read-only mapping of a file we just wrote, unmapped below.
        let map = unsafe {
            use std::os::fd::AsRawFd;
            libc::mmap(std::ptr::null_mut(), contents.len(), libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0)
        };
        assert_ne!(map, libc::MAP_FAILED);
        drop(f);
        pool.retire(&b, false);
        assert!(pool.is_empty(), "not kept for reuse");
        // SAFETY: the mapping is `contents.len()` bytes long and still mapped.
        let seen = unsafe { std::slice::from_raw_parts(map as *const u8, contents.len()) }.to_vec();
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(map, contents.len()) };
        assert_eq!(seen, contents, "the mapping still reads its file");
        // Alone again, a container is reused.
        let c = dir.path().join("c");
        std::fs::write(&c, b"nobody holds this").unwrap();
        pool.retire(&c, false);
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn retiring_what_is_not_there_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Recycler::open(&dir.path().join("free")).unwrap();
        pool.retire(&dir.path().join("never"), false);
        assert!(pool.is_empty());
    }
}
