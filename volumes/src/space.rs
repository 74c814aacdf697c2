//! Free space on the store's disk: a full disk must never stop clients.
//!
//! SQLite needs disk space even to commit a DELETE (the WAL frames of the pages it changes), so
//! a disk filled to the last block refuses the very removals that would free it. The guard keeps
//! that from happening in three ways:
//!
//! - **A low-water mark.** Changes that grow what the server stores (new objects, stores that
//!   grow a file, uploads by their declared size) are refused with [`RemoteError::NoSpace`]
//!   once the room left would fall below [`LOW_WATER`]; removals, renames and setattrs still
//!   run, since they free space or cost next to nothing ([`cost`]).
//! - **A reserve file** (`store/reserve`, [`RESERVE`] bytes allocated for real with
//!   `posix_fallocate`, so it holds blocks even on tmpfs). When a space-freeing transaction
//!   still fails for space (another process filled the disk, or a race past the mark), the
//!   reserve is deleted and the transaction retried once ([`SpaceGuard::retry_freeing`]). The
//!   reserve is never room for growth: while it is missing, growth needs its size on top of the
//!   mark, and it is allocated again as soon as that much is free.
//! - **Uploads in flight are counted**: an admitted upload holds its declared bytes until they
//!   are written, so two uploads cannot both be admitted into the same last megabytes.
//!
//! Free space is measured with `statvfs` (`f_bavail`: the blocks an unprivileged writer may
//! use; vice may run as root, and keeping out of root's reserved blocks leaves them to the rest
//! of the system). The source is a trait ([`FreeSpace`]), so tests simulate a full disk. A
//! measurement that fails lets the change through (it is logged): a broken `statvfs` must not
//! stop clients either, and SQLite's own "disk full" is still answered `NoSpace`.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use proto::{Mutation, RemoteError};

use crate::error::{Result, StoreError};

const MIB: u64 = 1 << 20;

/// Room below which growth is refused (the reserve not counted). It must absorb what admitted
/// work writes beyond its declared bytes before the next measurement: SQLite's WAL between
/// checkpoints (1,000 pages, 4 MiB, more while a reader holds a snapshot), the `-shm` index,
/// the rows of the batches in flight. Four checkpoints' worth.
pub const LOW_WATER: u64 = 16 * MIB;

/// The reserve file's size: what space-freeing work needs when the disk is at zero. A
/// removal batch of thousands of records changes a few thousand pages (WAL frames of 4 KiB
/// each, written twice when a checkpoint runs), and the sweep that follows deletes chunk rows
/// and may copy a pack's live chunks before deleting it. 32 MiB covers that several times over
/// and is still small beside any real disk (on the tests' 96 MiB tmpfs it is a third).
pub const RESERVE: u64 = 32 * MIB;

/// The reserve's file name in the store's directory.
pub const RESERVE_FILE: &str = "reserve";

/// Where free space is measured: bytes available for new data on the store's file system.
pub trait FreeSpace: Send + Sync {
    fn available(&self) -> io::Result<u64>;
}

/// A closure is a source: tests simulate a disk with an atomic counter.
impl<F: Fn() -> io::Result<u64> + Send + Sync> FreeSpace for F {
    fn available(&self) -> io::Result<u64> {
        self()
    }
}

/// The real source: `statvfs` of a path on the file system.
#[derive(Debug)]
pub struct Statvfs(pub PathBuf);

impl FreeSpace for Statvfs {
    fn available(&self) -> io::Result<u64> {
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
        // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// The sizes a guard works with; [`Limits::default`] are [`LOW_WATER`] and [`RESERVE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub low_water: u64,
    pub reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { low_water: LOW_WATER, reserve: RESERVE }
    }
}

/// What a record costs in space, which decides whether it may run below the low-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Adds objects, names or data: refused below the mark.
    Grows,
    /// Frees space (a removal, a rename over an existing name): always runs.
    Frees,
    /// Changes a row in place: always runs.
    Negligible,
    /// A store: it grows what is stored only if the file gets larger (its chunks were uploaded,
    /// and admitted, before); a truncation frees space. Decided once the file is loaded.
    BySize,
}

