//! Changing the namespace: every mutation becomes a record, goes into the client modification
//! log, and (connected) is sent to the server at once while the system call waits for the answer.
//! On success the cache takes the server's attributes and our own cached listings are edited in
//! place (we keep our promises on what we changed; the server broke everyone else's).

use std::os::unix::fs::FileExt;

use proto::{Applied, Attr, Base, DirEntry, Fid, Mutation, Name, ObjectId, ObjectKind, OpId, Record};
use proto::{NodeKind, RemoteError, Seen, SetAttrs, Timestamp};

use proto::auth::Rights;

use super::{Stat, Venus};
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::remote::Mutated;

/// The attribute changes of a `setattr` call.
#[derive(Debug, Clone, Default)]
pub struct SetAttrRequest {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<Timestamp>,
    /// Who asks (for the set-group-ID rule).
    pub caller: super::Caller,
}

/// How a change edits the cached listings of its directories: applied with the server's answer,
/// in the same cache transaction.
pub(crate) enum ListingEdit {
    Add(GFid, DirEntry),
    Remove(GFid, Name),
}

/// One change on its way through the log to the server.
pub(crate) struct Change {
    cell: CellId,
    mutation: Mutation,
    /// Connected, the chunks it needs (with the reader of their bytes) go in the same request,
    /// ahead of the record (`PutChunksAndMutate`: a small file's store in one round trip).
    chunks: Option<(Vec<proto::ChunkRef>, super::store::ChunkReader)>,
    edits: Vec<ListingEdit>,
    /// A store whose data is not on the server and does not travel with it: if the volume is
    /// connected after all (its mode changed since the store chose its way), it goes through
    /// the log, whose reintegration sends the data first.
    data_elsewhere: bool,
}

impl Change {
    pub fn new(cell: CellId, mutation: Mutation) -> Change {
        Change { cell, mutation, chunks: None, edits: Vec::new(), data_elsewhere: false }
    }

    /// See [`Change::data_elsewhere`].
    pub fn data_not_sent(mut self) -> Change {
        self.data_elsewhere = true;
        self
    }

    /// Edits cached listings as the change does.
    pub fn editing(mut self, edits: Vec<ListingEdit>) -> Change {
        self.edits = edits;
        self
    }

    pub fn with_chunks(mut self, chunks: Vec<proto::ChunkRef>, read: super::store::ChunkReader) -> Change {
        self.chunks = Some((chunks, read));
        self
    }
}

/// What became of a change.
pub(crate) struct Committed {
    pub applied: Applied,
    /// It is only in the log (disconnected), waiting for reintegration.
    pub logged: bool,
}

