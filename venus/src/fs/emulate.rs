//! Emulation: applying a mutation to the cache alone, while the volume is disconnected (or
//! still has logged changes to reintegrate).
//!
//! The change is checked against the cached state with the server's rules, logged in the client
//! modification log (durably, before the system call returns), and applied to the cached
//! attributes; callers edit the cached listings as they do when connected. Records logged while
//! disconnected take their bases from the log (the last logged change of an object) so a chain
//! of offline changes certifies at reintegration.

use proto::attr::MODE_MASK;
use proto::{Applied, Attr, Fid, Mutation, ObjectId, ObjectKind, OpId, Record, RemoteError, Timestamp};
use proto::{ConflictKind, VersionVector, VolumeStamp};

use super::Venus;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};

impl Venus {
    /// Logs a mutation without sending it and applies it to the cache.
    pub(crate) fn log_offline(&self, cell: CellId, mut mutation: Mutation) -> Result<Applied> {
        self.rebase(cell, &mut mutation)?;
        self.check_local(cell, &mutation)?;
        let volume = mutation.volume();
        self.claim_log(cell, volume)?;
        let last_name = match &mutation {
            Mutation::Remove { parent, seen, .. } => {
                self.cache.attr(&GFid::new(cell, Fid::new(parent.volume, seen.object))).is_none_or(|a| a.nlink <= 1)
            }
            _ => false,
        };
        let record = Record { op: OpId::random(), mutation };
        let name = self.cell(cell)?.name().to_string();
        self.with_room(|| {
            if last_name {
                self.cml.append_removing_last_name(&name, record.clone())?;
            } else {
                self.cml.append(&name, record.clone())?;
            }
            Ok(())
        })?;
        self.mark_pending(cell, volume, true);
        self.apply_local(cell, &record.mutation)
    }

    /// At start-up: a file whose container holds local changes that no logged record carries
    /// (venus stopped with its store in flight, or before it was sent) gets a store in the log,
    /// based on the version its contents came from. So every dirty file reaches the server (or
    /// becomes a conflict, if the server's version moved on) instead of staying dirty for ever:
    /// never evicted, hiding the server's newer versions.
    pub(crate) fn log_unstored_files(&self) -> Result<()> {
        for g in self.cache.dirty_objects() {
            self.log_unstored(g)?;
        }
        Ok(())
    }

    /// At start-up: every container a logged store needs is known to the cache as dirty, so
    /// nothing fetches over it or evicts it — even if the cache index was lost (put aside as
    /// damaged) and knows nothing.
    pub(crate) fn adopt_logged_containers(&self) -> Result<()> {
        for log in self.cml.summary()? {
            let Some(cell) = self.cell_by_name(&log.cell) else { continue };
            for e in self.cml.pending(&log.cell, log.volume)? {
                if let Mutation::Store { fid, base, .. } = &e.record.mutation {
                    let based_on = match base {
                        proto::Base::Version(v) => v.clone(),
                        _ => VersionVector::new(),
                    };
                    if self.cache.adopt(GFid::new(cell, *fid), based_on)? {
                        tracing::info!(file = %fid, "a container the log needs was taken back into the cache");
                    }
                }
            }
        }
        Ok(())
    }

    /// The same while running, for dirty files nobody has open or is storing (a close whose
    /// store could not even be logged, with the cache disk full, say): run by the heartbeat.
    pub(crate) fn log_unstored_closed(&self) {
        for g in self.cache.dirty_objects() {
            let lock = self.fetch_lock(g);
            // A store in progress holds the lock; the file is its business.
            let Ok(_storing) = lock.try_lock() else { continue };
            if self.cache.get(&g).is_none_or(|c| c.open > 0 || !c.dirty) {
                continue;
            }
            if let Err(e) = self.log_unstored(g) {
                tracing::info!(file = %g, error = %e, "local changes not yet stored could not be logged yet");
            }
        }
    }