/// The cost of one mutation. Exhaustive on purpose: a new mutation kind must say what it costs.
pub fn cost(m: &Mutation) -> Cost {
    match m {
        Mutation::Create { .. }
        | Mutation::MakeDir { .. }
        | Mutation::Symlink { .. }
        | Mutation::MakeMountPoint { .. }
        | Mutation::MakeNode { .. }
        | Mutation::Link { .. } => Cost::Grows,
        Mutation::Store { .. } => Cost::BySize,
        Mutation::Remove { .. } | Mutation::RemoveDir { .. } => Cost::Frees,
        Mutation::Rename { replaced: Some(_), .. } => Cost::Frees,
        Mutation::Rename { replaced: None, .. } | Mutation::SetAttr { .. } => Cost::Negligible,
    }
}

/// One measurement: how much a change may still grow the store.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes above the low-water mark (negative: below it); `None` when the measurement
    /// failed (growth allowed).
    headroom: Option<i128>,
}

impl Budget {
    /// A budget that allows everything (no measurement, as in tests of other things).
    pub fn unlimited() -> Budget {
        Budget { headroom: None }
    }

    /// The budget another server measured (a replicated volume's leader, for its log entry).
    pub fn from_headroom(headroom: Option<i128>) -> Budget {
        Budget { headroom }
    }

    /// Whether `bytes` more (0: a record's own rows) may be written.
    pub fn allows(&self, bytes: u64) -> bool {
        self.headroom.is_none_or(|h| h >= i128::from(bytes))
    }

    /// Bytes above the low-water mark (negative: below it); `None` if it could not be measured.
    pub fn headroom(&self) -> Option<i128> {
        self.headroom
    }
}

/// The free-space guard of one store. See the module note.
pub struct SpaceGuard {
    source: Box<dyn FreeSpace>,
    limits: Limits,
    reserve_path: PathBuf,
    /// Whether the reserve file is allocated. The lock also makes an upload's admission (check,
    /// then count it in flight) one step.
    held: Mutex<bool>,
    /// Bytes admitted uploads have yet to write.
    in_flight: AtomicU64,
    /// Something was freed (a removal, a store) since the last reclaim under pressure: the
    /// sweep may give space back. Starts set, so a server started on a full disk tries once.
    freed: AtomicBool,
}

impl std::fmt::Debug for SpaceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpaceGuard({}, {:?})", self.reserve_path.display(), self.limits)
    }
}

impl SpaceGuard {
    /// A guard whose reserve file is `dir/reserve`, measuring `dir`'s file system.
    pub fn new(dir: &Path) -> SpaceGuard {
        SpaceGuard::with(dir, Box::new(Statvfs(dir.to_path_buf())), Limits::default())
    }

    /// A guard with its own source and sizes. The reserve is allocated now if there is room for
    /// it (a server started on a full disk runs without it until space comes back).
    pub fn with(dir: &Path, source: Box<dyn FreeSpace>, limits: Limits) -> SpaceGuard {
        let reserve_path = dir.join(RESERVE_FILE);
        let held = reserve_holds(&reserve_path, limits.reserve);
        let guard = SpaceGuard {
            source,
            limits,
            reserve_path,
            held: Mutex::new(held),
            in_flight: AtomicU64::new(0),
            freed: AtomicBool::new(true),
        };
        if !held {
            // A partial file (a crash while allocating it) gives its blocks back first.
            let _ = std::fs::remove_file(&guard.reserve_path);
            guard.budget();
            if !guard.reserve_held() {
                tracing::warn!(path = %guard.reserve_path.display(), "not enough free space for the reserve file");
            }
        }
        guard
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn reserve_path(&self) -> &Path {
        &self.reserve_path
    }

    pub fn reserve_held(&self) -> bool {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // A panic while holding it leaves a plain flag behind: safe to reuse.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Measures, allocating the reserve again if it is missing and there is room for it.
    pub fn budget(&self) -> Budget {
        let mut held = self.lock();
        self.budget_locked(&mut held, true)
    }

    /// Measures only: one `statvfs`, cheap enough for an async thread (allocating the reserve
    /// is left to [`SpaceGuard::budget`], on a blocking one).
    pub fn measure(&self) -> Budget {
        let mut held = self.lock();
        self.budget_locked(&mut held, false)
    }

    fn budget_locked(&self, held: &mut bool, allocate_reserve: bool) -> Budget {
        let free = match self.source.available() {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure free space; not refusing anything for it");
                return Budget::unlimited();
            }
        };
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let missing = if *held { 0 } else { self.limits.reserve };
        let headroom =
            i128::from(free) - i128::from(missing) - i128::from(in_flight) - i128::from(self.limits.low_water);
        if allocate_reserve && !*held && headroom > 0 {
            // Room for the reserve on top of the mark: take it back before anything else grows.
            match allocate(&self.reserve_path, self.limits.reserve) {
                Ok(()) => {
                    *held = true;
                    tracing::info!(path = %self.reserve_path.display(), bytes = self.limits.reserve, "reserve file allocated");
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&self.reserve_path);
                    tracing::warn!(error = %e, "could not allocate the reserve file");
                }
            }
        }
        Budget { headroom: Some(headroom) }
    }