impl Venus {
    /// The one write path: every change goes into the log. Connected, the record is sent while
    /// the system call waits, the answer is the call's, and the record leaves the log;
    /// disconnected (or if the server goes away with the record in flight), it stays there for
    /// reintegration.
    pub(crate) async fn commit(&self, change: Change) -> Result<Committed> {
        let Change { cell, mutation, chunks, edits, data_elsewhere } = change;
        let edits = &edits[..];
        let volume = mutation.volume();
        self.writable(GFid::new(cell, Fid::root(volume)))?;
        let _deciding = self.deciding(cell, volume).await;
        if self.emulating(cell, volume) || data_elsewhere {
            // Disconnected, reintegrating, or under a write-back permit: logged, and done.
            let permitted = self.permits.holds(cell, volume);
            if permitted {
                self.fetch_named(cell, &mutation).await?;
            }
            let growth = if permitted { self.growth_of(cell, &mutation) } else { 0 };
            let stored = match &mutation {
                Mutation::Store { fid, .. } => Some(GFid::new(cell, *fid)),
                _ => None,
            };
            let applied = self.log_offline(cell, mutation, edits)?;
            if permitted {
                // A store that might not fit the volume's room is sent at its close, which
                // answers with the server's verdict (EDQUOT, ENOSPC) as without a permit.
                if let Some(g) = stored
                    && !self.rooms.fits((cell, volume), growth)
                {
                    self.permits.send_at_close(g);
                }
                self.rooms.grew((cell, volume), growth);
            }
            self.permits.note_logged(cell, volume);
            return Ok(Committed { applied, logged: true });
        }
        self.maybe_ask_permit(cell, volume);
        let conn = self.cell(cell)?.clone();
        let record = Record { op: OpId::random(), mutation };
        // In the log first, as every change is, and frozen: it is on its way to the server, so
        // nothing logged later may optimise it away (a removal dropping a store the server did
        // apply would then conflict with it). The log is where the change lives until the
        // server has it: if the server goes away with it in flight, or venus dies, it is
        // replayed (its op id makes a replay of an applied record harmless).
        // It leaves with the volume's other changes in log order (`sender.rs`).
        self.claim_log(cell, volume)?;
        let mut seq = 0;
        let ticket = self.ticket();
        let log = |r: &Record| {
            seq = self.with_room(|| Ok(self.cml.append_in_flight(conn.name(), r.clone())?))?;
            Ok(())
        };
        let answer = self.senders.send(conn.as_ref(), volume, record.clone(), chunks, log).await;
        if let Err(VenusError::Unreachable(_)) = answer {
            // The server went away with the record in flight: it waits in the log for
            // reintegration; meanwhile the cache shows it done.
            self.with_room(|| Ok(self.cml.keep_in_flight()?))?;
            self.mark_pending(cell, volume, true);
            let applied = self.apply_local(cell, &record.mutation)?;
            self.edit_listings(edits)?;
            return Ok(Committed { applied, logged: true });
        }
        // Connected, the record's fate is decided by this answer either way: a refusal is the
        // system call's error (the data it carried stays in the container), and either way the
        // record leaves the log.
        self.cml.answered(seq);
        let Mutated { result, promise } = answer?;
        let applied = result?;
        // Everything the change did to the cache, in one transaction: the volume's stamp is
        // never recorded without the changes it vouches for.
        let volume_state = self.own_change(cell, volume, applied.stamp, 1);
        let removed: Vec<GFid> = applied.removed.iter().map(|o| GFid::new(cell, Fid::new(volume, *o))).collect();
        // Replies to fetches sent before this answer may predate it: they are kept out.
        self.promises.changed_here(applied.attrs.iter().map(|a| GFid::new(cell, a.fid)));
        let mut batch = self.cache.batch()?;
        if let Some(state) = volume_state {
            batch.set_volume(cell, volume, state)?;
        }
        // Our change gave new versions to the objects it stamps: what we hold of those is that
        // version's, if nobody else's change came in between. Of the others (a file renamed
        // or linked) our change made no new version, so a new one is someone else's.
        let stamped = proto::rules::restamped(&record.mutation);
        for attr in &applied.attrs {
            batch.put_attr_with(cell, attr.clone(), stamped.contains(&Some(attr.fid.object)))?;
        }
        for g in &removed {
            batch.remove(g)?;
        }
        apply_edits(&mut batch, edits)?;
        batch.finish()?;
        // The server promises the writer everything the change touched, but that only means
        // our cached state is current where it was current before (the reply knows nothing of
        // other clients' changes we have not fetched): a promise we held is extended, a new
        // object is promised, and nothing else is.
        let created = record.mutation.created();
        for attr in &applied.attrs {
            let g = GFid::new(cell, attr.fid);
            if Some(attr.fid.object) == created || self.valid(&g) {
                self.promised(g, promise, ticket);
            }
        }
        for g in &removed {
            self.unpromise(g);
        }
        Ok(Committed { applied, logged: false })
    }

    /// The listing edits of a change that went into the log (the cache shows it done).
    fn edit_listings(&self, edits: &[ListingEdit]) -> Result<()> {
        let mut batch = self.cache.batch()?;
        apply_edits(&mut batch, edits)?;
        batch.finish()
    }

    fn dir_of(&self, ino: u64) -> Result<GFid> {
        self.object(ino)
    }

