//! Emulation: applying a mutation to the cache alone, while the volume is disconnected (or
//! still has logged changes to reintegrate).
//!
//! The change is checked against the cached state with the server's own rules ([`proto::rules`],
//! over the cache: see `CachedTree` for what a cache cannot know), logged in the client
//! modification log (durably, before the system call returns), and the rules' plan is carried
//! out on the cached attributes; callers edit the cached listings as they do when connected.
//! Records logged while disconnected take their bases from the log (the last logged change of
//! an object) so a chain of offline changes certifies at reintegration.

use proto::rules::{self, Entry, Node, Plan};
use proto::{Applied, Attr, Base, Fid, Mutation, Name, ObjectId, ObjectKind, OpId, Record, Timestamp};
use proto::{VersionVector, VolumeId, VolumeStamp};

use super::Venus;
use super::write::ListingEdit;
use crate::cache::{Cache, Listing};
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};

impl Venus {
    /// Logs a mutation without sending it and applies it to the cache, with the edits it makes
    /// to cached listings, in one cache transaction.
    pub(crate) fn log_offline(&self, cell: CellId, mut mutation: Mutation, edits: &[ListingEdit]) -> Result<Applied> {
        self.rebase(cell, &mut mutation)?;
        let volume = mutation.volume();
        let plan = rules::check(&self.cached(cell, volume), &mutation)?;
        self.claim_log(cell, volume)?;
        // The rules delete a file with its last name.
        let last_name = matches!(mutation, Mutation::Remove { .. }) && !plan.deleted.is_empty();
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
        self.carry_out(cell, &record.mutation, &plan, edits)
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

    fn cached(&self, cell: CellId, volume: VolumeId) -> CachedTree<'_> {
        CachedTree { cache: &self.cache, cell, volume }
    }

    /// Shows a change sent to a server that went away before it answered: the record is in the
    /// log, and the cache shows it done. Where the cache cannot confirm it by the rules (it lacks
    /// a listing, say, or holds a stale one), it shows only the object the change creates, so the
    /// call can answer; reintegration and revalidation settle the rest.
    pub(crate) fn apply_local(&self, cell: CellId, m: &Mutation) -> Result<Applied> {
        match rules::check(&self.cached(cell, m.volume()), m) {
            Ok(plan) => self.carry_out(cell, m, &plan, &[]),
            Err(e) => {
                tracing::info!(verb = m.verb(), error = %e, "a change in flight the cache cannot confirm waits for reintegration");
                let now = Timestamp::now();
                let created: Vec<Attr> =
                    rules::New::of(m).map(|new| new.attr(m.volume(), now, VersionVector::new())).into_iter().collect();
                for a in &created {
                    self.cache.put_attr(cell, a.clone())?;
                }
                Ok(Applied { attrs: created, removed: Vec::new(), stamp: VolumeStamp::default() })
            }
        }
    }

    /// Carries a plan out on the cached attributes. Versions stay as the server gave them, and a
    /// new object has none: the server assigns versions at reintegration. Callers edit the cached
    /// listings, as they do when connected.
    fn carry_out(&self, cell: CellId, m: &Mutation, plan: &Plan, edits: &[ListingEdit]) -> Result<Applied> {
        let now = Timestamp::now();
        let volume = m.volume();
        let mut attrs: Vec<Attr> = Vec::new();
        for t in &plan.touched {
            let cached = match &plan.created {
                Some(new) if new.object == t.object => Some(new.attr(volume, now, VersionVector::new())),
                _ => self.cache.attr(&GFid::new(cell, Fid::new(volume, t.object))),
            };
            // Gone from the cache since the rules looked at it: nothing to show.
            let Some(mut a) = cached else { continue };
            if t.changes {
                own_change(m, &mut a);
                t.apply(&mut a, now);
                if t.listing && a.kind == ObjectKind::Directory {
                    // A cached link count may be short; a directory has at least `.` and its name.
                    a.nlink = a.nlink.max(2);
                }
            }
            attrs.push(a);
        }
        let cell_name = self.cell(cell)?.name().to_string();
        let mut batch = self.cache.batch()?;
        for a in &attrs {
            batch.put_emulated(cell, a.clone())?;
        }
        for o in &plan.deleted {
            let g = GFid::new(cell, Fid::new(volume, *o));
            // The log may still need the data (a store replayed before the removal): keep the
            // container until reintegration; revalidation forgets it once the server has.
            // (A file still open stays an orphan for its descriptors: see `Cache::remove`.)
            let needed = self.cml.base_of(&cell_name, g.fid)?.is_some();
            if !needed {
                batch.remove(&g)?;
            }
        }
        super::write::apply_edits(&mut batch, edits)?;
        batch.finish()?;
        Ok(Applied { attrs, removed: plan.deleted.clone(), stamp: VolumeStamp::default() })
    }
}