    /// Admits an upload of `bytes` (its declared size) if that leaves the low-water mark
    /// intact; the bytes count as in flight until the [`Admission`] says they are written.
    pub fn admit(&self, bytes: u64) -> Option<Admission<'_>> {
        let mut held = self.lock();
        if !self.budget_locked(&mut held, true).allows(bytes) {
            return None;
        }
        self.in_flight.fetch_add(bytes, Ordering::Relaxed);
        Some(Admission { guard: self, pending: bytes })
    }

    /// Deletes the reserve so that a space-freeing transaction can commit. Whether it was held
    /// (whether there was anything to give back).
    pub fn release_reserve(&self) -> bool {
        let mut held = self.lock();
        if !*held {
            return false;
        }
        *held = false;
        match std::fs::remove_file(&self.reserve_path) {
            Ok(()) => {
                tracing::warn!(path = %self.reserve_path.display(), "disk full: reserve file released for space-freeing changes");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.reserve_path.display(), "disk full and the reserve file cannot be released");
                false
            }
        }
    }

    /// Runs a space-freeing transaction; if it fails for want of space, releases the reserve
    /// and runs it once more.
    pub fn retry_freeing<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(e) if e.is_no_space() && self.release_reserve() => f(),
            other => other,
        }
    }

    /// Something was freed: the next refusal for space may first reclaim it.
    pub fn note_freed(&self) {
        self.freed.store(true, Ordering::Relaxed);
    }

    /// Whether something was freed since the last call.
    pub fn take_freed(&self) -> bool {
        self.freed.swap(false, Ordering::Relaxed)
    }
}

/// An admitted upload's bytes not yet written, counted against the free space until then.
pub struct Admission<'a> {
    guard: &'a SpaceGuard,
    pending: u64,
}

impl Admission<'_> {
    /// `bytes` of the declared size are written (or will not be: a chunk the store already had).
    pub fn wrote(&mut self, bytes: u64) {
        let n = bytes.min(self.pending);
        self.pending -= n;
        self.guard.in_flight.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.guard.in_flight.fetch_sub(self.pending, Ordering::Relaxed);
    }
}

/// Whether the reserve file exists with all its blocks allocated.
fn reserve_holds(path: &Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() >= size && m.blocks().saturating_mul(512) >= size)
}

/// Allocates `size` bytes of real blocks for the file at `path` (not a sparse file: the point
/// is to hold space that can be given back).
fn allocate(path: &Path, size: u64) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    let len = i64::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "reserve too large"))?;
    // SAFETY: a valid descriptor; posix_fallocate returns an error number instead of setting errno.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

impl StoreError {
    /// Whether this is the disk (or the database on it) being full: SQLite's `SQLITE_FULL` or
    /// an `ENOSPC` from the file system.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Db(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DiskFull,
            StoreError::Io(e) => is_enospc(e),
            StoreError::Refused(_) | StoreError::Db(_) | StoreError::Corrupt(_) | StoreError::Unavailable(_) => false,
        }
    }
}

pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