    fn new_attr(applied: &Applied, object: ObjectId) -> Result<Attr> {
        applied
            .attrs
            .iter()
            .find(|a| a.fid.object == object)
            .cloned()
            .ok_or_else(|| VenusError::Protocol("the server did not return the new object".into()))
    }

    /// Creates an object named `name` in a directory and returns what the kernel needs of it;
    /// `mutation` makes the change from the parent, the name, the new object and the time.
    async fn make(
        &self,
        parent: u64,
        name: &str,
        mutation: impl FnOnce(Fid, Name, ObjectId, Timestamp) -> Mutation,
    ) -> Result<(GFid, Attr)> {
        let name = Name::new(name)?;
        let p = self.dir_of(parent)?;
        self.others_logged_first(p).await;
        let object = ObjectId::random();
        let mut m = mutation(p.fid, name.clone(), object, Timestamp::now());
        let need = match &m {
            Mutation::MakeMountPoint { .. } => Rights::INSERT | Rights::ADMINISTER,
            _ => Rights::INSERT,
        };
        self.require_in(p, need).await?;
        // The server makes the caller the owner; say the same offline.
        let me = self.principal(p).as_owner();
        match &mut m {
            Mutation::Create { owner, .. }
            | Mutation::MakeDir { owner, .. }
            | Mutation::Symlink { owner, .. }
            | Mutation::MakeMountPoint { owner, .. }
            | Mutation::MakeNode { owner, .. } => *owner = me,
            _ => {}
        }
        let kind = match &m {
            Mutation::MakeDir { .. } => ObjectKind::Directory,
            Mutation::Symlink { .. } => ObjectKind::Symlink,
            Mutation::MakeMountPoint { .. } => ObjectKind::MountPoint,
            Mutation::MakeNode { kind, .. } => ObjectKind::from(*kind),
            _ => ObjectKind::File,
        };
        let entry = DirEntry { name, object, kind };
        let applied = self.commit(Change::new(p.cell, m).editing(vec![ListingEdit::Add(p, entry)])).await?.applied;
        let attr = Self::new_attr(&applied, object)?;
        if kind == ObjectKind::Directory {
            self.cache.inherit_access(&p, GFid::new(p.cell, attr.fid))?;
        }
        Ok((GFid::new(p.cell, attr.fid), attr))
    }

