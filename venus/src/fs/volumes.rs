//! Volume promises: revalidating a whole volume with one comparison.
//!
//! Per volume, venus keeps the stamp as of which every object it has cached from the volume is
//! known to be current (persisted in the cache index), and, in memory, the server's promise to
//! break a volume callback on any change in the volume. While both hold, every cached object of
//! the volume is valid without asking: after a restart or a reconnection, one `ValidateVolumes`
//! per cell revalidates everything.
//!
//! A stamp is established in three steps: learn the current stamp S, revalidate the cached
//! objects that hold no promise of their own, then ask again whether S is still current; only if
//! nothing changed in between is S recorded. Any break touching the volume clears it; our own
//! changes advance it only when the server's stamp follows ours directly.

use std::sync::Arc;

use proto::msg::{AttrCheck, Promise, VolumeValidation};
use proto::{VolumeId, VolumeStamp};

use super::Venus;
use crate::cache::VolState;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::remote::{At, Checked};

/// Objects per `ValidateAttrs` request.
const VALIDATE_BATCH: usize = 5000;

impl Venus {
    pub(crate) fn volume_valid(&self, cell: CellId, volume: VolumeId) -> bool {
        self.promises.volume_holds(cell, volume) && self.cache.volume(cell, volume).stamp.is_some()
    }

    /// Forgets that a volume is known current (a break touched it).
    pub(crate) fn drop_volume(&self, cell: CellId, volume: VolumeId) {
        self.promises.drop_volume(cell, volume);
        let mut state = self.cache.volume(cell, volume);
        if state.stamp.take().is_some()
            && let Err(e) = self.cache.set_volume(cell, volume, state)
        {
            tracing::warn!(error = %e, "cannot record a volume's state");
        }
    }

    /// After our own change was applied: the volume is still known current if the server's new
    /// stamp directly follows the one we knew (nobody else changed anything in between), and
    /// the new stamp is the newest seen. Returns the volume's new state if it changed, for the
    /// caller to record with the change's other effects on the cache.
    pub(crate) fn own_change(
        &self,
        cell: CellId,
        volume: VolumeId,
        new: VolumeStamp,
        changes: u64,
    ) -> Option<VolState> {
        let mut state = self.cache.volume(cell, volume);
        let mut changed = false;
        match state.stamp {
            Some(old) if new.follows(&old, changes) && self.volume_valid(cell, volume) => {
                state.stamp = Some(new);
                changed = true;
            }
            Some(_) => {
                self.promises.drop_volume(cell, volume);
                state.stamp = None;
                changed = true;
            }
            None => {}
        }
        let behind = state.seen.is_some_and(|seen| new.went_backwards_from(&seen));
        if !behind && state.seen != Some(new) {
            state.seen = Some(new);
            changed = true;
        }
        changed.then_some(state)
    }

    /// Remembers the newest stamp seen from a volume's servers; says whether `stamp` went
    /// backwards from it (a restore from an older dump).
    pub(crate) fn note_stamp(&self, cell: CellId, volume: VolumeId, stamp: VolumeStamp) -> bool {
        let mut state = self.cache.volume(cell, volume);
        match state.seen {
            Some(seen) if stamp.went_backwards_from(&seen) => true,
            Some(seen) if seen == stamp => false,
            _ => {
                state.seen = Some(stamp);
                if let Err(e) = self.cache.set_volume(cell, volume, state) {
                    tracing::warn!(error = %e, "cannot record a volume's state");
                }
                false
            }
        }
    }

    /// Accepts a rewound volume's new history as the one to compare with from now on.
    pub(crate) fn accept_rewind(&self, cell: CellId, volume: VolumeId, stamp: VolumeStamp) -> Result<()> {
        let mut state = self.cache.volume(cell, volume);
        state.seen = Some(stamp);
        state.stamp = None;
        self.cache.set_volume(cell, volume, state)
    }

    /// The server's current stamp of a volume.
    pub(crate) async fn current_stamp(&self, cell: CellId, volume: VolumeId) -> Result<Option<VolumeStamp>> {
        let known = self.cache.volume(cell, volume).seen.unwrap_or_default();
        Ok(self.validate(cell, vec![(volume, known)]).await?.into_iter().next().and_then(|a| a.stamp))
    }

    /// Takes a volume promise from a request sent with `ticket` (see `promises.rs`).
    fn volume_promised(&self, cell: CellId, volume: VolumeId, p: Promise, ticket: super::promises::Ticket) {
        self.promises.promise_volume(cell, volume, p, ticket);
    }

