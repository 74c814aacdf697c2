//! What `df` shows (`statfs(2)`): the quota and use of the path's volume and the room its server
//! has, as AFS's `fs listquota` shows them, not the size of the local cache. Answers are kept a
//! little while per volume (`df` and file managers ask often) unless the volume is seen to change
//! meanwhile: its stamp moves past the answer's (our own changes, or others' we hear of).
//! Offline, the last answer stands; without one, the cache's own size is shown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::msg::VolumeSpace;
use proto::{VolumeId, VolumeStamp};

use super::{Venus, lock};
use crate::error::Result;
use crate::ids::{CellId, ROOT_INO};

/// How long an answer is used before the server is asked again.
const FRESH: Duration = Duration::from_secs(10);

/// Bytes per block in what `statfs` reports.
const BLOCK: u64 = 4096;

/// The last answer per volume.
#[derive(Default)]
pub(super) struct Rooms {
    known: Mutex<HashMap<(CellId, VolumeId), (Instant, VolumeSpace)>>,
}

impl Rooms {
    /// The last answer; with `current`, only one still current at that stamp and recent.
    fn get(&self, key: (CellId, VolumeId), current: Option<Option<VolumeStamp>>) -> Option<VolumeSpace> {
        let known = lock(&self.known);
        let (at, space) = known.get(&key)?;
        let fresh = match current {
            None => true,
            Some(seen) => at.elapsed() < FRESH && seen.is_none_or(|s| !is_later(&s, &space.stamp)),
        };
        fresh.then_some(*space)
    }

    fn put(&self, key: (CellId, VolumeId), space: VolumeSpace) {
        lock(&self.known).insert(key, (Instant::now(), space));
    }
}

/// Whether `seen` is a later state of the volume than `asked`.
fn is_later(seen: &VolumeStamp, asked: &VolumeStamp) -> bool {
    seen.incarnation == asked.incarnation && seen.counter > asked.counter
}

/// `statfs(2)` in blocks of [`BLOCK`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub blocks: u64,
    pub free: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
}

impl FsSpace {
    fn of_volume(v: &VolumeSpace) -> FsSpace {
        let objects = v.files + v.directories;
        FsSpace {
            blocks: v.size().div_ceil(BLOCK),
            free: v.free() / BLOCK,
            // Objects are not rationed: say there is room for as many again, at least a million.
            files: objects + objects.max(1_000_000),
            files_free: objects.max(1_000_000),
            block_size: BLOCK as u32,
        }
    }
}

impl Venus {
    /// The room for the object at `ino`: its volume's, or the cache's at the mount's root (the
    /// list of cells) and when nothing is known of the volume.
    pub async fn statfs(&self, ino: u64) -> Result<FsSpace> {
        if ino == ROOT_INO {
            return Ok(self.cache_space());
        }
        let g = self.object(ino)?;
        let key = (g.cell, g.fid.volume);
        let seen = self.cache.volume(g.cell, g.fid.volume).seen;
        if let Some(space) = self.rooms.get(key, Some(seen)) {
            return Ok(FsSpace::of_volume(&space));
        }
        let asked = match self.reachable(g.cell, g.fid.volume) {
            true => Some(self.cell(g.cell)?.volume_space(g.fid.volume).await),
            false => None,
        };
        match asked {
            Some(Ok(space)) => {
                self.rooms.put(key, space);
                Ok(FsSpace::of_volume(&space))
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::debug!(volume = %g.fid.volume, error = %e, "volume space not known; showing the last answer");
                }
                Ok(self.rooms.get(key, None).map_or_else(|| self.cache_space(), |s| FsSpace::of_volume(&s)))
            }
        }
    }

    fn cache_space(&self) -> FsSpace {
        let u = self.cache.usage();
        FsSpace {
            blocks: u.limit / BLOCK,
            free: u.limit.saturating_sub(u.used) / BLOCK,
            files: u.objects + 1_000_000,
            files_free: 1_000_000,
            block_size: BLOCK as u32,
        }
    }
}