/// The refusal of a change for space.
pub(crate) fn no_space() -> StoreError {
    StoreError::Refused(RemoteError::NoSpace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn simulated(dir: &Path, free: u64) -> (Arc<AtomicU64>, SpaceGuard) {
        let disk = Arc::new(AtomicU64::new(free));
        let d = disk.clone();
        let source = move || Ok(d.load(Ordering::Relaxed));
        let guard = SpaceGuard::with(dir, Box::new(source), Limits { low_water: 100, reserve: 4096 });
        (disk, guard)
    }

    #[test]
    fn the_reserve_holds_real_blocks_and_comes_back_with_space() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, guard) = simulated(dir.path(), 1_000_000);
        assert!(guard.reserve_held());
        let meta = std::fs::metadata(guard.reserve_path()).unwrap();
        assert!(meta.blocks() * 512 >= 4096, "allocated, not sparse: {} blocks", meta.blocks());

        assert!(guard.release_reserve());
        assert!(!guard.reserve_path().exists());
        assert!(!guard.release_reserve(), "nothing more to give back");
        // Back above the mark but not by the reserve's size: still released, and that space is
        // not room for growth.
        disk.store(100 + 4096, Ordering::Relaxed);
        assert!(!guard.budget().allows(1));
        assert!(!guard.reserve_held());
        disk.store(100 + 4096 + 10, Ordering::Relaxed);
        assert!(guard.budget().allows(0));
        assert!(guard.reserve_held() && reserve_holds(guard.reserve_path(), 4096));
    }

    #[test]
    fn a_server_started_on_a_full_disk_runs_without_its_reserve_until_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        // A partial reserve left by a crash is given back.
        std::fs::write(dir.path().join(RESERVE_FILE), b"short").unwrap();
        let (disk, guard) = simulated(dir.path(), 50);
        assert!(!guard.reserve_held());
        assert!(!dir.path().join(RESERVE_FILE).exists());
        disk.store(1_000_000, Ordering::Relaxed);
        guard.budget();
        assert!(guard.reserve_held());
    }

    #[test]
    fn uploads_count_until_written() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, guard) = simulated(dir.path(), 1_000_000);
        assert!(guard.reserve_held());
        disk.store(1100, Ordering::Relaxed);
        let mut first = guard.admit(600).expect("600 of the 1000 above the mark");
        assert!(guard.admit(600).is_none(), "the first upload's bytes are spoken for");
        first.wrote(600);
        // Written bytes are the source's to report (the simulated disk did not shrink).
        assert!(guard.admit(600).is_some());
        drop(first);
        assert_eq!(guard.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_freeing_change_that_fails_for_space_is_retried_once_with_the_reserve_released() {
        let dir = tempfile::tempdir().unwrap();
        let (_disk, guard) = simulated(dir.path(), 1_000_000);
        let full = || {
            StoreError::Db(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None))
        };
        let mut tries = 0;
        let out = guard.retry_freeing(|| {
            tries += 1;
            if tries == 1 { Err(full()) } else { Ok(tries) }
        });
        assert_eq!(out.unwrap(), 2);
        assert!(!guard.reserve_held());
        // With no reserve left to give, the failure is the answer.
        let mut tries = 0;
        let out: Result<()> = guard.retry_freeing(|| {
            tries += 1;
            Err(full())
        });
        assert!(out.unwrap_err().is_no_space());
        assert_eq!(tries, 1);
        // Other failures are not retried.
        assert!(!StoreError::Corrupt("x".into()).is_no_space());
        assert!(StoreError::Io(io::Error::from_raw_os_error(libc::ENOSPC)).is_no_space());
    }

    #[test]
    fn records_are_classified_by_what_they_cost() {
        use proto::*;
        let fid = Fid::new(VolumeId(1), ObjectId(0x10000));
        let n = Name::new("a").unwrap();
        let seen = Seen { object: ObjectId(0x10001), base: Base::AfterOp(OpId(1)) };
        let rename = |replaced| Mutation::Rename {
            from: fid,
            from_name: n.clone(),
            object: ObjectId(0x10001),
            to: fid,
            to_name: Name::new("b").unwrap(),
            replaced,
        };
        assert_eq!(cost(&Mutation::Remove { parent: fid, name: n.clone(), seen: seen.clone() }), Cost::Frees);
        assert_eq!(cost(&rename(Some(seen))), Cost::Frees);
        assert_eq!(cost(&rename(None)), Cost::Negligible);
        assert_eq!(cost(&Mutation::Link { parent: fid, name: n, target: ObjectId(0x10001) }), Cost::Grows);
    }
}
