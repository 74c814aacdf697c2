//! Open files: each descriptor the kernel holds on a file is a [`Handle`] on the file's
//! container, and the table of them. A handle knows whether anything was written through it
//! since its contents were last stored, which is what a close asks before storing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proto::Timestamp;

use super::lock;
use crate::error::{Result, VenusError};
use crate::ids::GFid;

/// An open file.
pub struct Handle {
    pub gfid: GFid,
    pub file: std::fs::File,
    pub writable: bool,
    /// The file is still coming in: reads further than it has come wait (`streams.rs`).
    pub stream: Option<Arc<super::streams::Stream>>,
    /// Set by writes venus sees (the non-passthrough path) and by O_TRUNC.
    written: AtomicBool,
    /// The container's (size, mtime) when last stored or opened: writes that bypass venus
    /// (kernel passthrough) are detected by comparing.
    baseline: Mutex<(u64, i64)>,
}

/// A container's size and mtime: what a write through the kernel's passthrough changes.
pub type Times = (u64, i64);

pub(crate) fn container_times(file: &std::fs::File) -> Times {
    match file.metadata() {
        Ok(m) => (m.len(), m.modified().map(|t| Timestamp::from_system(t).as_nanos()).unwrap_or(0)),
        Err(_) => (0, 0),
    }
}

impl Handle {
    /// A handle on `file`; `truncated` counts as a write (the file was emptied on open).
    pub fn new(gfid: GFid, file: std::fs::File, writable: bool, truncated: bool) -> Handle {
        let baseline = Mutex::new(container_times(&file));
        Handle { gfid, file, writable, stream: None, written: AtomicBool::new(truncated), baseline }
    }

    /// A read-only handle on a file still being fetched.
    pub fn streaming(gfid: GFid, file: std::fs::File, stream: Arc<super::streams::Stream>) -> Handle {
        Handle { stream: Some(stream), ..Handle::new(gfid, file, false, false) }
    }

    /// Something was written through venus.
    pub fn wrote(&self) {
        self.written.store(true, Ordering::Relaxed);
    }

    /// The container's times now, if anything was written since the last store.
    pub fn unstored(&self) -> Option<Times> {
        let now = container_times(&self.file);
        (self.written.load(Ordering::Relaxed) || *lock(&self.baseline) != now).then_some(now)
    }

    /// A store of the contents as of `now` begins: a write racing with it counts again.
    pub fn storing(&self) {
        self.written.store(false, Ordering::Relaxed);
    }

    /// The contents as of `now` are stored.
    pub fn stored(&self, now: Times) {
        *lock(&self.baseline) = now;
    }

    /// The store failed: what was written is still to be stored.
    pub fn store_failed(&self) {
        self.wrote();
    }

    /// Nothing this handle wrote up to `now` is left to store.
    pub fn settled_at(&self, now: Times) {
        *lock(&self.baseline) = now;
        self.written.store(false, Ordering::Relaxed);
    }
}

/// The open handles, by the number the kernel knows them by.
#[derive(Default)]
pub struct Handles {
    open: Mutex<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl Handles {
    pub fn add(&self, h: Handle) -> (u64, Arc<Handle>) {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let h = Arc::new(h);
        lock(&self.open).insert(fh, h.clone());
        (fh, h)
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Handle>> {
        lock(&self.open).get(&fh).cloned().ok_or(VenusError::Io(std::io::Error::from_raw_os_error(libc::EBADF)))
    }

    pub fn take(&self, fh: u64) -> Option<Arc<Handle>> {
        lock(&self.open).remove(&fh)
    }
}
