//! Callback breaks: a server says an object (or anything in a volume) changed. The promise goes,
//! and the kernel is told to forget what it cached, so the next `open` or `stat` asks venus,
//! which asks the server.
//!
//! The kernel is told before the break is acked (so the writer's call returns only once no
//! kernel cache here shows the old state), from the push handler, never from inside a FUSE
//! handler for the same inode.

use proto::msg::Push;
use proto::{Fid, ObjectId};

use super::{Venus, lock};
use crate::counters;
use crate::ids::{CellId, GFid};

/// What the kernel must forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    Inode(u64),
    Entry { parent: u64, name: String },
}

/// Where invalidations go (the FUSE session's notifier).
pub trait Kernel: Send + Sync {
    fn inval_inode(&self, ino: u64);
    fn inval_entry(&self, parent: u64, name: &str);
}

impl Venus {
    pub(crate) fn on_push(&self, cell: CellId, push: Push) {
        match push {
            Push::BreakCallbacks { fids, volumes } => {
                self.counters.add(counters::CALLBACK_BREAKS, (fids.len() + volumes.len()) as u64);
                for fid in fids {
                    // Something in the volume changed: it is no longer known current as a whole.
                    self.drop_volume(cell, fid.volume);
                    self.break_object(GFid::new(cell, fid));
                }
                for volume in volumes {
                    self.drop_volume(cell, volume);
                }
            }
        }
    }

    pub(crate) fn break_object(&self, g: GFid) {
        self.unpromise(&g);
        // Its ACL may have changed: rights in it are asked again before they are trusted.
        self.cache.stale_access(g.cell, Some(g.fid.volume), Some(&g));
        self.forget_in_kernel(g);
    }

    /// Makes the kernel forget what it caches of an object (its attributes, and for a
    /// directory the names in it), so the next use asks venus.
    pub(crate) fn forget_in_kernel(&self, g: GFid) {
        let ino = g.ino();
        // A directory's cached entries may name things that are gone or changed: the kernel
        // forgets them; venus keeps the listing (no longer promised, so it is fetched again
        // while connected) because offline it is the best there is.
        if let Some(old) = self.cache.listing(&g) {
            for e in old.iter() {
                self.invalidate(super::Inval::Entry { parent: ino, name: e.name.to_string() });
            }
        }
        self.invalidate(super::Inval::Inode(ino));
    }

    /// The server could not deliver a break to us: trust nothing from the cell until it has been
    /// revalidated.
    pub(crate) fn on_callbacks_lost(&self, cell: CellId) {
        tracing::info!(cell = cell.0, "callback promises lost; revalidating");
        self.cache.stale_access(cell, None, None);
        let lost: Vec<GFid> = lock(&self.promises).keys().filter(|g| g.cell == cell).copied().collect();
        for g in lost {
            self.break_object(g);
        }
        let volumes: Vec<proto::VolumeId> =
            lock(&self.vol_promises).keys().filter(|(c, _)| *c == cell).map(|(_, v)| *v).collect();
        for v in volumes {
            lock(&self.vol_promises).remove(&(cell, v));
        }
    }

    /// The inode number of an object, for callers outside the core.
    pub fn ino_of(&self, cell: CellId, volume: proto::VolumeId, object: ObjectId) -> u64 {
        GFid::new(cell, Fid::new(volume, object)).ino()
    }
}