    /// Logs a store of a dirty file's container unless a logged record already carries it.
    fn log_unstored(&self, g: GFid) -> Result<()> {
        let Ok(conn) = self.cell(g.cell) else { return Ok(()) };
        let cell_name = conn.name().to_string();
        if self.cml.base_of(&cell_name, g.fid)?.is_some() {
            return Ok(());
        }
        let (Some(base), Ok(scanned)) = (self.cache.base(&g), super::store::scan(&self.cache.container(&g))) else {
            return Ok(());
        };
        let volume = g.fid.volume;
        // The log's owner replays it; a log without one is claimed for venus's own user.
        if let Err(e) = self.claim_log(g.cell, volume) {
            tracing::info!(file = %g, error = %e, "logging a dirty file in another user's log");
        }
        let mutation = Mutation::Store {
            fid: g.fid,
            base: proto::Base::Version(base),
            chunks: scanned.chunks,
            mtime: scanned.mtime,
        };
        let record = Record { op: OpId::random(), mutation };
        self.with_room(|| Ok(self.cml.append(&cell_name, record.clone())?))?;
        self.mark_pending(g.cell, volume, true);
        tracing::info!(file = %g, "local changes not yet stored are logged for reintegration");
        Ok(())
    }

    /// Offline, a change follows the last logged change of its object, not the server version.
    fn rebase(&self, cell: CellId, m: &mut Mutation) -> Result<()> {
        let name = self.cell(cell)?.name().to_string();
        let logged = |fid: Fid| self.cml.base_of(&name, fid);
        match m {
            Mutation::Store { fid, base, .. } | Mutation::SetAttr { fid, base, .. } => {
                if let Some(b) = logged(*fid)? {
                    *base = b;
                }
            }
            Mutation::Remove { parent, seen, .. } => {
                if let Some(b) = logged(Fid::new(parent.volume, seen.object))? {
                    seen.base = b;
                }
            }
            Mutation::Rename { to, replaced: Some(seen), .. } => {
                if let Some(b) = logged(Fid::new(to.volume, seen.object))? {
                    seen.base = b;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn cached_dir(&self, g: GFid) -> Result<(Attr, crate::cache::Listing)> {
        let attr = self.cache.attr(&g).ok_or(VenusError::NotCached)?;
        if attr.kind != ObjectKind::Directory {
            return Err(VenusError::NotDirectory);
        }
        let entries = self.cache.listing(&g).ok_or(VenusError::NotCached)?;
        Ok((attr, entries))
    }

    /// The server's rules, applied to what the cache knows.
    fn check_local(&self, cell: CellId, m: &Mutation) -> Result<()> {
        let taken = |dir: Fid, name: &proto::Name| -> Result<()> {
            let (_, entries) = self.cached_dir(GFid::new(cell, dir))?;
            match entries.iter().find(|e| &e.name == name) {
                Some(e) => {
                    Err(VenusError::Remote(RemoteError::Conflict(ConflictKind::NameTaken { existing: e.object })))
                }
                None => Ok(()),
            }
        };
        match m {
            Mutation::Create { parent, name, .. }
            | Mutation::MakeDir { parent, name, .. }
            | Mutation::Symlink { parent, name, .. }
            | Mutation::MakeMountPoint { parent, name, .. }
            | Mutation::Link { parent, name, .. } => taken(*parent, name),
            Mutation::RemoveDir { parent, object, .. } => {
                let (_, entries) = self.cached_dir(GFid::new(cell, Fid::new(parent.volume, *object)))?;
                if entries.is_empty() { Ok(()) } else { Err(VenusError::Remote(RemoteError::NotEmpty)) }
            }
            Mutation::Rename { object, to, to_name, replaced, .. } => {
                let moving =
                    self.cache.attr(&GFid::new(cell, Fid::new(to.volume, *object))).ok_or(VenusError::NotCached)?;
                if moving.kind == ObjectKind::Directory {
                    // Not into itself or below itself.
                    let mut at = *to;
                    for _ in 0..10_000 {
                        if at.object == *object {
                            return Err(VenusError::Remote(RemoteError::WouldLoop));
                        }
                        match self.cache.attr(&GFid::new(cell, at)).and_then(|a| a.parent) {
                            Some(p) if p != at.object => at = Fid::new(at.volume, p),
                            _ => break,
                        }
                    }
                }
                match replaced {
                    None => taken(*to, to_name),
                    Some(seen) => {
                        let victim = GFid::new(cell, Fid::new(to.volume, seen.object));
                        let v = self.cache.attr(&victim).ok_or(VenusError::NotCached)?;
                        match (moving.kind == ObjectKind::Directory, v.kind == ObjectKind::Directory) {
                            (true, false) => Err(VenusError::NotDirectory),
                            (false, true) => Err(VenusError::IsDirectory),
                            (true, true) if !self.cached_dir(victim)?.1.is_empty() => {
                                Err(VenusError::Remote(RemoteError::NotEmpty))
                            }
                            _ => Ok(()),
                        }
                    }
                }
            }
            Mutation::Store { .. } | Mutation::SetAttr { .. } | Mutation::Remove { .. } => Ok(()),
        }
    }

    /// A directory whose entries changed: new mtime, entry count and link count.
    fn touch_dir(&self, cell: CellId, dir: Fid, entries: i64, links: i64, now: Timestamp, out: &mut Vec<Attr>) {
        if let Some(mut a) = self.cache.attr(&GFid::new(cell, dir)) {
            a.mtime = now;
            a.ctime = now;
            a.size = (a.size as i64 + entries).max(0) as u64;
            a.nlink = (i64::from(a.nlink) + links).max(2) as u32;
            out.retain(|x| x.fid != a.fid);
            out.push(a);
        }
    }

    /// Applies a mutation to the cached attributes. Versions of new objects stay empty: the
    /// server assigns them at reintegration.
    pub(crate) fn apply_local(&self, cell: CellId, m: &Mutation) -> Result<Applied> {
        let now = Timestamp::now();
        let mut attrs: Vec<Attr> = Vec::new();
        let mut removed: Vec<ObjectId> = Vec::new();
        let volume = m.volume();
        let fresh = |parent: Fid, object: ObjectId, kind, mode: u32, owner, group, mtime, link: Option<String>| Attr {
            fid: Fid::new(volume, object),
            kind,
            mode: mode & MODE_MASK,
            owner,
            group,
            size: link.as_ref().map_or(0, |l| l.len() as u64),
            nlink: if kind == ObjectKind::Directory { 2 } else { 1 },
            mtime,
            ctime: now,
            version: VersionVector::new(),
            parent: Some(parent.object),
            link,
        };
        match m {
            Mutation::Store { fid, mtime, chunks, .. } => {
                if let Some(mut a) = self.cache.attr(&GFid::new(cell, *fid)) {
                    a.size = proto::chunk::total_len(chunks);
                    a.mtime = *mtime;
                    a.ctime = now;
                    attrs.push(a);
                }
            }
            Mutation::SetAttr { fid, set, .. } => {
                if let Some(mut a) = self.cache.attr(&GFid::new(cell, *fid)) {
                    if let Some(v) = set.mode {
                        a.mode = v & MODE_MASK;
                    }
                    if let Some(v) = set.owner {
                        a.owner = v;
                    }
                    if let Some(v) = set.group {
                        a.group = v;
                    }
                    if let Some(v) = set.mtime {
                        a.mtime = v;
                    }
                    a.ctime = now;
                    attrs.push(a);
                }
            }
            Mutation::Create { parent, object, mode, owner, group, mtime, .. } => {
                attrs.push(fresh(*parent, *object, ObjectKind::File, *mode, *owner, *group, *mtime, None));
                self.touch_dir(cell, *parent, 1, 0, now, &mut attrs);
            }
            Mutation::MakeDir { parent, object, mode, owner, group, mtime, .. } => {
                attrs.push(fresh(*parent, *object, ObjectKind::Directory, *mode, *owner, *group, *mtime, None));
                self.touch_dir(cell, *parent, 1, 1, now, &mut attrs);
            }
            Mutation::Symlink { parent, object, target, owner, group, mtime, .. } => {
                attrs.push(fresh(
                    *parent,
                    *object,
                    ObjectKind::Symlink,
                    0o777,
                    *owner,
                    *group,
                    *mtime,
                    Some(target.clone()),
                ));
                self.touch_dir(cell, *parent, 1, 0, now, &mut attrs);
            }
            Mutation::MakeMountPoint { parent, object, target, owner, mtime, .. } => {
                attrs.push(fresh(
                    *parent,
                    *object,
                    ObjectKind::MountPoint,
                    0o755,
                    *owner,
                    0,
                    *mtime,
                    Some(target.clone()),
                ));
                self.touch_dir(cell, *parent, 1, 0, now, &mut attrs);
            }
            Mutation::Link { parent, target, .. } => {
                if let Some(mut a) = self.cache.attr(&GFid::new(cell, Fid::new(volume, *target))) {
                    a.nlink += 1;
                    a.ctime = now;
                    attrs.push(a);
                }
                self.touch_dir(cell, *parent, 1, 0, now, &mut attrs);
            }
            Mutation::Remove { parent, seen, .. } => {
                self.unlink_local(cell, Fid::new(volume, seen.object), now, &mut attrs, &mut removed);
                self.touch_dir(cell, *parent, -1, 0, now, &mut attrs);
            }
            Mutation::RemoveDir { parent, object, .. } => {
                removed.push(*object);
                self.touch_dir(cell, *parent, -1, -1, now, &mut attrs);
            }
            Mutation::Rename { from, object, to, replaced, .. } => {
                let moved = GFid::new(cell, Fid::new(volume, *object));
                let is_dir = self.cache.attr(&moved).is_some_and(|a| a.kind == ObjectKind::Directory);
                if let Some(seen) = replaced {
                    let victim = Fid::new(volume, seen.object);
                    let victim_dir =
                        self.cache.attr(&GFid::new(cell, victim)).is_some_and(|a| a.kind == ObjectKind::Directory);
                    if victim_dir {
                        removed.push(seen.object);
                    } else {
                        self.unlink_local(cell, victim, now, &mut attrs, &mut removed);
                    }
                    self.touch_dir(cell, *to, -1, if victim_dir { -1 } else { 0 }, now, &mut attrs);
                }
                let links = i64::from(is_dir && from != to);
                self.touch_dir(cell, *from, -1, -links, now, &mut attrs);
                self.touch_dir(cell, *to, 1, links, now, &mut attrs);
                if let Some(mut a) = self.cache.attr(&moved) {
                    a.ctime = now;
                    a.parent = Some(to.object);
                    attrs.push(a);
                }
            }
        }
        for a in &attrs {
            self.cache.put_attr(cell, a.clone())?;
        }
        let cell_name = self.cell(cell)?.name().to_string();
        for o in &removed {
            let g = GFid::new(cell, Fid::new(volume, *o));
            // The log may still need the data (a store replayed before the removal): keep the
            // container until reintegration; revalidation forgets it once the server has.
            // (A file still open stays an orphan for its descriptors: see `Cache::remove`.)
            let needed = self.cml.base_of(&cell_name, g.fid)?.is_some();
            if !needed {
                self.cache.remove(&g)?;
            }
        }
        Ok(Applied { attrs, removed, stamp: VolumeStamp::default() })
    }

    fn unlink_local(&self, cell: CellId, fid: Fid, now: Timestamp, attrs: &mut Vec<Attr>, removed: &mut Vec<ObjectId>) {
        if let Some(mut a) = self.cache.attr(&GFid::new(cell, fid)) {
            if a.nlink <= 1 {
                removed.push(fid.object);
            } else {
                a.nlink -= 1;
                a.ctime = now;
                attrs.push(a);
            }
        }
    }
}