    /// Compares volume stamps: one request per server holding some of the volumes. A server
    /// that does not answer leaves its volumes out (they are checked object by object when
    /// used) without holding up the others': a dead server of the root volume must not keep a
    /// replicated volume whose leader just changed from being revalidated at once. Fails only
    /// when no server answered.
    async fn validate(&self, cell: CellId, volumes: Vec<(VolumeId, VolumeStamp)>) -> Result<Vec<VolumeValidation>> {
        let conn = self.cell(cell)?;
        let mut by_server: std::collections::BTreeMap<proto::ServerId, Vec<(VolumeId, VolumeStamp)>> =
            std::collections::BTreeMap::new();
        for (v, stamp) in volumes {
            by_server.entry(conn.server_of(v).await?).or_default().push((v, stamp));
        }
        let mut out = Vec::new();
        let mut failed = None;
        for (server, volumes) in by_server {
            match self.validate_at(cell, server, volumes).await {
                Ok(answers) => out.extend(answers),
                Err(e) => {
                    tracing::info!(cell = cell.0, %server, error = %e, "volumes of this server not revalidated");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// `validate` at one server (following volumes that moved from it).
    async fn validate_at(
        &self,
        cell: CellId,
        server: proto::ServerId,
        volumes: Vec<(VolumeId, VolumeStamp)>,
    ) -> Result<Vec<VolumeValidation>> {
        let conn = self.cell(cell)?;
        let stamps = volumes.clone();
        let mut out = Vec::new();
        for a in conn.validate_volumes(server, volumes).await? {
            // Not there any more: it may have moved. Ask where it is, and ask there.
            let moved_to = match a.stamp {
                None => conn.locate(a.volume).await.ok().filter(|s| *s != server),
                Some(_) => None,
            };
            match moved_to {
                Some(to) => {
                    let known: Vec<_> = stamps.iter().filter(|(v, _)| *v == a.volume).copied().collect();
                    out.extend(conn.validate_volumes(to, known).await?);
                }
                None => out.push(a),
            }
        }
        Ok(out)
    }

    /// Revalidates every volume venus has cached objects of, in every cell: one request per cell
    /// when the stamps still hold, and a full revalidation of the volumes whose stamps do not.
    pub async fn revalidate_all(self: &Arc<Self>) {
        let cells: Vec<CellId> = self.cells().map(|(_, c)| c.id()).collect();
        for cell in cells {
            if let Err(e) = self.revalidate_cell(cell).await {
                tracing::info!(cell = cell.0, error = %e, "revalidation postponed");
            }
        }
    }

    pub async fn revalidate_cell(self: &Arc<Self>, cell: CellId) -> Result<()> {
        let _one_at_a_time = self.revalidating.lock().await;
        let volumes: Vec<(VolumeId, VolumeStamp)> = self
            .cache
            .cached_volumes()
            .into_iter()
            .filter(|(c, _, _)| *c == cell)
            .map(|(_, v, state)| (v, state.stamp.unwrap_or_default()))
            .collect();
        if volumes.is_empty() {
            return Ok(());
        }
        let ticket = self.ticket();
        let answers = self.validate(cell, volumes).await?;
        let mut changed = Vec::new();
        for answer in answers {
            if let Some(s) = answer.stamp
                && self.note_stamp(cell, answer.volume, s)
                && !self.has_pending(cell, answer.volume)
            {
                // Restored from an older dump, with nothing of ours pending: the server's
                // history is the one to follow (cached copies are revalidated below).
                tracing::warn!(volume = %answer.volume, "volume restored from an older state");
                self.accept_rewind(cell, answer.volume, s)?;
            }
            match (answer.valid, answer.promise, answer.stamp) {
                (true, Some(p), _) => {
                    self.volume_promised(cell, answer.volume, p, ticket);
                    self.counters.add(crate::counters::VOLUMES_VALIDATED, 1);
                }
                (_, _, Some(current)) => {
                    self.drop_volume(cell, answer.volume);
                    self.cache.stale_access(cell, Some(answer.volume), None);
                    // With our logged changes on top, the cache is revalidated once they are
                    // reintegrated, not before.
                    if !self.emulating(cell, answer.volume) {
                        changed.push((answer.volume, current));
                    }
                }
                (_, _, None) => tracing::info!(volume = %answer.volume, "volume no longer exists on its server"),
            }
        }
        if !changed.is_empty()
            && let Err(e) = self.establish(cell, changed).await
        {
            tracing::info!(cell = cell.0, error = %e, "volumes not revalidated");
        }
        Ok(())
    }

    /// Takes in what the server said of one object the client held as `held` (nothing, for an
    /// object it has not seen yet); says whether it changed.
    pub(crate) fn settle_check(
        &self,
        g: GFid,
        held: Option<&proto::Attr>,
        result: AttrCheck,
        promise: Promise,
        ticket: super::promises::Ticket,
    ) -> Result<bool> {
        match result {
            AttrCheck::Same { access } => {
                if let Some(attr) = held {
                    self.note_access(g, attr, access)?;
                    self.promised(g, promise, ticket);
                }
                Ok(false)
            }
            AttrCheck::Current { attr: now, access } => {
                // The same version: what is cached stays; names-only changes (a link made, the
                // file moved) show in the attributes.
                self.note_access(g, &now, access)?;
                if held.is_some_and(|a| a.nlink != now.nlink || a.parent != now.parent) {
                    self.forget_in_kernel(g);
                }
                self.take_fetched_attr(g.cell, now, ticket)?;
                self.promised(g, promise, ticket);
                Ok(false)
            }
            AttrCheck::Changed { attr: now, access } => {
                self.note_access(g, &now, access)?;
                if held.is_some() {
                    self.forget_in_kernel(g);
                }
                self.take_fetched_attr(g.cell, now, ticket)?;
                self.promised(g, promise, ticket);
                Ok(true)
            }
            AttrCheck::Gone => {
                // Gone as of the request, unless a change of ours (its creation replayed, say)
                // was answered since. Local changes are never dropped, whatever the server says.
                let gone = self.promises.take_fetched(&g, ticket, || match self.cache.get(&g) {
                    Some(c) if c.dirty => Ok(()),
                    _ => self.cache.remove(&g),
                })?;
                if gone {
                    self.unpromise(&g);
                    self.forget_in_kernel(g);
                }
                Ok(gone)
            }
            AttrCheck::Denied => {
                self.unpromise(&g);
                Ok(false)
            }
        }
    }

    /// Fetches the attributes of many objects of one volume in one request (`ValidateAttrs`
    /// with the versions held, none for objects never seen): AFS's bulk status, used before
    /// listing a directory with attributes.
    pub(crate) async fn bulk_status(&self, cell: CellId, volume: VolumeId, objects: &[GFid]) -> Result<()> {
        for batch in objects.chunks(VALIDATE_BATCH) {
            self.check_attrs(cell, At::ServerOf(volume), batch).await?;
        }
        Ok(())
    }

    /// One `ValidateAttrs` for `batch` (at most `VALIDATE_BATCH` objects), its answers taken
    /// in; returns the objects that changed or went away.
    async fn check_attrs(&self, cell: CellId, at: At, batch: &[GFid]) -> Result<Vec<GFid>> {
        let conn = self.cell(cell)?.clone();
        let held: Vec<(GFid, Option<proto::Attr>)> = batch.iter().map(|g| (*g, self.cache.attr(g))).collect();
        let objects = held.iter().map(|(g, a)| (g.fid, a.as_ref().map(|a| a.version.clone()).unwrap_or_default()));
        let ticket = self.ticket();
        let Checked { results, promise } = conn.validate_attrs(at, objects.collect()).await?;
        let mut changed = Vec::new();
        for ((g, attr), result) in held.into_iter().zip(results) {
            if self.settle_check(g, attr.as_ref(), result, promise, ticket)? {
                changed.push(g);
            }
        }
        Ok(changed)
    }

    /// Establishes that the cache is current as of each volume's `current` stamp: revalidates
    /// what has no promise, then confirms (one request per server) that nothing changed
    /// meanwhile.
    pub(super) async fn establish(self: &Arc<Self>, cell: CellId, volumes: Vec<(VolumeId, VolumeStamp)>) -> Result<()> {
        // Grouped by the server holding each volume; a few thousand objects per request.
        let conn = self.cell(cell)?.clone();
        let mut by_server: std::collections::BTreeMap<proto::ServerId, Vec<GFid>> = std::collections::BTreeMap::new();
        for (v, _) in &volumes {
            let stale = self.cache.objects_in(cell, *v).into_iter().filter(|g| !self.valid(g));
            by_server.entry(conn.server_of(*v).await?).or_default().extend(stale);
        }
        let mut relist = Vec::new();
        let mut batches: Vec<(proto::ServerId, Vec<GFid>)> = Vec::new();
        for (server, stale) in by_server {
            batches.extend(stale.chunks(VALIDATE_BATCH).map(|b| (server, b.to_vec())));
        }
        for (server, batch) in batches {
            // A changed directory whose listing we hold gets it refreshed below: the cache
            // stays useful for the next disconnection.
            let changed = self.check_attrs(cell, At::Server(server), &batch).await?;
            relist.extend(changed.into_iter().filter(|g| self.cache.has_listing(g)));
        }
        for g in relist {
            match self.listing(g).await {
                Ok(_) | Err(VenusError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let ticket = self.ticket();
        for a in self.validate(cell, volumes.clone()).await? {
            let Some(&(_, current)) = volumes.iter().find(|(v, _)| *v == a.volume) else { continue };
            if let (true, Some(p)) = (a.valid, a.promise) {
                let mut state = self.cache.volume(cell, a.volume);
                state.stamp = Some(current);
                self.cache.set_volume(cell, a.volume, state)?;
                self.volume_promised(cell, a.volume, p, ticket);
                self.counters.add(crate::counters::VOLUMES_VALIDATED, 1);
            }
        }
        Ok(())
    }
}
