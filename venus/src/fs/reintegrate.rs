//! Reintegration: replaying a volume's log to its server once it answers again.
//!
//! Volume by volume, in order, in bounded batches. Data first: each logged store's container is
//! scanned again and only the chunks the server lacks are sent. The server certifies every
//! record and applies the batch in one transaction; records it refuses become conflicts, with
//! the local version kept (`conflicts.rs`). Records are taken from the log with `first()`, which
//! freezes them: a connection cut mid-way only means the same records are sent again, and their
//! op ids make the replay harmless.

use std::sync::Arc;

use proto::{Applied, Fid, Mutation, ObjectKind, RemoteError, VolumeId};

use super::Venus;
use super::store::{
    CUT_IN_MEMORY, Collected, SEND_WITHOUT_ASKING, Scanned, Uploaded, refused_for_good, scan_off_runtime,
};
use crate::cache::LogOwner;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::remote::Remote;
use crate::user;

/// Records per Reintegrate request.
const BATCH: usize = 200;
/// Answers settled under one hold of the volume (see the settling loop).
const SETTLE_AT_ONCE: usize = 16;

impl Venus {
    /// The background heartbeat: notices unreachable servers answering again, and drains the
    /// logs of volumes whose servers answer.
    pub async fn tick(self: &Arc<Self>) {
        let cells: Vec<(CellId, Arc<dyn Remote>)> = self.cells().map(|(_, c)| (c.id(), c.clone())).collect();
        for (cell, conn) in cells {
            let forced = self.links.cell_forced(cell);
            if conn.any_down() && !forced && conn.probe().await {
                tracing::info!(cell = %conn.name(), "servers answer again");
                // Refresh the hoard: things may have changed while we were away.
                self.hoarding.want_walk();
            }
        }
        if self.links.any_pending() {
            self.reintegrate_all().await;
        }
        // The cache's disk: room for the databases, the reserve back when there is room.
        self.cache.keep_room();
        self.log_unstored_closed();
    }

    /// Replays every volume with logged changes whose servers answer.
    pub async fn reintegrate_all(self: &Arc<Self>) {
        let pending = self.links.pending();
        for (cell, volume) in pending {
            if !self.reachable(cell, volume) {
                continue;
            }
            match self.reintegrate_volume(cell, volume).await {
                Ok(()) => self.note_postponed(cell, volume, None),
                Err(e) => {
                    tracing::info!(cell = cell.0, %volume, error = %e, "reintegration postponed");
                    self.note_postponed(cell, volume, Some(e.to_string()));
                }
            }
        }
    }

    /// Claims a volume's log for the running operation's user before a record goes in. As in
    /// Coda, a log holds one user's changes: they are replayed with that user's token, so
    /// another user's offline change to the volume waits until the log is drained.
    pub(crate) fn claim_log(&self, cell: CellId, volume: VolumeId) -> Result<()> {
        let me = LogOwner { uid: user::current_uid(), user: self.tokens.principal(cell) };
        let mut state = self.cache.volume(cell, volume);
        if self.has_pending(cell, volume)
            && let Some(owner) = state.log_owner
            && owner != me
        {
            return Err(VenusError::LogOwner(format!(
                "volume {volume} holds offline changes of uid {} still to reintegrate",
                owner.uid
            )));
        }
        if state.log_owner != Some(me) {
            state.log_owner = Some(me);
            self.cache.set_volume(cell, volume, state)?;
        }
        Ok(())
    }

    /// Replays a volume's log, and then (unless venus holds the volume's write-back permit, and
    /// with it the only view of the volume that counts) checks the cache against the server.
    pub async fn reintegrate_volume(self: &Arc<Self>, cell: CellId, volume: VolumeId) -> Result<()> {
        self.drain_volume(cell, volume).await?;
        if !self.permits.holds(cell, volume) && !self.permits.returning(cell, volume) {
            self.after_reintegration(cell, volume).await;
        }
        Ok(())
    }

    /// Replays a volume's log as the user who made the changes; waits (returns an error) while
    /// that user has no token for the identity they wrote under.
    pub(crate) async fn drain_volume(self: &Arc<Self>, cell: CellId, volume: VolumeId) -> Result<()> {
        let Some(owner) = self.cache.volume(cell, volume).log_owner else {
            return self.reintegrate_as_owner(cell, volume).await;
        };
        if owner.user != proto::PtsId::ANONYMOUS
            && self.tokens.get(cell, owner.uid).map(|t| t.body.user) != Some(owner.user)
        {
            return Err(VenusError::LogOwner(format!(
                "waiting for uid {} to log in (venus login) to reintegrate volume {volume}",
                owner.uid
            )));
        }
        user::as_user(owner.uid, self.reintegrate_as_owner(cell, volume)).await
    }

