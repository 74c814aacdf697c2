//! Write-back: asking for volumes' permits, sending what was logged under them within the
//! window, renewing them, and giving one back when its server recalls it.
//!
//! A change that goes straight to the server asks (in the background) for its volume's permit.
//! Once granted, and once everything cached from the volume is known current (the permit means
//! nobody else changes it, so the cache then stays current without asking), changes in the
//! volume are logged and return: the volume's mode is `WriteBack`. The write-back loop sends
//! what was logged after the window (at once when a batch is full) through reintegration, the
//! one path every logged change takes, and renews permits as their leases run. When the server
//! recalls a permit (another client wants the volume), everything logged is sent, the permit
//! goes back, and the volume's cache is revalidated like after any reintegration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::{Fid, Mutation, ObjectKind, VolumeId};

use super::Venus;
use crate::counters;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::remote::PermitAnswer;

/// How often the write-back loop looks at its permits when nothing is logged.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// After a failed request for a permit, venus asks again no sooner than this.
const AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How long a clean stop waits for the answers to permit requests on their way.
const ASKS_AT_STOP: Duration = Duration::from_secs(5);

impl Venus {
    /// A change went straight to the server: ask for the volume's permit, in the background,
    /// unless asked for already or refused a moment ago.
    pub(crate) fn maybe_ask_permit(&self, cell: CellId, volume: VolumeId) {
        if self.read_only(cell, volume) || !self.permits.start_asking(cell, volume) {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move { me.ask_permit(cell, volume).await });
    }

    /// Whether venus holds the volume's write-back permit now.
    #[cfg(test)]
    pub(crate) fn holds_permit(&self, cell: CellId, volume: VolumeId) -> bool {
        self.permits.holds(cell, volume)
    }

    async fn ask_permit(self: Arc<Self>, cell: CellId, volume: VolumeId) {
        let Ok(conn) = self.cell(cell).cloned() else { return self.permits.refused(cell, volume, AFTER_FAILURE) };
        let asked = Instant::now();
        let lease = match conn.request_permit(volume).await {
            // Granted as venus stops: it goes straight back, so nobody waits out its lease.
            Ok(PermitAnswer::Granted(_)) if self.permits.closing() => {
                let _ = conn.return_permit(volume).await;
                return self.permits.ended(cell, volume);
            }
            Ok(PermitAnswer::Granted(lease)) => lease,
            Ok(PermitAnswer::Refused(retry)) => {
                tracing::debug!(%volume, ?retry, "write-back permit refused");
                return self.permits.refused(cell, volume, retry);
            }
            Err(e) => {
                tracing::debug!(%volume, error = %e, "cannot ask for a write-back permit");
                return self.permits.refused(cell, volume, AFTER_FAILURE);
            }
        };
        // Served without asking from now on: what is cached must be current first. A change of
        // ours still on its way (the store of the file whose create asked for the permit) can
        // move the volume on while it is checked: then it is checked again, a few times.
        let mut checked = self.known_current(cell, volume).await;
        for _ in 0..3 {
            if !matches!(checked, Err(VenusError::Protocol(_))) {
                break;
            }
            checked = self.known_current(cell, volume).await;
        }
        if let Err(e) = checked {
            tracing::info!(%volume, error = %e, "the volume's cache could not be checked; its write-back permit goes back");
            let _ = conn.return_permit(volume).await;
            return self.permits.refused(cell, volume, AFTER_FAILURE);
        }
        // Changes on their way to the server arrive before any logged from now on.
        let _switch = self.switching(cell, volume).await;
        if !self.permits.granted(cell, volume, asked, lease) {
            if self.permits.closing() {
                let _ = conn.return_permit(volume).await;
                self.permits.ended(cell, volume);
            }
            return;
        }
        if self.permits.holds(cell, volume) {
            self.counters.add(counters::PERMITS_GRANTED, 1);
            tracing::info!(cell = %conn.name(), %volume, ?lease, "write-back permit held");
            drop(_switch);
            self.measure_room(cell, volume).await;
        }
    }

    /// Makes sure every object cached from the volume is current (its stamp established).
    async fn known_current(self: &Arc<Self>, cell: CellId, volume: VolumeId) -> Result<()> {
        if self.volume_valid(cell, volume) {
            return Ok(());
        }
        let current =
            self.current_stamp(cell, volume).await?.ok_or(VenusError::Remote(proto::RemoteError::NoSuchVolume))?;
        self.establish(cell, vec![(volume, current)]).await?;
        if self.volume_valid(cell, volume) {
            Ok(())
        } else {
            Err(VenusError::Protocol("the volume changed while its cache was checked".into()))
        }
    }

    /// The write-back loop: sends what was logged under permits once the window has passed (or
    /// a batch is full), and renews the permits. Runs for as long as venus does.
    pub async fn write_back(self: Arc<Self>) {
        if self.permits.window().is_none() {
            return;
        }
        loop {
            self.permits.wait_logged(LOOK_EVERY).await;
            let due = |me: &Self| -> Vec<(CellId, VolumeId)> {
                me.permits.held().into_iter().filter(|(c, v)| me.has_pending(*c, *v)).collect()
            };
            if !due(&self).is_empty() {
                self.permits.wait_window().await;
                self.send_logged(due(&self)).await;
            }
            self.renew_permits().await;
        }
    }

    /// Sends what is logged in each volume (`venus sync`, `fsync` and the loop's window).
    async fn send_logged(self: &Arc<Self>, volumes: Vec<(CellId, VolumeId)>) {
        for (cell, volume) in volumes {
            self.permits.sending(cell, volume);
            if let Err(e) = self.reintegrate_volume(cell, volume).await {
                tracing::info!(%volume, error = %e, "changes made under a write-back permit not sent yet");
                self.note_postponed(cell, volume, Some(e.to_string()));
            }
        }
    }

