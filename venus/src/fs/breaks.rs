//! Callback breaks: a server says an object (or anything in a volume) changed. The promise goes,
//! and the kernel is told to forget what it cached, so the next `open` or `stat` asks venus,
//! which asks the server.
//!
//! The break is acked only once the kernel has been told (so the writer's call returns only once
//! no kernel cache here shows the old state). Telling it never blocks anyone: invalidations are
//! delivered by their own thread without taking kernel locks (`crate::kernel`), so a break
//! arriving while a FUSE request waits on the same directory cannot deadlock with it.

use proto::msg::Push;

use super::Venus;
use crate::counters;
use crate::ids::{CellId, GFid};
use crate::kernel::{Delivered, Forget};

impl Venus {
    /// Takes in a push; the result resolves once the kernel has forgotten what it must.
    pub(crate) fn on_push(&self, cell: CellId, push: Push) -> Delivered {
        let mut forget = Forget::default();
        match push {
            Push::BreakCallbacks { fids, volumes } => {
                self.counters.add(counters::CALLBACK_BREAKS, (fids.len() + volumes.len()) as u64);
                for fid in fids {
                    // Something in the volume changed: it is no longer known current as a whole.
                    self.volume_broken(cell, fid.volume);
                    forget.add(self.break_object(GFid::new(cell, fid)));
                }
                for volume in volumes {
                    self.volume_broken(cell, volume);
                }
            }
            Push::Recall { volume } => self.on_recall(cell, volume),
        }
        self.forget(forget)
    }

    /// Drops the promise on an object; returns what the kernel must forget of it.
    #[must_use]
    pub(crate) fn break_object(&self, g: GFid) -> Forget {
        self.promises.object_broken(g);
        // Its ACL may have changed: rights in it are asked again before they are trusted.
        self.cache.stale_access(g.cell, Some(g.fid.volume), Some(&g));
        self.kernel_view(g)
    }

    /// Makes the kernel forget what it caches of an object (its attributes, and for a
    /// directory the names in it), so the next use asks venus. Returns at once.
    pub(crate) fn forget_in_kernel(&self, g: GFid) {
        let _ = self.forget(self.kernel_view(g));
    }

    /// What the kernel may hold of an object: its attributes, and for a directory, names.
    fn kernel_view(&self, g: GFid) -> Forget {
        let ino = g.ino();
        let mut forget = Forget::inode(ino);
        // A directory's cached entries may name things that are gone or changed: the kernel
        // forgets them; venus keeps the listing (no longer promised, so it is fetched again
        // while connected) because offline it is the best there is. Names the kernel learned
        // before venus dropped its listing count too: a directory always makes names stale.
        let listing = self.cache.listing(&g);
        let is_dir = listing.is_some() || self.cache.attr(&g).is_none_or(|a| crate::cache::shows_as_dir(a.kind));
        if is_dir {
            forget.dirs.push(ino);
        }
        if let Some(old) = listing {
            forget.names.extend(old.iter().map(|e| (ino, e.name.to_string())));
        }
        forget
    }

    /// The server could not deliver a break to us: trust nothing from the cell until it has been
    /// revalidated. Called from inside requests (a reconnection, a `CallbacksLost` answer): it
    /// queues the kernel's invalidations and never waits for them.
    pub(crate) fn on_callbacks_lost(&self, cell: CellId) {
        tracing::info!(cell = cell.0, "callback promises lost; revalidating");
        self.cache.stale_access(cell, None, None);
        let mut forget = Forget::default();
        for g in self.promises.cell_lost(cell) {
            forget.add(self.kernel_view(g));
        }
        let _ = self.forget(forget);
    }

    /// Another member of a replicated volume's group serves it now: the promises the one
    /// before gave are void. What was cached is revalidated as it is used, with the new one.
    pub(crate) fn on_volume_lost(&self, cell: CellId, volume: proto::VolumeId) {
        tracing::info!(cell = cell.0, %volume, "the volume's promises are void (another member serves it)");
        self.cache.stale_access(cell, Some(volume), None);
        let mut forget = Forget::default();
        for g in self.promises.volume_lost(cell, volume) {
            forget.add(self.kernel_view(g));
        }
        self.drop_volume(cell, volume);
        let _ = self.forget(forget);
    }

    /// A break touched the volume: it is no longer known current as a whole, and a volume
    /// promise in a reply it overtook does not count.
    fn volume_broken(&self, cell: CellId, volume: proto::VolumeId) {
        self.promises.volume_broken(cell, volume);
        self.drop_volume(cell, volume);
    }
}
