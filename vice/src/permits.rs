//! Write-back permits: a client may change a volume on its own for a while, and the server
//! recalls the permit before anyone else sees the volume.
//!
//! A permit covers a whole read-write volume, as Coda's write-back caching did, not one
//! directory: the volume is already the unit of everything a client logs and replays (its
//! modification log, its sender, its version stamp, its emulated state), a rename or hard link
//! anywhere in it stays inside one permit, and a volume is most often one person's home or
//! project. Two clients working in one volume simply lose write-back there: a volume another
//! client used in the last [`QUIET`] gets no permit.
//!
//! While a client holds the permit, every request of another client that reads, changes, or
//! validates anything in the volume (and every admin step that copies it: dump, clone, freeze,
//! restore over it, removal) first recalls it. The holder sends what it logged and returns the
//! permit; only then is the other request served, so it never sees a state older than what the
//! holder's system calls already returned. A holder that does not return it within its lease
//! (partitioned, asleep) loses it: its logged changes are then reintegrated like disconnected
//! ones, certified against whatever happened since. The holder's own requests on the volume
//! renew the lease, so a recall waits as long as the holder keeps sending and no longer.
//!
//! Granting closes the volume's gate: requests of other clients already being served finish
//! first, and every other client's callback promise in the volume is broken (a client trusting
//! its cache would not ask, and so would never cause a recall). Requests pass the gate shared;
//! a grant takes it alone. The gates are a fixed set of stripes, so their memory is bounded
//! whatever volume ids clients send.
//!
//! Permits are recorded in the volume store (`volumes::permits`) when granted and forgotten
//! when returned or taken back, so a restarted server still recalls them; leases are not
//! recorded: each restored permit gets a fresh one, time for its holder to reconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::msg::Push;
use proto::{ClientId, VolumeId};
use tokio::sync::{OwnedRwLockReadGuard, RwLock, watch};
// Tokio's clock, so that tests can run leases with time paused.
use tokio::time::Instant;
use volumes::Store;

use crate::callbacks::Callbacks;

/// A lease when the server's configuration names none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// A volume another client used this recently gets no permit: write-back is for a volume one
/// client uses, and granting it back and forth would cost a recall per change.
pub const QUIET: Duration = Duration::from_secs(5);
/// Permits held at most (like the callback table, the server's state is bounded).
const MAX_PERMITS: usize = 100_000;
/// Volumes whose last use by a client is remembered, at most.
const MAX_USED: usize = 200_000;
/// Stripes of gates.
const STRIPES: usize = 256;
/// How long the holder's venus may take to take in a recall (not to act on it).
const RECALL_ACK: Duration = Duration::from_secs(5);

/// A pass through a volume's gate, held while a request is served.
pub type Pass = OwnedRwLockReadGuard<()>;

/// The answer to a request for a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Granted(Duration),
    /// Ask again after this long.
    Refused(Duration),
}

/// Counts since start, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PermitReport {
    pub held: usize,
    pub granted: u64,
    pub recalled: u64,
    pub returned: u64,
    /// Taken back at the end of a lease, unreturned.
    pub expired: u64,
}

struct Held {
    holder: ClientId,
    until: Instant,
    /// A recall was sent: the holder must give it back, not renew it.
    recalled: bool,
}

#[derive(Default)]
struct State {
    held: HashMap<VolumeId, Held>,
    /// The last client to use each volume, and when.
    used: HashMap<VolumeId, (ClientId, Instant)>,
    report: PermitReport,
}

impl State {
    /// Whether `client` may be granted `volume` now; else how long to wait.
    fn may_grant(&mut self, client: ClientId, volume: VolumeId, now: Instant, lease: Duration) -> Result<(), Duration> {
        match self.held.get(&volume) {
            Some(h) if h.holder == client && h.recalled => return Err(lease),
            Some(h) if h.holder != client && now < h.until => return Err(h.until - now),
            _ => {}
        }
        if let Some((other, at)) = self.used.get(&volume)
            && *other != client
            && now.duration_since(*at) < QUIET
        {
            return Err(QUIET - now.duration_since(*at));
        }
        if self.held.len() >= MAX_PERMITS {
            self.held.retain(|_, h| h.until > now);
            if self.held.len() >= MAX_PERMITS {
                return Err(lease);
            }
        }
        Ok(())
    }