/// What a Store or SetAttr changes in the object it is about, as the cache shows it.
fn own_change(m: &Mutation, a: &mut Attr) {
    match m {
        Mutation::Store { fid, chunks, mtime, .. } if fid.object == a.fid.object => {
            a.size = proto::chunk::total_len(chunks);
            a.mtime = *mtime;
        }
        Mutation::SetAttr { fid, set, .. } if fid.object == a.fid.object => {
            rules::set_attrs(set, &mut a.mode, &mut a.owner, &mut a.group, &mut a.mtime);
        }
        _ => {}
    }
}

/// What the cache holds of one volume, as the mutation rules see it. The cache holds part of the
/// tree, and the server certifies every record again when it arrives: what the cache lacks, it
/// says it lacks (`NotCached`, as emulation always has), and what it cannot know it leaves to
/// the server.
struct CachedTree<'a> {
    cache: &'a Cache,
    cell: CellId,
    volume: VolumeId,
}

impl CachedTree<'_> {
    fn attr(&self, o: ObjectId) -> Option<Attr> {
        self.cache.attr(&GFid::new(self.cell, Fid::new(self.volume, o)))
    }

    fn listing(&self, dir: ObjectId) -> Result<Listing> {
        self.cache.listing(&GFid::new(self.cell, Fid::new(self.volume, dir))).ok_or(VenusError::NotCached)
    }
}

impl rules::Tree for CachedTree<'_> {
    type Error = VenusError;

    /// An object the cache does not hold may be gone or merely not cached: either way the cache
    /// cannot vouch for the change.
    fn node(&self, id: ObjectId) -> Result<Option<Node>> {
        let a = self.attr(id).ok_or(VenusError::NotCached)?;
        Ok(Some(Node { kind: a.kind, nlink: a.nlink, parent: a.parent, version: a.version, last_op: None }))
    }

    fn entry(&self, dir: ObjectId, name: &Name) -> Result<Option<Entry>> {
        let listing = self.listing(dir)?;
        Ok(listing.iter().find(|e| &e.name == name).map(|e| Entry { object: e.object, kind: e.kind }))
    }

    fn is_empty(&self, dir: ObjectId) -> Result<bool> {
        Ok(self.listing(dir)?.is_empty())
    }

    /// New ids are random and the server refuses a duplicate; the cache can only say whether it
    /// holds one.
    fn is_free(&self, id: ObjectId) -> Result<bool> {
        Ok(self.attr(id).is_none())
    }

    /// A record's base is the last logged change of its object (see `rebase`) or the version the
    /// server last gave: whether that still holds is for the server to say at reintegration.
    fn certifies(&self, _: &Node, _: &Base) -> bool {
        true
    }

    /// Where the cache's knowledge of the tree ends, so does the walk up (the server walks it
    /// again); a directory that is its own parent is a volume's root.
    fn parent(&self, dir: ObjectId) -> Result<Option<ObjectId>> {
        Ok(self.attr(dir).and_then(|a| a.parent).filter(|&p| p != dir))
    }
}

/// Cached parents that never reach the root (stale views of moves made elsewhere): the change
/// cannot be checked, and is refused as the server refuses one on a damaged tree.
impl From<rules::Cycle> for VenusError {
    fn from(c: rules::Cycle) -> Self {
        VenusError::Remote(c.into())
    }
}

#[cfg(test)]
mod tests {
    use proto::{ConflictKind, DirEntry, RemoteError, Seen, ServerId};

    use super::*;

    const CELL: CellId = CellId(1);
    const V: VolumeId = VolumeId(2);
    const D: ObjectId = ObjectId(0x1_0001);
    const SUB: ObjectId = ObjectId(0x1_0002);
    const F: ObjectId = ObjectId(0x1_0003);

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn attr(o: ObjectId, kind: ObjectKind, parent: ObjectId) -> Attr {
        let new = rules::New {
            object: o,
            parent,
            name: name("x"),
            kind,
            mode: 0o755,
            owner: 0,
            group: 0,
            mtime: Timestamp::default(),
            link: None,
        };
        new.attr(V, Timestamp::default(), VersionVector::first(ServerId(1)))
    }

    fn entry(n: &str, object: ObjectId, kind: ObjectKind) -> DirEntry {
        DirEntry { name: name(n), object, kind }
    }

