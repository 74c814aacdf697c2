//! Big files that open before they are whole. Whole-file caching fetches a file before `open`
//! returns, which for a file of gigabytes means waiting for all of it. A read-only open of a file
//! at least `Config::stream_from` bytes large that is not cached starts the fetch in the
//! background instead and returns once the first bytes are in: reads of what has arrived are
//! served at once, a read further on waits for its bytes. The fetch is the same one as always
//! (the whole file, verified chunk by chunk, installed in the cache as one, under the file's
//! fetch lock), so whole-file semantics hold for everything else: a writer's open waits for it,
//! and once it is in, every later open is an ordinary cached one (passed through the kernel).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::lock;
use crate::error::{Result, VenusError};
use crate::ids::GFid;

/// How far a background fetch has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// This many bytes from the start are in the file.
    Fetching(u64),
    /// All of it is in, and installed in the cache.
    Whole,
    /// The fetch stopped after this many bytes, with this error number.
    Failed { bytes: u64, errno: i32 },
}

/// One file being fetched while open.
pub struct Stream {
    progress: watch::Sender<Progress>,
    /// The file being filled, for every handle that joins: its contents stay reachable through
    /// it after it is installed in the cache (renamed), or dropped on failure.
    file: std::fs::File,
}

impl Stream {
    pub(super) fn new(file: std::fs::File) -> Stream {
        Stream { progress: watch::Sender::new(Progress::Fetching(0)), file }
    }

    /// A descriptor of its own on the file being filled.
    pub(super) fn reader(&self) -> std::io::Result<std::fs::File> {
        self.file.try_clone()
    }

    /// `bytes` from the start are in the file (written, not just buffered).
    pub(super) fn advance(&self, bytes: u64) {
        self.progress.send_if_modified(|p| match p {
            Progress::Fetching(n) if *n < bytes => {
                *p = Progress::Fetching(bytes);
                true
            }
            _ => false,
        });
    }

    pub(super) fn finish(&self, result: &Result<()>) {
        self.progress.send_modify(|p| {
            let bytes = match *p {
                Progress::Fetching(n) => n,
                _ => return,
            };
            *p = match result {
                Ok(()) => Progress::Whole,
                Err(e) => Progress::Failed { bytes, errno: e.to_errno() },
            };
        });
    }

    /// Whether bytes up to `end` can be read now.
    pub fn ready(&self, end: u64) -> bool {
        match *self.progress.borrow() {
            Progress::Fetching(n) | Progress::Failed { bytes: n, .. } => n >= end,
            Progress::Whole => true,
        }
    }

    /// Waits until the bytes up to `end` are in (or the whole file, if it is shorter). A fetch
    /// that failed before them is this read's error; what had arrived stays readable.
    pub async fn until(&self, end: u64) -> Result<()> {
        let mut rx = self.progress.subscribe();
        let reached = rx
            .wait_for(|p| match *p {
                Progress::Fetching(n) => n >= end,
                Progress::Whole | Progress::Failed { .. } => true,
            })
            .await
            .map(|p| *p);
        match reached {
            Ok(Progress::Failed { bytes, errno }) if bytes < end => {
                Err(VenusError::Io(std::io::Error::from_raw_os_error(errno)))
            }
            Ok(_) => Ok(()),
            // The sender lives in the stream itself: it cannot be gone while we hold the stream.
            Err(_) => Err(VenusError::Io(std::io::Error::from_raw_os_error(libc::EIO))),
        }
    }

    /// Waits for the first bytes, or the end of the fetch (an error then is the open's).
    pub(super) async fn started(&self) -> Result<()> {
        let mut rx = self.progress.subscribe();
        let first = rx.wait_for(|p| !matches!(p, Progress::Fetching(0))).await.map(|p| *p);
        match first {
            Ok(Progress::Failed { bytes: 0, errno }) => Err(VenusError::Io(std::io::Error::from_raw_os_error(errno))),
            _ => Ok(()),
        }
    }
}

/// The files being fetched while open, by object.
#[derive(Default)]
pub(super) struct Streams {
    live: Mutex<HashMap<GFid, Arc<Stream>>>,
}

impl Streams {
    pub(super) fn get(&self, g: &GFid) -> Option<Arc<Stream>> {
        lock(&self.live).get(g).cloned()
    }

    pub(super) fn insert(&self, g: GFid, s: Arc<Stream>) {
        lock(&self.live).insert(g, s);
    }

    pub(super) fn remove(&self, g: &GFid) {
        lock(&self.live).remove(g);
    }
}