    /// `create(2)`: a new empty file, opened.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        flags: i32,
    ) -> Result<(Stat, u64, std::sync::Arc<super::Handle>)> {
        let stat = self.make_file(parent, name, mode, uid, gid).await?;
        let (fh, h) = self.open_whole(stat.ino, flags & !libc::O_TRUNC).await?;
        Ok((stat, fh, h))
    }

    /// A new empty file, not opened (`mknod(2)` of a regular file; `create` opens it).
    pub async fn make_file(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> Result<Stat> {
        let (g, attr) = self
            .make(parent, name, |parent, name, object, mtime| Mutation::Create {
                parent,
                name,
                object,
                mode,
                owner: uid,
                group: gid,
                mtime,
            })
            .await?;
        // A new file is empty: its container exists at once, no fetch needed.
        self.with_room(|| self.cache.make_container(&g))?;
        self.cache.set_local(&g, 0, false)?;
        Ok(self.stat_of(g, &attr))
    }

    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> Result<Stat> {
        let (g, attr) = self
            .make(parent, name, |parent, name, object, mtime| Mutation::MakeDir {
                parent,
                name,
                object,
                mode,
                owner: uid,
                group: gid,
                mtime,
            })
            .await?;
        self.cache.put_listing(g, Vec::new())?;
        Ok(self.stat_of(g, &attr))
    }

    pub async fn symlink(&self, parent: u64, name: &str, target: &str, uid: u32, gid: u32) -> Result<Stat> {
        let target = target.to_string();
        let (g, attr) = self
            .make(parent, name, |parent, name, object, mtime| Mutation::Symlink {
                parent,
                name,
                object,
                target,
                owner: uid,
                group: gid,
                mtime,
            })
            .await?;
        Ok(self.stat_of(g, &attr))
    }

    /// `mknod(2)` of a named pipe or a socket: only the name and attributes are shared; the pipe
    /// or socket itself lives in this client's kernel.
    pub async fn mknod(&self, parent: u64, name: &str, kind: NodeKind, mode: u32, uid: u32, gid: u32) -> Result<Stat> {
        let (g, attr) = self
            .make(parent, name, |parent, name, object, mtime| Mutation::MakeNode {
                parent,
                name,
                object,
                kind,
                mode,
                owner: uid,
                group: gid,
                mtime,
            })
            .await?;
        Ok(self.stat_of(g, &attr))
    }

    /// A mount point: a directory entry naming a volume (`venus mkmount`).
    pub async fn make_mount_point(&self, parent: u64, name: &str, target: &str, uid: u32) -> Result<()> {
        let target = target.to_string();
        self.make(parent, name, |parent, name, object, mtime| Mutation::MakeMountPoint {
            parent,
            name,
            object,
            target,
            owner: uid,
            mtime,
        })
        .await?;
        Ok(())
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> Result<Stat> {
        let g = self.object(ino)?;
        let p = self.dir_of(new_parent)?;
        if g.cell != p.cell || g.fid.volume != p.fid.volume {
            return Err(VenusError::Remote(RemoteError::CrossVolume));
        }
        let name = Name::new(new_name)?;
        self.others_logged_first(p).await;
        self.require_in(p, Rights::INSERT).await?;
        if self.status(g).await?.parent != Some(p.fid.object) {
            return Err(VenusError::Remote(RemoteError::CrossDirectoryLink));
        }
        let applied = self
            .commit(Change::new(p.cell, Mutation::Link { parent: p.fid, name: name.clone(), target: g.fid.object }))
            .await?
            .applied;
        let attr = Self::new_attr(&applied, g.fid.object)?;
        let entry = DirEntry { name, object: g.fid.object, kind: attr.kind };
        self.cache.add_entry(&p, entry)?;
        Ok(self.stat_of(g, &attr))
    }

    /// The entry `name` of a directory and what we know of the object it names.
    async fn entry(&self, dir: GFid, name: &str) -> Result<(DirEntry, GFid, Attr)> {
        let entries = self.listing(dir).await?;
        let e = entries.iter().find(|e| e.name.as_str() == name).cloned().ok_or(VenusError::NotFound)?;
        let g = GFid::new(dir.cell, Fid::new(dir.fid.volume, e.object));
        let attr = self.status(g).await?;
        Ok((e, g, attr))
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        let p = self.dir_of(parent)?;
        let _entered = self.enter(p).await;
        let (e, _g, attr) = self.entry(p, name).await?;
        if e.kind == ObjectKind::Directory {
            return Err(VenusError::IsDirectory);
        }
        self.require_in(p, Rights::DELETE).await?;
        let seen = Seen { object: e.object, base: Base::Version(attr.version) };
        let remove = Mutation::Remove { parent: p.fid, name: e.name.clone(), seen };
        self.commit(Change::new(p.cell, remove).editing(vec![ListingEdit::Remove(p, e.name)])).await?;
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        let p = self.dir_of(parent)?;
        let entries = self.listing(p).await?;
        let e = entries.iter().find(|e| e.name.as_str() == name).cloned().ok_or(VenusError::NotFound)?;
        if e.kind != ObjectKind::Directory {
            return Err(VenusError::NotDirectory);
        }
        self.require_in(p, Rights::DELETE).await?;
        let remove = Mutation::RemoveDir { parent: p.fid, name: e.name.clone(), object: e.object };
        self.commit(Change::new(p.cell, remove).editing(vec![ListingEdit::Remove(p, e.name)])).await?;
        Ok(())
    }

    /// `rename(2)`; `no_replace` is RENAME_NOREPLACE.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<()> {
        let from = self.dir_of(parent)?;
        let to = self.dir_of(new_parent)?;
        if from.cell != to.cell || from.fid.volume != to.fid.volume {
            return Err(VenusError::Remote(RemoteError::CrossVolume));
        }
        let _entered = self.enter(from).await;
        let src =
            self.listing(from).await?.iter().find(|e| e.name.as_str() == name).cloned().ok_or(VenusError::NotFound)?;
        // (A file with several names may not leave its directory: the rules say so, after
        // what the target name holds, as the server does.)
        let new_name = Name::new(new_name)?;
        let existing = self.listing(to).await?.iter().find(|e| e.name == new_name).cloned();
        // POSIX no-ops (same name, or two names of one file) change nothing and are not logged.
        if (from == to && src.name == new_name) || existing.as_ref().is_some_and(|e| e.object == src.object) {
            return Ok(());
        }
        let replaced = match &existing {
            Some(e) if no_replace => return Err(VenusError::Remote(RemoteError::Exists)),
            Some(e) => {
                let g = GFid::new(to.cell, Fid::new(to.fid.volume, e.object));
                let attr = self.status(g).await?;
                Some(Seen { object: e.object, base: Base::Version(attr.version) })
            }
            None => None,
        };
        self.require_in(from, Rights::DELETE).await?;
        let need = if replaced.is_some() { Rights::INSERT | Rights::DELETE } else { Rights::INSERT };
        self.require_in(to, need).await?;
        let moved = DirEntry { name: new_name.clone(), object: src.object, kind: src.kind };
        let rename = Mutation::Rename {
            from: from.fid,
            from_name: src.name.clone(),
            object: src.object,
            to: to.fid,
            to_name: new_name,
            replaced,
        };
        self.commit(
            Change::new(from.cell, rename)
                .editing(vec![ListingEdit::Remove(from, src.name), ListingEdit::Add(to, moved)]),
        )
        .await?;
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, req: SetAttrRequest) -> Result<Stat> {
        let g = self.object(ino)?;
        self.writable(g)?;
        let _entered = self.enter(g).await;
        let attr = self.status(g).await?;
        if req.size.is_some() {
            self.require(g, &attr, Rights::WRITE).await?;
        }
        if req.mode.is_some() || req.mtime.is_some() {
            let dir = self.dir_rights(super::access::governing(g, &attr)).await?;
            let owner = attr.owner == self.principal(g).as_owner() && self.principal(g) != proto::PtsId::ANONYMOUS;
            let may = dir.contains(Rights::WRITE) || (owner && dir.contains(Rights::INSERT));
            if !may {
                return Err(super::access::denied());
            }
        }
        // The owner as the kernel showed it is no change (`cp -p`, `tar` as the owner); another
        // uid names the AFS user who holds a token for it, or that AFS id (administrators only).
        let owner = req.uid.filter(|&u| u != self.local_owner(g.cell, attr.owner)).map(|u| self.cell_owner(g.cell, u));
        let changes_owner = owner.is_some_and(|u| u != attr.owner) || req.gid.is_some_and(|g| g != attr.group);
        if changes_owner && self.emulating(g.cell, g.fid.volume) {
            // Only administrators may, and that cannot be known offline.
            return Err(VenusError::Remote(RemoteError::NotAdmin));
        }
        if let Some(size) = req.size {
            // Truncation is a change of contents: done to the container, then stored.
            self.data(g).await?;
            let lock = self.fetch_lock(g);
            let _one_at_a_time = lock.lock().await;
            let path = self.cache.container(&g);
            // Held open meanwhile, so the container is not evicted or reused under the change.
            self.cache.opened(&g, true);
            let truncated = std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(size));
            let marked = truncated.map_err(VenusError::from).and_then(|()| self.cache.set_local(&g, size, true));
            let closed = self.cache.closed(&g, true);
            marked?;
            closed?;
            self.store(g).await?;
        }
        // POSIX chmod: a caller without privileges who is not in the file's group cannot make it
        // set-group-ID; the bit is dropped, the rest of the change stands.
        let mode = req.mode.map(|m| {
            let privileged = req.caller.uid == 0;
            let keeps_sgid = privileged || attr.kind != ObjectKind::File || req.caller.in_group(attr.group);
            if keeps_sgid { m } else { m & !libc::S_ISGID }
        });
        let set = SetAttrs { mode, owner, group: req.gid, mtime: req.mtime };
        if !set.is_empty() {
            let attr = self.status(g).await?;
            if let Some(t) = req.mtime
                && self.cache.get(&g).is_some_and(|c| c.has_data)
            {
                // A later store carries the container's mtime: keep it in step.
                set_mtime(&self.cache.container(&g), t)?;
            }
            self.commit(Change::new(g.cell, Mutation::SetAttr { fid: g.fid, base: Base::Version(attr.version), set }))
                .await?;
        }
        let attr = self.status(g).await?;
        Ok(self.stat_of(g, &attr))
    }

    /// `fallocate(2)` on an open file's container; stored at close like any change of it.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        use std::os::fd::AsRawFd;
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(VenusError::Io(std::io::Error::from_raw_os_error(libc::EBADF)));
        }
        let (Ok(offset), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(length)) else {
            return Err(VenusError::Io(std::io::Error::from_raw_os_error(libc::EFBIG)));
        };
        // SAFETY: a descriptor the handle owns; the kernel checks mode and range.
        if unsafe { libc::fallocate(h.file.as_raw_fd(), mode, offset, length) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        h.wrote();
        Ok(())
    }

    /// Writes to an open file's container (when the kernel does not pass writes through).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        h.file.write_all_at(data, offset)?;
        h.wrote();
        Ok(data.len())
    }

    /// `close(2)` of one descriptor: a changed file is stored, and the server's answer is the
    /// answer of `close`.
    ///
    /// A descriptor may be closed many times for one open (every `fork` copies it, every `exec`
    /// closes the copy), so concurrent flushes of one file are normal: they are serialized, and
    /// a flush that finds nothing new since the last store does nothing.
    pub async fn flush(&self, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        self.store_handle(&h).await?;
        if self.permits.take_send_at_close(&h.gfid) {
            self.on_server_or_durable(h.gfid).await?;
            let (cell, volume) = (h.gfid.cell, h.gfid.fid.volume);
            if self.permits.holds(cell, volume) && !self.has_pending(cell, volume) {
                self.measure_room(cell, volume).await;
            }
        }
        self.deferred_error(h.gfid)
    }

    /// A refusal of a change to `g` sent late (made under a write-back permit, or offline), for
    /// the application's next `fsync` or `close` of it.
    fn deferred_error(&self, g: GFid) -> Result<()> {
        match self.permits.take_deferred(&g) {
            Some(refusal) => Err(VenusError::Remote(refusal)),
            None => Ok(()),
        }
    }

    /// `fsync(2)` of a directory: its changes (and every change logged before them in its
    /// volume) are on the server when it returns, if the server can be reached.
    pub async fn fsync_dir(&self, ino: u64) -> Result<()> {
        let super::Node::Object(g) = self.node(ino)? else { return Ok(()) };
        self.on_server_or_durable(g).await?;
        self.deferred_error(g)
    }

    /// What is logged in `g`'s volume goes to the server now; if it cannot, the log is made
    /// to survive a crash of the machine.
    async fn on_server_or_durable(&self, g: GFid) -> Result<()> {
        let (cell, volume) = (g.cell, g.fid.volume);
        match self.send_logged_now(cell, volume).await {
            Ok(()) | Err(VenusError::Unreachable(_)) => {}
            Err(e) => tracing::info!(object = %g, error = %e, "logged changes not sent at fsync"),
        }
        if self.has_pending(cell, volume) {
            self.cml.sync()?;
        }
        Ok(())
    }

    async fn store_handle(&self, h: &super::Handle) -> Result<()> {
        if !h.writable {
            return Ok(());
        }
        let _entered = self.enter(h.gfid).await;
        let lock = self.fetch_lock(h.gfid);
        let _one_at_a_time = lock.lock().await;
        let Some(now) = h.unstored() else {
            return Ok(());
        };
        if self.cache.is_orphan(&h.gfid) {
            // Removed while open: what was written goes with the file, as on a local disk.
            h.settled_at(now);
            return Ok(());
        }
        if self.detached(h) {
            // The file's container is no longer the one this descriptor writes: the file was
            // removed, or its local version was kept aside as a conflict after a refused store.
            // What is written here belongs to no file; it is not stored over the server's.
            h.settled_at(now);
            return Err(VenusError::Io(std::io::Error::from_raw_os_error(libc::ESTALE)));
        }
        self.cache.set_local(&h.gfid, now.0, true)?;
        h.storing();
        match self.store(h.gfid).await {
            Ok(_) => {
                h.stored(now);
                Ok(())
            }
            Err(e) => {
                if self.cache.is_orphan(&h.gfid) {
                    // Removed during the store: nothing to keep, as above.
                    h.settled_at(now);
                    return Ok(());
                }
                if self.detached(h) {
                    // Kept aside: nothing is left to store again at release.
                    h.settled_at(now);
                } else {
                    h.store_failed();
                }
                Err(e)
            }
        }
    }

    /// Whether an open file's container is no longer the file's (removed, replaced, or kept
    /// aside since the descriptor was opened).
    fn detached(&self, h: &super::Handle) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(mine), current) = (h.file.metadata(), std::fs::metadata(self.cache.container(&h.gfid))) else {
            return false;
        };
        current.map_or(true, |c| c.ino() != mine.ino() || c.dev() != mine.dev())
    }

    /// `fsync(2)`: the file is on the server when it returns, even if it is being written
    /// through another descriptor at the same time (then the latest stable state is stored).
    pub async fn fsync(&self, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        for _ in 0..10 {
            match self.store_handle(&h).await {
                Err(VenusError::ChangedDuringStore) => continue,
                Err(e) => return Err(e),
                Ok(()) => {
                    // Logged (under a write-back permit, or while reintegrating): sent now. Still
                    // not on a server: the log and the data are made to survive a crash of the
                    // machine.
                    self.on_server_or_durable(h.gfid).await?;
                    if self.has_pending(h.gfid.cell, h.gfid.fid.volume) {
                        h.file.sync_all()?;
                    }
                    return self.deferred_error(h.gfid);
                }
            }
        }
        Err(VenusError::ChangedDuringStore)
    }

    /// The last reference to an open file is gone. What is still unstored (a flush that lost a
    /// race with a writer) is stored now; its errors can reach no one, so they are logged and
    /// the data stays dirty in the cache.
    pub async fn release(&self, fh: u64) {
        let Some(h) = self.take_handle(fh) else { return };
        match self.store_handle(&h).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(file = %h.gfid, error = %e, "storing at release failed; the changes stay in the cache")
            }
        }
        if let Err(e) = self.cache.closed(&h.gfid, h.writable) {
            tracing::warn!(file = %h.gfid, error = %e, "cannot record a file closed");
        }
        if h.writable {
            // A file just written may have filled the cache disk; closed, it can be evicted.
            self.cache.keep_room();
        }
    }
}

fn set_mtime(path: &std::path::Path, t: Timestamp) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| VenusError::Io(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: t.secs, tv_nsec: i64::from(t.nanos) },
    ];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat(2) requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

pub(crate) fn apply_edits(batch: &mut crate::cache::Batch<'_>, edits: &[ListingEdit]) -> Result<()> {
    for edit in edits {
        match edit {
            ListingEdit::Add(dir, entry) => batch.add_entry(dir, entry.clone())?,
            ListingEdit::Remove(dir, name) => batch.remove_entry(dir, name)?,
        }
    }
    Ok(())
}