    /// `/d/sub` and `/d/f` with every attribute cached, and the listings of `/` and `/d`.
    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let g = |o| GFid::new(CELL, Fid::new(V, o));
        cache.put_attr(CELL, attr(ObjectId::ROOT, ObjectKind::Directory, ObjectId::ROOT)).unwrap();
        cache.put_attr(CELL, attr(D, ObjectKind::Directory, ObjectId::ROOT)).unwrap();
        cache.put_attr(CELL, attr(SUB, ObjectKind::Directory, D)).unwrap();
        cache.put_attr(CELL, attr(F, ObjectKind::File, D)).unwrap();
        cache.put_listing(g(ObjectId::ROOT), vec![entry("d", D, ObjectKind::Directory)]).unwrap();
        cache
            .put_listing(g(D), vec![entry("sub", SUB, ObjectKind::Directory), entry("f", F, ObjectKind::File)])
            .unwrap();
        (dir, cache)
    }

    fn check(cache: &Cache, m: &Mutation) -> Result<Plan> {
        rules::check(&CachedTree { cache, cell: CELL, volume: V }, m)
    }

    fn rename(from: ObjectId, from_name: &str, object: ObjectId, to: ObjectId, to_name: &str) -> Mutation {
        let (from, to) = (Fid::new(V, from), Fid::new(V, to));
        Mutation::Rename { from, from_name: name(from_name), object, to, to_name: name(to_name), replaced: None }
    }

    #[test]
    fn the_servers_refusals_offline() {
        let (_d, cache) = cache();
        let err = check(&cache, &rename(ObjectId::ROOT, "d", D, SUB, "x")).unwrap_err();
        assert_eq!(err.to_errno(), libc::EINVAL, "{err}");
        let rmdir = Mutation::RemoveDir { parent: Fid::root(V), name: name("d"), object: D };
        let err = check(&cache, &rmdir).unwrap_err();
        assert!(matches!(err, VenusError::Remote(RemoteError::Conflict(ConflictKind::DirectoryNotEmpty))), "{err}");
        assert_eq!(err.to_errno(), libc::ENOTEMPTY);
        let err = check(&cache, &rename(D, "f", F, D, "sub")).unwrap_err();
        assert_eq!(err.to_errno(), libc::EEXIST, "{err}");
    }

    #[test]
    fn what_the_cache_does_not_hold_it_cannot_vouch_for() {
        let (_d, cache) = cache();
        // `sub`'s listing is not cached: whether it is empty is unknown.
        let rmdir = Mutation::RemoveDir { parent: Fid::new(V, D), name: name("sub"), object: SUB };
        assert!(matches!(check(&cache, &rmdir), Err(VenusError::NotCached)));
        let gone = Mutation::SetAttr {
            fid: Fid::new(V, ObjectId(0x9_9999)),
            base: Base::AfterOp(OpId(1)),
            set: Default::default(),
        };
        assert!(matches!(check(&cache, &gone), Err(VenusError::NotCached)));
    }

    #[test]
    fn what_only_the_server_knows_is_left_to_it() {
        let (_d, cache) = cache();
        // A base naming a logged op certifies at reintegration, not here.
        let store = Mutation::Store {
            fid: Fid::new(V, F),
            base: Base::AfterOp(OpId(7)),
            chunks: vec![],
            mtime: Timestamp::default(),
        };
        check(&cache, &store).unwrap();
        let seen = Seen { object: F, base: Base::AfterOp(OpId(7)) };
        let plan = check(&cache, &Mutation::Remove { parent: Fid::new(V, D), name: name("f"), seen }).unwrap();
        assert_eq!(plan.deleted, vec![F]);
        // Above a directory the cache does not hold, the walk up ends: `/e/s` may move into
        // `sub` with `/d` gone from the cache.
        let (e, s) = (ObjectId(0x1_0009), ObjectId(0x1_000a));
        cache.put_attr(CELL, attr(e, ObjectKind::Directory, ObjectId::ROOT)).unwrap();
        cache.put_attr(CELL, attr(s, ObjectKind::Directory, e)).unwrap();
        cache.put_listing(GFid::new(CELL, Fid::new(V, e)), vec![entry("s", s, ObjectKind::Directory)]).unwrap();
        cache.put_listing(GFid::new(CELL, Fid::new(V, SUB)), vec![]).unwrap();
        cache.remove(&GFid::new(CELL, Fid::new(V, D))).unwrap();
        check(&cache, &rename(e, "s", s, SUB, "s")).unwrap();
    }
}
