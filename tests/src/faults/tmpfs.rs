//! `TmpFs`: a size-limited file system of its own, for tests of a full disk (venus's cache,
//! vice's data directory) that must not fill the machine's real disk. A tmpfs is mounted on a
//! fresh temporary directory and lazily unmounted on drop, so a file a stuck process still
//! holds open does not keep it mounted (the memory goes when the last file closes).
//!
//! Mounting needs root (CAP_SYS_ADMIN), which the test machines have; elsewhere `new` fails
//! saying so.

use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// A mounted tmpfs of a fixed size; unmounted when dropped.
pub struct TmpFs {
    path: PathBuf,
    size: u64,
    ballasts: AtomicU32,
    /// Dropped after the unmount in `Drop`: removes the (then empty) mount point.
    _dir: tempfile::TempDir,
}

fn cstring(path: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).with_context(|| format!("{} holds a NUL", path.display()))
}

impl TmpFs {
    /// A tmpfs of `size` bytes (rounded up to pages by the kernel).
    pub fn new(size: u64) -> Result<TmpFs> {
        Self::with_options(size, "")
    }

    /// As `new`, with more mount options, comma-separated: `nr_inodes=64` to run out of
    /// inodes rather than bytes, say.
    pub fn with_options(size: u64, options: &str) -> Result<TmpFs> {
        if size == 0 {
            // size=0 means "no limit" to tmpfs: not what a test of a full disk wants.
            bail!("a TmpFs needs a size above zero");
        }
        let dir = tempfile::Builder::new().prefix("tmpfs-").tempdir()?;
        let path = dir.path().to_path_buf();
        let data = if options.is_empty() { format!("size={size}") } else { format!("size={size},{options}") };
        let (target, data_c) = (cstring(&path)?, std::ffi::CString::new(data.clone())?);
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data_c.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let hint = match err.raw_os_error() {
                Some(libc::EPERM) => " (mounting needs root, or CAP_SYS_ADMIN in this namespace)",
                Some(libc::EINVAL) => " (a mount option tmpfs does not know?)",
                _ => "",
            };
            bail!("mount -t tmpfs -o {data} tmpfs {} failed: {err}{hint}", path.display());
        }
        Ok(TmpFs { path, size, ballasts: AtomicU32::new(0), _dir: dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size asked for, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes still free (what an unprivileged writer could use).
    pub fn free_bytes(&self) -> Result<u64> {
        let p = cstring(&self.path)?;
        // SAFETY: statvfs fills the zeroed struct we pass; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error()).context("statvfs of the tmpfs");
        }
        Ok(st.f_bavail * st.f_frsize)
    }

    /// Fills the file system with a ballast file until at most `leave` bytes are free (0: full)
    /// and returns its path; remove it to give the space back.
    pub fn fill(&self, leave: u64) -> Result<PathBuf> {
        let n = self.ballasts.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("ballast-{n}"));
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0xA5u8; 1 << 20];
        loop {
            let free = self.free_bytes()?;
            if free <= leave {
                break;
            }
            let want = usize::try_from(free - leave).unwrap_or(usize::MAX).min(chunk.len());
            match f.write_all(&chunk[..want]) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
            }
        }
        Ok(path)
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        if let Ok(p) = cstring(&self.path) {
            // SAFETY: a valid NUL-terminated path. MNT_DETACH: a file still open on it (a
            // process the test failed to stop) must not keep it mounted or fail the unmount.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a tmpfs is mounted at `path`, by /proc/self/mountinfo.
    fn tmpfs_at(path: &Path) -> bool {
        let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4).is_some_and(|mp| Path::new(mp) == want) && l.contains(" - tmpfs ")
        })
    }

    #[test]
    fn mounts_a_size_limited_tmpfs_and_unmounts_it_on_drop_even_with_a_file_open() {
        let t = TmpFs::new(1 << 20).expect("mount a tmpfs (run as root)");
        assert!(tmpfs_at(t.path()), "{} is no tmpfs mount", t.path().display());
        let total = t.free_bytes().expect("statvfs");
        assert!(total <= 1 << 20 && total > 0, "a 1 MiB tmpfs has {total} bytes free");
        let big = t.path().join("big");
        let mut f = std::fs::File::create(&big).expect("create");
        let err = f.write_all(&vec![1u8; 2 << 20]).expect_err("2 MiB fit in a 1 MiB tmpfs");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        let path = t.path().to_path_buf();
        // The open `f` must not keep it mounted.
        drop(t);
        assert!(!tmpfs_at(&path), "{} is still mounted after drop", path.display());
        assert!(!path.exists(), "the mount point was not removed");
        drop(f);
    }

    #[test]
    fn fill_leaves_what_was_asked_and_removing_the_ballast_frees_it() {
        let t = TmpFs::new(4 << 20).expect("mount a tmpfs (run as root)");
        let leave = 64 << 10;
        let ballast = t.fill(leave).expect("fill");
        let free = t.free_bytes().expect("statvfs");
        assert!(free <= leave, "{free} bytes free after filling to {leave}");
        let err = std::fs::write(t.path().join("more"), vec![0u8; 1 << 20]).expect_err("1 MiB more fit");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        std::fs::remove_file(ballast).expect("remove the ballast");
        std::fs::remove_file(t.path().join("more")).expect("remove the partial file");
        assert!(t.free_bytes().expect("statvfs") > 3 << 20, "removing the ballast freed nothing");
        assert_eq!(t.size(), 4 << 20);
    }

    #[test]
    fn a_bad_option_fails_with_a_clear_message() {
        let err = TmpFs::with_options(1 << 20, "no_such_option=1").err().expect("a bad option mounted");
        assert!(err.to_string().contains("mount -t tmpfs"), "{err:#}");
        assert!(TmpFs::new(0).is_err());
    }
}
