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

/// Of the server's free room, the share that changes logged under a write-back permit may take
/// before one is sent at its close: other volumes on the server take from the same room.
const SERVER_SHARE: u64 = 2;

/// The last answer per volume, and the room of volumes under a write-back permit.
#[derive(Default)]
pub(super) struct Rooms {
    known: Mutex<HashMap<(CellId, VolumeId), (Instant, VolumeSpace)>>,
    ledgers: Mutex<HashMap<(CellId, VolumeId), Ledger>>,
}

/// A volume's room while venus holds its write-back permit: measured once (with nothing
/// logged), then kept by venus itself, since nobody else changes the volume meanwhile. It says
/// whether a logged store surely fits (the quota is the volume's own, exact; the server's room
/// is shared, so only part of it is counted on), and what `df` shows without asking.
#[derive(Debug, Clone, Copy)]
struct Ledger {
    measured: VolumeSpace,
    /// Net bytes of file data changed since it was measured.
    growth: i64,
}

impl Ledger {
    fn now(&self) -> VolumeSpace {
        let mut space = self.measured;
        space.used = add(space.used, self.growth);
        space.server_free = space.server_free.map(|f| add(f, -self.growth));
        space
    }

    fn fits(&self, more: i64) -> bool {
        if more <= 0 {
            return true;
        }
        let used = add(self.measured.used, self.growth + more);
        let quota_ok = self.measured.quota == 0 || used <= self.measured.quota;
        let server_ok = self.measured.server_free.is_some_and(|f| self.growth + more <= (f / SERVER_SHARE) as i64);
        quota_ok && server_ok
    }
}

fn add(n: u64, delta: i64) -> u64 {
    n.saturating_add_signed(delta)
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

    /// The volume's room was measured with nothing logged under its permit.
    pub fn measured(&self, key: (CellId, VolumeId), space: VolumeSpace) {
        lock(&self.ledgers).insert(key, Ledger { measured: space, growth: 0 });
    }

    /// Whether `more` bytes logged under the permit surely fit (false when the room was not
    /// measured).
    pub fn fits(&self, key: (CellId, VolumeId), more: i64) -> bool {
        lock(&self.ledgers).get(&key).is_some_and(|l| l.fits(more))
    }

    /// A change logged under the permit took (or freed) `delta` bytes.
    pub fn grew(&self, key: (CellId, VolumeId), delta: i64) {
        if let Some(l) = lock(&self.ledgers).get_mut(&key) {
            l.growth += delta;
        }
    }

    /// The permit ended: the server answers for the room again. What the permit's ledger last
    /// showed stays as the last answer for offline use only (it is never fresh: connected, the
    /// server is asked).
    pub fn permit_ended(&self, key: (CellId, VolumeId)) {
        let last = lock(&self.ledgers).remove(&key).map(|l| l.now());
        let mut known = lock(&self.known);
        match last.zip(Instant::now().checked_sub(FRESH)) {
            Some((space, stale)) => known.insert(key, (stale, space)),
            None => known.remove(&key),
        };
    }

    fn under_permit(&self, key: (CellId, VolumeId)) -> Option<VolumeSpace> {
        lock(&self.ledgers).get(&key).map(Ledger::now)
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
        if self.permits.holds(g.cell, g.fid.volume)
            && let Some(space) = self.rooms.under_permit(key)
        {
            return Ok(FsSpace::of_volume(&space));
        }
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

    /// Measures the room of a volume whose permit venus just got (nothing logged yet).
    pub(crate) async fn measure_room(&self, cell: CellId, volume: VolumeId) {
        let Ok(conn) = self.cell(cell) else { return };
        match conn.volume_space(volume).await {
            Ok(space) => self.rooms.measured((cell, volume), space),
            Err(e) => tracing::debug!(%volume, error = %e, "room not measured; stores are sent at close"),
        }
    }

    /// A store (or removal) about to be logged under a permit: how many bytes of file data it
    /// adds to the volume (negative: frees), as the cache knows the file.
    pub(crate) fn growth_of(&self, cell: CellId, m: &proto::Mutation) -> i64 {
        use proto::{Fid, Mutation, ObjectKind};
        let size_of = |fid: Fid| self.cache.attr(&crate::ids::GFid::new(cell, fid)).map(|a| (a.size, a.kind, a.nlink));
        match m {
            Mutation::Store { fid, chunks, .. } => {
                let old = size_of(*fid).map_or(0, |(size, ..)| size);
                proto::chunk::total_len(chunks) as i64 - old as i64
            }
            Mutation::Remove { parent, name, .. } => {
                let listing = self.cache.listing(&crate::ids::GFid::new(cell, *parent));
                let named = listing.and_then(|l| l.iter().find(|e| e.name == *name).map(|e| e.object));
                match named.and_then(|o| size_of(Fid::new(parent.volume, o))) {
                    Some((size, ObjectKind::File, nlink)) if nlink <= 1 => -(size as i64),
                    _ => 0,
                }
            }
            _ => 0,
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