    fn note_use(&mut self, client: ClientId, volume: VolumeId, now: Instant) {
        if self.used.len() >= MAX_USED {
            self.used.retain(|_, (_, at)| now.duration_since(*at) < QUIET);
        }
        self.used.insert(volume, (client, now));
    }
}

/// What a waiting request does about a permit in its way.
enum Step {
    /// Nothing is in the way any more.
    Clear,
    /// The lease ran out unreturned: it was taken back.
    Expired,
    /// Wait for the holder until `until` (telling it first, if `tell`).
    Wait { holder: ClientId, until: Instant, tell: bool },
}

pub struct Permits {
    /// Zero: no permits are granted.
    lease: Duration,
    state: Mutex<State>,
    gates: Vec<Arc<RwLock<()>>>,
    /// Bumped whenever a permit ends, for the requests waiting on one.
    ended: watch::Sender<u64>,
}

impl Permits {
    /// The permits of a server starting up: `restored` are those its store recorded, each with a
    /// fresh lease for its holder to come back in.
    pub fn new(lease: Duration, restored: Vec<(VolumeId, ClientId)>) -> Permits {
        let now = Instant::now();
        let mut state = State::default();
        for (volume, holder) in restored {
            state.held.insert(volume, Held { holder, until: now + lease, recalled: false });
        }
        Permits {
            lease,
            state: Mutex::new(state),
            gates: (0..STRIPES).map(|_| Arc::new(RwLock::new(()))).collect(),
            ended: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(volume: VolumeId) -> usize {
        (volume.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % STRIPES
    }

    pub fn report(&self) -> PermitReport {
        let s = self.lock();
        PermitReport { held: s.held.len(), ..s.report }
    }

    /// Waits until `client` may be served on `volumes`: a permit another client holds on one
    /// of them is recalled first. The passes returned keep grants out while the request is
    /// served. No pass is held while a recall is waited for.
    pub async fn enter(
        &self,
        client: ClientId,
        volumes: &[VolumeId],
        callbacks: &Callbacks,
        store: &Arc<Store>,
    ) -> Vec<Pass> {
        if volumes.is_empty() {
            return Vec::new();
        }
        let mut stripes: Vec<usize> = volumes.iter().map(|v| Self::stripe(*v)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        loop {
            let mut passes = Vec::with_capacity(stripes.len());
            // In order: a request holding several never waits in a cycle with another.
            for &s in &stripes {
                passes.push(self.gates[s].clone().read_owned().await);
            }
            let now = Instant::now();
            let blocked = {
                let mut state = self.lock();
                let blocked = volumes.iter().copied().find(|v| state.held.get(v).is_some_and(|h| h.holder != client));
                if blocked.is_none() {
                    for &v in volumes {
                        match state.held.get_mut(&v) {
                            // The holder's own traffic renews it (a recalled one too: it is
                            // sending what it logged).
                            Some(h) if h.holder == client => h.until = now + self.lease,
                            _ => state.note_use(client, v, now),
                        }
                    }
                }
                blocked
            };
            match blocked {
                None => return passes,
                Some(v) => {
                    drop(passes);
                    self.recall(v, client, callbacks, store).await;
                }
            }
        }
    }

    /// Waits for the permit on `volume` to end: returned by its holder (told to, once), or its
    /// lease run out.
    async fn recall(&self, volume: VolumeId, requester: ClientId, callbacks: &Callbacks, store: &Arc<Store>) {
        let mut ended = self.ended.subscribe();
        loop {
            let now = Instant::now();
            let step = {
                let mut state = self.lock();
                let step = match state.held.get_mut(&volume) {
                    None => Step::Clear,
                    Some(h) if h.holder == requester => Step::Clear,
                    Some(h) if now >= h.until => Step::Expired,
                    Some(h) => {
                        let tell = !std::mem::replace(&mut h.recalled, true);
                        Step::Wait { holder: h.holder, until: h.until, tell }
                    }
                };
                match step {
                    Step::Expired => {
                        if let Some(h) = state.held.remove(&volume) {
                            state.report.expired += 1;
                            tracing::warn!(%volume, holder = %h.holder, "write-back permit not returned within its lease; taken back (the holder's changes will be certified like disconnected ones)");
                        }
                    }
                    Step::Wait { tell: true, .. } => state.report.recalled += 1,
                    _ => {}
                }
                step
            };
            match step {
                Step::Clear => return,
                Step::Expired => {
                    self.forget(volume, store).await;
                    return;
                }
                Step::Wait { holder, until, tell } => {
                    if tell {
                        tracing::debug!(%volume, %holder, by = %requester, "recalling a write-back permit");
                        send_recall(callbacks.connection(holder), holder, volume);
                    }
                    tokio::select! {
                        _ = ended.changed() => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
            }
        }
    }

    /// A client said Hello: permits of its that were recalled while it had no connection (a
    /// restarted server, a client coming back) are recalled again on the new one.
    pub fn hello(&self, client: ClientId, conn: &quinn::Connection) {
        let recalled: Vec<VolumeId> =
            self.lock().held.iter().filter(|(_, h)| h.holder == client && h.recalled).map(|(v, _)| *v).collect();
        for volume in recalled {
            send_recall(Some(conn.clone()), client, volume);
        }
    }

    /// Grants (or renews) the permit on `volume` to `client`, if nobody else uses the volume.
    /// `writable`: the volume is a read-write volume of this server, not frozen or moving.
    pub async fn ask(
        &self,
        client: ClientId,
        volume: VolumeId,
        writable: bool,
        callbacks: &Callbacks,
        store: &Arc<Store>,
    ) -> Ask {
        if self.lease.is_zero() || !writable {
            return Ask::Refused(Duration::from_secs(3600));
        }
        let now = Instant::now();
        {
            let mut state = self.lock();
            if let Some(h) = state.held.get_mut(&volume)
                && h.holder == client
                && !h.recalled
            {
                h.until = now + self.lease;
                return Ask::Granted(self.lease);
            }
            if let Err(wait) = state.may_grant(client, volume, now, self.lease) {
                return Ask::Refused(wait);
            }
        }
        // The gate closed: what other clients are being served on the volume ends first, and
        // nothing of theirs starts until the permit is in place (and then it is recalled).
        let _closed = self.gates[Self::stripe(volume)].clone().write_owned().await;
        if let Err(wait) = self.lock().may_grant(client, volume, Instant::now(), self.lease) {
            return Ask::Refused(wait);
        }
        // Whoever trusts a cached copy from the volume must ask again (and so recall).
        callbacks.break_volume_except(volume, client).await;
        let (db, recorded) = (store.clone(), volume);
        match tokio::task::spawn_blocking(move || db.note_permit(recorded, client)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(%volume, error = %e, "cannot record a write-back permit; not granted");
                return Ask::Refused(self.lease);
            }
            Err(e) => {
                tracing::error!(error = %e, "recording a permit failed");
                return Ask::Refused(self.lease);
            }
        }
        let mut state = self.lock();
        state.held.insert(volume, Held { holder: client, until: Instant::now() + self.lease, recalled: false });
        state.report.granted += 1;
        tracing::debug!(%volume, %client, "write-back permit granted");
        Ask::Granted(self.lease)
    }

    /// The holder gives the permit back (a request for it from anyone else changes nothing).
    pub async fn give_back(&self, client: ClientId, volume: VolumeId, store: &Arc<Store>) {
        let ended = {
            let mut state = self.lock();
            let mine = state.held.get(&volume).is_some_and(|h| h.holder == client);
            if mine {
                state.held.remove(&volume);
                state.report.returned += 1;
            }
            mine
        };
        if ended {
            self.forget(volume, store).await;
        }
    }

    /// The permit on `volume` ended: off the disk, and the requests waiting for it told.
    async fn forget(&self, volume: VolumeId, store: &Arc<Store>) {
        let db = store.clone();
        match tokio::task::spawn_blocking(move || db.end_permit(volume)).await {
            Ok(Ok(())) => {}
            // A permit left on disk is restored and recalled after a restart: a delay, no harm.
            Ok(Err(e)) => tracing::warn!(%volume, error = %e, "cannot record a permit's end"),
            Err(e) => tracing::error!(error = %e, "recording a permit's end failed"),
        }
        self.ended.send_modify(|n| *n += 1);
    }
}

/// Tells the holder to give its permit back (in the background: the waiting request waits for
/// the permit, not for this).
fn send_recall(conn: Option<quinn::Connection>, holder: ClientId, volume: VolumeId) {
    let Some(conn) = conn else {
        tracing::info!(%volume, %holder, "the permit's holder is not connected; waiting for it or for the lease");
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = proto::client::send_push(&conn, &Push::Recall { volume }, RECALL_ACK).await {
            tracing::info!(%volume, %holder, error = %e, "recall not delivered; waiting for the lease");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), proto::ServerId(1)).unwrap());
        (dir, store)
    }

    const A: ClientId = ClientId(1);
    const B: ClientId = ClientId(2);
    const V: VolumeId = VolumeId(7);

    #[tokio::test]
    async fn a_permit_is_renewed_by_its_holder_and_refused_to_others() {
        let (_d, store) = store();
        let cb = Callbacks::new(Duration::from_millis(100));
        let p = Permits::new(Duration::from_secs(30), vec![]);
        assert_eq!(p.ask(A, V, true, &cb, &store).await, Ask::Granted(Duration::from_secs(30)));
        assert_eq!(p.ask(A, V, true, &cb, &store).await, Ask::Granted(Duration::from_secs(30)));
        assert!(matches!(p.ask(B, V, true, &cb, &store).await, Ask::Refused(_)));
        assert!(matches!(p.ask(B, VolumeId(8), false, &cb, &store).await, Ask::Refused(_)), "not writable here");
        assert_eq!(store.permits().unwrap(), vec![(V, A)], "recorded");
        // The holder's own requests pass at once.
        let passes = p.enter(A, &[V], &cb, &store).await;
        assert_eq!(passes.len(), 1);
        p.give_back(A, V, &store).await;
        assert!(store.permits().unwrap().is_empty());
        assert_eq!(p.report(), PermitReport { held: 0, granted: 1, recalled: 0, returned: 1, expired: 0 });
    }

    #[tokio::test]
    async fn another_clients_request_waits_for_the_return_and_then_the_volume_is_shared_for_a_while() {
        let (_d, store) = store();
        let cb = Arc::new(Callbacks::new(Duration::from_millis(100)));
        let p = Arc::new(Permits::new(Duration::from_secs(30), vec![]));
        assert!(matches!(p.ask(A, V, true, &cb, &store).await, Ask::Granted(_)));
        let waiting = {
            let (p, cb, store) = (p.clone(), cb.clone(), store.clone());
            tokio::spawn(async move { p.enter(B, &[VolumeId(3), V], &cb, &store).await.len() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "B waits while A holds the permit");
        assert_eq!(p.report().recalled, 1);
        // A, recalled, still sends (its requests pass) and may not renew.
        assert_eq!(p.enter(A, &[V], &cb, &store).await.len(), 1);
        assert!(matches!(p.ask(A, V, true, &cb, &store).await, Ask::Refused(_)));
        p.give_back(A, V, &store).await;
        assert_eq!(waiting.await.unwrap(), 2, "two volumes in distinct stripes");
        // B used the volume just now: A gets no permit back yet.
        assert!(matches!(p.ask(A, V, true, &cb, &store).await, Ask::Refused(w) if w <= QUIET));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreturned_permit_is_taken_back_when_its_lease_ends() {
        let (_d, store) = store();
        let cb = Callbacks::new(Duration::from_millis(100));
        let p = Permits::new(Duration::from_secs(10), vec![(V, A)]);
        let before = tokio::time::Instant::now();
        p.enter(B, &[V], &cb, &store).await;
        assert!(before.elapsed() >= Duration::from_secs(10), "waited out the restored permit's lease");
        assert_eq!(p.report(), PermitReport { held: 0, granted: 0, recalled: 1, returned: 0, expired: 1 });
        // A comes back late: its return changes nothing, and the volume was B's a moment ago.
        p.give_back(A, V, &store).await;
        assert!(matches!(p.ask(A, V, true, &cb, &store).await, Ask::Refused(_)));
    }

    #[tokio::test]
    async fn no_lease_means_no_permits() {
        let (_d, store) = store();
        let cb = Callbacks::new(Duration::from_millis(100));
        let p = Permits::new(Duration::ZERO, vec![]);
        assert!(matches!(p.ask(A, V, true, &cb, &store).await, Ask::Refused(_)));
    }
}