    async fn reintegrate_as_owner(self: &Arc<Self>, cell: CellId, volume: VolumeId) -> Result<()> {
        // One reintegration per volume at a time.
        let lock = self.fetch_lock(GFid::new(cell, Fid::root(volume)).reintegration_key());
        let _one_at_a_time = lock.lock().await;
        let conn = self.cell(cell)?.clone();
        let name = conn.name().to_string();
        let mut missing_rounds = 0;
        let mut replayed = 0u64;
        // A server restored from an older dump must never have newer local data stored over
        // its history: every logged store of the volume becomes a kept copy instead. (Even
        // under a write-back permit: a `vos restore` recalls it, but a server's disk copied
        // back from a backup while it was down knows nothing of it.)
        let permitted = self.permits.holds(cell, volume) || self.permits.returning(cell, volume);
        let current = self.current_stamp(cell, volume).await?;
        let rewound = current.is_some_and(|s| self.note_stamp(cell, volume, s));
        if rewound {
            tracing::warn!(cell = %name, %volume, "the volume went back in time (restored from a dump); local changes are kept as conflicts");
        }
        // Changes made meanwhile are logged (the volume is pending) and drained by the same
        // loop. One logged after the last look found the log empty marked the volume pending
        // itself (logging marks after appending), and clearing the mark would strand it in
        // the log while later changes go straight to the server: so the mark is cleared first
        // and the log looked at once more.
        // This window's changes are sent; the log may still be empty afterwards, and then the
        // volume is no longer pending (another user's change waits for exactly that).
        let mut window_sent = false;
        loop {
            loop {
                if !self.reachable(cell, volume) {
                    return Err(VenusError::Unreachable("the volume is disconnected".into()));
                }
                let entries = self.cml.first(&name, volume, BATCH)?;
                if entries.is_empty() {
                    break;
                }
                // Under a write-back permit the log is sent window by window: a batch that is not
                // full is the last of this one (chasing a writer would send it one change at a
                // time). A recalled permit's log is sent to the end.
                let last_of_window = entries.len() < BATCH && self.permits.holds(cell, volume);
                let sending = std::time::Instant::now();
                let (mut records, mut refused) = self.upload_data(cell, volume, &entries).await?;
                let mut entries = entries;
                // Data refused behind other records (removals that free the room, say): those
                // go first, and the refused data is tried again at the head of the next batch.
                let first_refused = refused.iter().map(|(at, _)| *at).min();
                let cut = first_refused.is_some_and(|at| at > 0);
                if let Some(at) = first_refused.filter(|at| *at > 0) {
                    entries.truncate(at);
                    records.truncate(at);
                    refused.clear();
                }
                let last_of_window = last_of_window && !cut;
                // A store whose data the server would not take (no space, quota) is settled as a
                // conflict now, its data kept on this machine; the records behind it go on.
                let refused_at =
                    |i: usize, _: &proto::Record| refused.iter().find(|(at, _)| *at == i).map(|(_, r)| r.clone());
                let (entries, records) = self.settle_aside(cell, entries, records, refused_at).await?;
                // A server restored from an older dump: every store becomes a kept copy beside the
                // server's version; the other records go on to the server.
                let (entries, records) = if rewound {
                    let rewound_store = |_: usize, r: &proto::Record| {
                        matches!(r.mutation, Mutation::Store { .. })
                            .then_some(RemoteError::Conflict(proto::ConflictKind::VolumeRewound))
                    };
                    self.settle_aside(cell, entries, records, rewound_store).await?
                } else {
                    (entries, records)
                };
                if entries.is_empty() {
                    continue;
                }
                let results = conn.reintegrate(volume, records.clone()).await?.results;
                let mut retry = false;
                let took = sending.elapsed();
                let answered: Vec<_> = entries.iter().zip(&records).zip(results).collect();
                let (mut accepted, mut accepted_bytes) = (0, 0);
                // A record leaving the log and its answer reaching the cache are one step for
                // changes being made meanwhile: one based on what the cache held between the two
                // would carry a version the server has moved on, with no record left in the log
                // to base it on instead. The answers are settled a few at a time, so a writer
                // under a permit waits for a few, not for the whole batch.
                'settle: for chunk in answered.chunks(SETTLE_AT_ONCE) {
                    let _settling = self.exclusive(cell, volume).await;
                    // Out of the log first: a file is clean once no record of it is left. The
                    // run of applied records at the chunk's head leaves in one transaction
                    // (settling one of them then sees none of the others, whose answers follow).
                    let head: Vec<u64> = chunk.iter().take_while(|(_, r)| r.is_ok()).map(|((e, _), _)| e.seq).collect();
                    self.cml.remove(&head)?;
                    // The last record of the head that stamps each object: settling an earlier
                    // one sees the later one as still logged, as it was a moment ago.
                    let mut last_stamp = std::collections::HashMap::new();
                    for (i, ((_, r), _)) in chunk[..head.len()].iter().enumerate() {
                        for o in cml::stamped(&r.mutation) {
                            last_stamp.insert(o, i);
                        }
                    }
                    for (i, ((entry, record), result)) in chunk.iter().enumerate() {
                        match result {
                            Ok(applied) => {
                                accepted += 1;
                                accepted_bytes += super::drain::bytes_of(&record.mutation);
                                if i >= head.len() {
                                    self.cml.remove(&[entry.seq])?;
                                }
                                let later = |o: proto::ObjectId| last_stamp.get(&o).is_some_and(|&k| k > i);
                                self.settled(cell, &record.mutation, applied, later).await?;
                                replayed += 1;
                                self.counters.add(crate::counters::RECORDS_REINTEGRATED, 1);
                                continue;
                            }
                            // Chunks swept between upload and commit: upload again (bounded).
                            Err(RemoteError::MissingChunks(_)) if missing_rounds < 3 => {
                                retry = true;
                                continue;
                            }
                            Err(refusal) => match self.refused_late(cell, record, refusal.clone()).await {
                                Ok(()) => {
                                    // Later answers of this batch may have failed only because of
                                    // this one; they go again (applied ones are answered from memory).
                                    self.cml.remove(&[entry.seq])?;
                                    break 'settle;
                                }
                                // Retried later; the recovery's own op ids make a retry harmless.
                                Err(e @ VenusError::Unreachable(_)) => return Err(e),
                                Err(e) => {
                                    // The record is settled as a conflict even if keeping a copy
                                    // failed: the local data stays in the cache, and the listing
                                    // says so.
                                    tracing::error!(op = %record.op, error = %e, "could not keep the local version beside the server's");
                                    self.record_failed(cell, record, refusal, &e)?;
                                }
                            },
                        }
                        self.cml.remove(&[entry.seq])?;
                    }
                }
                self.drains.sent(cell, volume, accepted, accepted_bytes, took);
                if retry {
                    missing_rounds += 1;
                } else if last_of_window {
                    window_sent = true;
                    break;
                }
            }
            // Changes that read their bases from the emulated cache are committed (logged)
            // before the volume is connected, and none reads while it switches.
            let switch = self.exclusive(cell, volume).await;
            self.mark_pending(cell, volume, false);
            let more = self.cml.has_pending(&name, volume)?;
            drop(switch);
            if !more {
                break;
            }
            self.mark_pending(cell, volume, true);
            if window_sent {
                // The rest was logged after this window's last batch: the next window's.
                return Ok(());
            }
        }
        if rewound && let Some(s) = current {
            self.accept_rewind(cell, volume, s)?;
        }
        // What was sent is clean now, and may go if the disk is tight (a big file written
        // under a permit filled it, say).
        if replayed > 0 {
            self.cache.keep_room();
        }
        if permitted {
            tracing::debug!(cell = %name, %volume, records = replayed, "sent under a write-back permit");
        } else {
            tracing::info!(cell = %name, %volume, records = replayed, "reintegrated");
        }
        Ok(())
    }

    /// The cache held venus's emulated view of the volume; from now on it is checked against
    /// the server again.
    pub(crate) async fn after_reintegration(self: &Arc<Self>, cell: CellId, volume: VolumeId) {
        self.drop_volume(cell, volume);
        for g in self.cache.objects_in(cell, volume) {
            self.unpromise(&g);
        }
        if let Err(e) = self.revalidate_cell(cell).await {
            tracing::info!(error = %e, "revalidation after reintegration postponed");
        }
    }

    /// A logged change the server refused: kept as a conflict (its data beside the server's),
    /// and reported to the next `fsync` or `close` of what it concerns.
    async fn refused_late(&self, cell: CellId, record: &proto::Record, refusal: RemoteError) -> Result<()> {
        self.permits.defer(cell, &record.mutation, &refusal);
        // The emulated listings show the refused change: fetched again from the server.
        let volume = record.mutation.volume();
        for dir in proto::rules::restamped(&record.mutation).into_iter().flatten() {
            self.cache.drop_listing(&GFid::new(cell, Fid::new(volume, dir)))?;
        }
        self.conflict(cell, record, refusal).await
    }

    /// Data first: the current contents of every stored file of a batch, only what the server
    /// lacks. Small files are cut in memory and their chunks sent together; large ones are cut
    /// and uploaded one by one. Returns the records as they go (chunk lists of the data now on
    /// the server), and the stores whose data the server refused, by index.
    async fn upload_data(
        &self,
        cell: CellId,
        volume: VolumeId,
        entries: &[cml::Entry],
    ) -> Result<(Vec<proto::Record>, Vec<(usize, RemoteError)>)> {
        let mut records = Vec::with_capacity(entries.len());
        let mut refused = Vec::new();
        let mut collected = Collected::default();
        // The records whose chunks are in `collected`.
        let mut in_collected = Vec::new();
        // Stores whose chunk lists changed: the log takes them (in one transaction) before the
        // batch is sent, so a resend after a crash carries what the server may have applied.
        let mut refreshed = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let mut record = e.record.clone();
            if let Mutation::Store { fid, chunks, mtime, .. } = &mut record.mutation {
                let g = GFid::new(cell, *fid);
                let path = self.cache.container(&g);
                let size = std::fs::metadata(&path).ok().map(|m| m.len());
                let cut = match size {
                    Some(n) if n <= CUT_IN_MEMORY => Some(scan_off_runtime(&path, n <= SEND_WITHOUT_ASKING).await?),
                    _ => None,
                };
                match cut {
                    Some(Scanned { chunks: cut_chunks, offsets, mtime: cut_mtime, bytes: Some(bytes), .. }) => {
                        collected.add(&cut_chunks, &offsets, &bytes)?;
                        in_collected.push(i);
                        *chunks = cut_chunks;
                        *mtime = cut_mtime;
                        refreshed.push((e.seq, record.clone()));
                        if collected.full() {
                            let batch = std::mem::take(&mut collected);
                            refuse_all(
                                self.upload_collected(cell, volume, batch).await,
                                &mut in_collected,
                                &mut refused,
                            )?;
                        }
                    }
                    // Large (or grown since it was looked at).
                    _ if size.is_some() => match self.scan_and_upload(g, &path).await {
                        Ok((_, Uploaded::ServerGone(e))) => return Err(e),
                        Ok((scanned, Uploaded::All)) => {
                            *chunks = scanned.chunks;
                            *mtime = scanned.mtime;
                            refreshed.push((e.seq, record.clone()));
                        }
                        Err(VenusError::Remote(r)) if refused_for_good(&r) => refused.push((i, r)),
                        Err(e) => return Err(e),
                    },
                    _ => {}
                }
            }
            records.push(record);
        }
        refuse_all(self.upload_collected(cell, volume, collected).await, &mut in_collected, &mut refused)?;
        self.with_room(|| Ok(self.cml.replace(&refreshed)?))?;
        Ok((records, refused))
    }

    /// Settles as conflicts the records of a batch that `refusal_of` names (their data kept),
    /// takes them out of the log, and returns the rest of the batch.
    async fn settle_aside(
        &self,
        cell: CellId,
        entries: Vec<cml::Entry>,
        records: Vec<proto::Record>,
        refusal_of: impl Fn(usize, &proto::Record) -> Option<RemoteError>,
    ) -> Result<(Vec<cml::Entry>, Vec<proto::Record>)> {
        let mut rest = (Vec::new(), Vec::new());
        for (i, (e, r)) in entries.into_iter().zip(records).enumerate() {
            let Some(refusal) = refusal_of(i, &r) else {
                rest.0.push(e);
                rest.1.push(r);
                continue;
            };
            match self.refused_late(cell, &r, refusal.clone()).await {
                Ok(()) => {}
                Err(err @ VenusError::Unreachable(_)) => return Err(err),
                Err(err) => self.record_failed(cell, &r, &refusal, &err)?,
            }
            self.cml.remove(&[e.seq])?;
        }
        Ok(rest)
    }

    /// A record the server applied (and already out of the log): files take their server
    /// versions; a file with no logged change left is clean, its container the server's
    /// version. Directories are left for revalidation, as later records may still change them
    /// locally.
    /// `later_in_batch` tells the objects that records of the same batch, settled after this
    /// one but already out of the log, stamp.
    async fn settled(
        &self,
        cell: CellId,
        mutation: &Mutation,
        applied: &Applied,
        later_in_batch: impl Fn(proto::ObjectId) -> bool,
    ) -> Result<()> {
        let name = self.cell(cell)?.name().to_string();
        let logged =
            |fid: Fid| -> Result<bool> { Ok(later_in_batch(fid.object) || self.cml.base_of(&name, fid)?.is_some()) };
        // What the change deleted and no logged change needs any more goes from the cache
        // (emulated, its container was kept for the records still to send).
        for o in &applied.removed {
            let g = GFid::new(cell, Fid::new(mutation.volume(), *o));
            if !logged(g.fid)? {
                self.cache.remove(&g)?;
            }
        }
        let stamped = proto::rules::restamped(mutation);
        // What the change made is ours too: a file made offline and still open (or written)
        // must have its container based on the first version the server gave it, or its next
        // store would be refused.
        let ours = |o: proto::ObjectId| stamped.contains(&Some(o)) || mutation.created() == Some(o);
        // As a close does: a store being logged for one of the files right now is not missed.
        // (Locked in one order, should a change name two files.)
        let mut files: Vec<GFid> =
            applied.attrs.iter().filter(|a| a.kind != ObjectKind::Directory).map(|a| GFid::new(cell, a.fid)).collect();
        files.sort_by_key(|g| (g.fid.volume, g.fid.object));
        files.dedup();
        let mut one_at_a_time = Vec::with_capacity(files.len());
        for g in &files {
            one_at_a_time.push(self.fetch_lock(*g).lock_owned().await);
        }
        self.promises.changed_here(files.iter().copied());
        // A later logged change of an object (a chmod after a create in a directory, say) is
        // already in what the cache shows: the server's new version is taken, but not its
        // attributes of this moment, which the kernel could otherwise read and keep.
        let later: Vec<bool> = applied.attrs.iter().map(|a| logged(a.fid)).collect::<Result<_>>()?;
        // Everything the answer changes in the cache, in one transaction.
        let mut batch = self.cache.batch()?;
        for (attr, later) in applied.attrs.iter().zip(later) {
            let g = GFid::new(cell, attr.fid);
            let merged;
            let attr = match batch.get(&g) {
                Some(shown) if later => {
                    let mut shown = shown.attr.clone();
                    shown.version = attr.version.clone();
                    merged = shown;
                    &merged
                }
                _ => attr,
            };
            // A directory's listing already holds this change (emulated when it was logged):
            // it stays if nobody else's change came in between, so a holder of a write-back
            // permit keeps its directories across a recall and can go on offline from them.
            // A file is what it was made from (an attribute change), or what was sent (a
            // store); a rename or link made no new version of it.
            batch.put_attr_with(cell, attr.clone(), ours(attr.fid.object))?;
            if attr.kind != ObjectKind::Directory
                && let Some(c) = batch.get(&g)
                && c.dirty
                && !later
            {
                batch.set_local(&g, c.data_size, false)?;
            }
        }
        batch.finish()?;
        drop(one_at_a_time);
        Ok(())
    }
}

/// The outcome of uploading collected small files: a refusal refuses every record in it.
fn refuse_all(result: Result<()>, records: &mut Vec<usize>, refused: &mut Vec<(usize, RemoteError)>) -> Result<()> {
    let taken = std::mem::take(records);
    match result {
        Ok(()) => Ok(()),
        Err(VenusError::Remote(r)) if refused_for_good(&r) => {
            refused.extend(taken.into_iter().map(|i| (i, r.clone())));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl GFid {
    /// A key no real object uses, for locking a volume's reintegration.
    fn reintegration_key(self) -> GFid {
        GFid::new(self.cell, Fid::new(self.fid.volume, proto::ObjectId(0)))
    }
}