    /// Renews permits a third into their lease; one no longer trusted (not renewed in time) or
    /// refused renewal is given back as a recalled one is.
    async fn renew_permits(self: &Arc<Self>) {
        let (renew, lapsed) = self.permits.due();
        for (cell, volume) in lapsed {
            tracing::warn!(%volume, "write-back permit not renewed within its lease; changes logged under it are sent as after a disconnection");
            self.counters.add(counters::PERMITS_LAPSED, 1);
            self.give_back_later(cell, volume);
        }
        for (cell, volume) in renew {
            let Ok(conn) = self.cell(cell).cloned() else { continue };
            let asked = Instant::now();
            match conn.request_permit(volume).await {
                Ok(PermitAnswer::Granted(lease)) => {
                    self.permits.granted(cell, volume, asked, lease);
                }
                Ok(PermitAnswer::Refused(_)) => {
                    tracing::info!(%volume, "write-back permit not renewed by its server");
                    self.counters.add(counters::PERMITS_LAPSED, 1);
                    self.give_back_later(cell, volume);
                }
                // Unreachable: the volume is disconnected, and the permit lapses here first.
                Err(e) => tracing::debug!(%volume, error = %e, "write-back permit not renewed"),
            }
        }
    }

    /// The server recalls a permit (another client wants the volume).
    pub(crate) fn on_recall(&self, cell: CellId, volume: VolumeId) {
        self.counters.add(counters::PERMIT_RECALLS, 1);
        tracing::debug!(%volume, "write-back permit recalled");
        self.give_back_later(cell, volume);
    }

    fn give_back_later(&self, cell: CellId, volume: VolumeId) {
        self.permits.recalled(cell, volume);
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move { me.give_back(cell, volume).await });
    }

    /// `venus disconnect`: the permits held in the cell (or on the one volume) are given back
    /// first, after sending what was logged under them.
    pub(crate) async fn leave_permits(&self, cell: CellId, volume: Option<VolumeId>) {
        let Some(me) = self.me.upgrade() else { return };
        for (c, v) in self.permits.held() {
            if c == cell && volume.is_none_or(|only| only == v) && self.permits.recalled(c, v) {
                me.clone().give_back(c, v).await;
            }
        }
    }

    /// A clean stop: what every permit holds is sent and the permits go back, so no other client
    /// waits for their leases to run out. What cannot be sent stays in the log for next time.
    /// A permit asked for just before the stop goes back when its answer comes (waited for
    /// up to [`ASKS_AT_STOP`]): granted after this looked, it would be held until its lease ran out.
    pub async fn give_back_all(&self) {
        let Some(me) = self.me.upgrade() else { return };
        self.permits.close();
        let asked_until = Instant::now() + ASKS_AT_STOP;
        while self.permits.asking() && Instant::now() < asked_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let held: Vec<_> = self.permits.held().into_iter().filter(|(c, v)| self.permits.recalled(*c, *v)).collect();
        futures_util::future::join_all(held.into_iter().map(|(c, v)| me.clone().give_back(c, v))).await;
    }

    /// Sends everything logged in the volume, gives the permit back, and checks the cache
    /// against the server again (what it holds was venus's own view while it held the permit).
    async fn give_back(self: Arc<Self>, cell: CellId, volume: VolumeId) {
        let Ok(conn) = self.cell(cell).cloned() else { return };
        match self.drain_volume(cell, volume).await {
            Ok(()) => {
                if let Err(e) = conn.return_permit(volume).await {
                    tracing::info!(%volume, error = %e, "write-back permit not given back; it ends with its lease");
                }
            }
            // The records stay in the log and go when the server answers again; the server
            // takes the permit back at the end of its lease meanwhile.
            Err(e) => tracing::info!(%volume, error = %e, "changes made under a recalled permit could not be sent yet"),
        }
        self.permits.ended(cell, volume);
        self.rooms.permit_ended((cell, volume));
        if !self.has_pending(cell, volume) {
            self.after_reintegration(cell, volume).await;
        }
    }

    /// Under a permit, what the cache lacks of what a change names is current on the server
    /// (nobody else changes the volume, and nothing of it changes here uncached): it is fetched,
    /// so the rules check the change against what the server would (offline it would be refused
    /// as not cached). The directories named, and what the names hold: a directory removed or
    /// replaced must be known empty.
    pub(crate) async fn fetch_named(&self, cell: CellId, m: &Mutation) -> Result<()> {
        let volume = m.volume();
        let named: Vec<(Fid, &proto::Name)> = match m {
            Mutation::Rename { from, from_name, to, to_name, .. } => vec![(*from, from_name), (*to, to_name)],
            other => other.target().into_iter().collect(),
        };
        for (dir, name) in named {
            let g = GFid::new(cell, dir);
            let listing = match self.cache.listing(&g) {
                Some(l) => l,
                None => self.listing(g).await?,
            };
            let Some(e) = listing.iter().find(|e| e.name == *name) else { continue };
            let child = GFid::new(cell, Fid::new(volume, e.object));
            if self.cache.attr(&child).is_none() {
                self.status(child).await?;
            }
            if e.kind == ObjectKind::Directory && !self.cache.has_listing(&child) {
                self.listing(child).await?;
            }
        }
        Ok(())
    }

    /// `venus sync` and `fsync`: what is logged in the volume goes to the server now, if it can
    /// be reached.
    pub(crate) async fn send_logged_now(&self, cell: CellId, volume: VolumeId) -> Result<()> {
        let Some(me) = self.me.upgrade() else { return Ok(()) };
        if !me.reachable(cell, volume) || !me.has_pending(cell, volume) {
            return Ok(());
        }
        me.reintegrate_volume(cell, volume).await
    }
}
