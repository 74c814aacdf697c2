//! Write-back permits as venus holds them: which volumes it may change on its own for now, and
//! what the write-back loop has to send.
//!
//! While venus holds a volume's permit (granted by the volume's server, see `vice::permits`),
//! changes in the volume are applied to the cache and logged, as when disconnected, and the
//! system call returns; the write-back loop (`write_back.rs`) sends what was logged within the
//! window, in batches. The server recalls the permit before it serves any other client on the
//! volume; venus then sends everything and gives it back.
//!
//! Venus counts a permit lost before the server does: it takes the lease as running from when
//! it asked, and stops trusting it at three quarters of it. So venus never logs a change under a
//! permit the server has already taken back, whatever the delays on the way.
//!
//! Errors from changes sent late (quota, rights, a conflict) wait here for the next `fsync` or
//! `close` of the object they concern, which reports them; they are in `venus conflicts` too.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proto::{Fid, Mutation, RemoteError, VolumeId};
use tokio::sync::Notify;

use super::lock;
use crate::ids::{CellId, GFid};

/// Changes logged under a permit that fill a batch: sent at once, without waiting out the window.
pub(crate) const FULL_BATCH: usize = 200;
/// After a permit ends, venus does not ask for the volume's again for this long (the server
/// would refuse: another client just used it).
const AFTER_END: Duration = Duration::from_secs(5);
/// Deferred errors kept at most.
const MAX_DEFERRED: usize = 10_000;

type Key = (CellId, VolumeId);

enum Slot {
    /// A request for the permit is on its way.
    Asking,
    Held {
        asked: Instant,
        lease: Duration,
        /// Changes logged since the last send.
        logged: usize,
    },
    /// Recalled: what was logged is being sent, then the permit goes back.
    Returning,
    /// Not to be asked for before then.
    NotBefore(Instant),
}

impl Slot {
    fn trusted_until(asked: Instant, lease: Duration) -> Instant {
        asked + lease * 3 / 4
    }
}

pub(crate) struct Permits {
    /// How long a change logged under a permit may wait before it is sent; `None`: venus asks
    /// for no permits (every connected change waits for the server).
    window: Option<Duration>,
    slots: Mutex<HashMap<Key, Slot>>,
    /// Venus is stopping: no permit is asked for, and one granted now goes straight back.
    closing: AtomicBool,
    /// Something was logged under a permit: the write-back loop's window starts.
    logged: Notify,
    /// A batch is full: send now.
    full: Notify,
    deferred: Mutex<HashMap<GFid, RemoteError>>,
    /// Files whose logged store might not fit the volume's room: their close sends the log and
    /// answers with the server's verdict, as a close without a permit does.
    send_at_close: Mutex<HashSet<GFid>>,
}

impl Permits {
    pub fn new(window: Option<Duration>) -> Permits {
        Permits {
            window,
            slots: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            logged: Notify::new(),
            full: Notify::new(),
            deferred: Mutex::new(HashMap::new()),
            send_at_close: Mutex::new(HashSet::new()),
        }
    }

    pub fn window(&self) -> Option<Duration> {
        self.window
    }

    /// Whether venus holds the volume's permit (and trusts it still).
    pub fn holds(&self, cell: CellId, volume: VolumeId) -> bool {
        match lock(&self.slots).get(&(cell, volume)) {
            Some(Slot::Held { asked, lease, .. }) => Instant::now() < Slot::trusted_until(*asked, *lease),
            _ => false,
        }
    }

    /// Whether the permit is being given back.
    pub fn returning(&self, cell: CellId, volume: VolumeId) -> bool {
        matches!(lock(&self.slots).get(&(cell, volume)), Some(Slot::Returning))
    }

    /// Claims the right to ask for the volume's permit now: false when write-back is off, the
    /// permit is held or asked for, or was refused a moment ago.
    pub fn start_asking(&self, cell: CellId, volume: VolumeId) -> bool {
        if self.window.is_none() || self.closing.load(Ordering::Relaxed) {
            return false;
        }
        let mut slots = lock(&self.slots);
        let free = match slots.get(&(cell, volume)) {
            None => true,
            Some(Slot::NotBefore(t)) => Instant::now() >= *t,
            Some(_) => false,
        };
        if free {
            slots.insert((cell, volume), Slot::Asking);
        }
        free
    }

    /// The server granted (or renewed) the permit asked for at `asked`. Says whether venus
    /// holds it now: not when it was recalled or ended meanwhile (a late answer does not undo
    /// that), nor when venus is stopping (the asker gives it back, then calls [`Self::ended`]).
    pub fn granted(&self, cell: CellId, volume: VolumeId, asked: Instant, lease: Duration) -> bool {
        let mut slots = lock(&self.slots);
        let logged = match slots.get(&(cell, volume)) {
            Some(Slot::Held { logged, .. }) => *logged,
            Some(Slot::Asking) if !self.closing.load(Ordering::Relaxed) => 0,
            _ => return false,
        };
        slots.insert((cell, volume), Slot::Held { asked, lease, logged });
        true
    }

    /// Venus is stopping: from now on no permit is asked for, and one whose request is on its
    /// way goes back as soon as it is granted.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether venus is stopping (see [`Self::close`]).
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Whether a request for a permit is on its way.
    pub fn asking(&self) -> bool {
        lock(&self.slots).values().any(|s| matches!(s, Slot::Asking))
    }

    /// No permit for now; not asked for again before `retry`.
    pub fn refused(&self, cell: CellId, volume: VolumeId, retry: Duration) {
        lock(&self.slots).insert((cell, volume), Slot::NotBefore(Instant::now() + retry));
    }

    /// The server recalled the permit; says whether venus held it.
    pub fn recalled(&self, cell: CellId, volume: VolumeId) -> bool {
        matches!(lock(&self.slots).insert((cell, volume), Slot::Returning), Some(Slot::Held { .. }))
    }

    /// The permit is over (given back, or lapsed).
    pub fn ended(&self, cell: CellId, volume: VolumeId) {
        self.refused(cell, volume, AFTER_END);
    }

    /// A change was logged under the permit: the write-back loop is told, at once if a batch is
    /// full.
    pub fn note_logged(&self, cell: CellId, volume: VolumeId) {
        let mut slots = lock(&self.slots);
        if let Some(Slot::Held { logged, .. }) = slots.get_mut(&(cell, volume)) {
            *logged += 1;
            if *logged == 1 {
                self.logged.notify_one();
            }
            if *logged >= FULL_BATCH {
                *logged = 0;
                self.full.notify_one();
            }
        }
    }

    /// What was logged is being sent: counting starts again.
    pub fn sending(&self, cell: CellId, volume: VolumeId) {
        if let Some(Slot::Held { logged, .. }) = lock(&self.slots).get_mut(&(cell, volume)) {
            *logged = 0;
        }
    }

    /// Waits until something is logged under a permit, or `idle` passes.
    pub async fn wait_logged(&self, idle: Duration) {
        let _ = tokio::time::timeout(idle, self.logged.notified()).await;
    }

    /// Waits out the window, or until a batch is full.
    pub async fn wait_window(&self) {
        let window = self.window.unwrap_or_default();
        let _ = tokio::time::timeout(window, self.full.notified()).await;
    }

    /// Every volume whose permit venus holds.
    pub fn held(&self) -> Vec<Key> {
        let now = Instant::now();
        lock(&self.slots)
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Held { asked, lease, .. } if now < Slot::trusted_until(*asked, *lease)))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Permits to renew (a third of their lease gone), and those no longer trusted (lapsed).
    pub fn due(&self) -> (Vec<Key>, Vec<Key>) {
        let now = Instant::now();
        let (mut renew, mut lapsed) = (Vec::new(), Vec::new());
        for (k, s) in lock(&self.slots).iter() {
            if let Slot::Held { asked, lease, .. } = s {
                if now >= Slot::trusted_until(*asked, *lease) {
                    lapsed.push(*k);
                } else if now >= *asked + *lease / 3 {
                    renew.push(*k);
                }
            }
        }
        (renew, lapsed)
    }

    /// A change sent late was refused: its objects' next `fsync` or `close` says so.
    pub fn defer(&self, cell: CellId, mutation: &Mutation, refusal: &RemoteError) {
        let mut deferred = lock(&self.deferred);
        if deferred.len() >= MAX_DEFERRED {
            deferred.clear();
        }
        for fid in concerned(mutation) {
            deferred.insert(GFid::new(cell, fid), refusal.clone());
        }
    }

    /// `g`'s logged store might not fit: its close is to send the log.
    pub fn send_at_close(&self, g: GFid) {
        let mut files = lock(&self.send_at_close);
        if files.len() < MAX_DEFERRED {
            files.insert(g);
        }
    }

    /// Whether `g`'s close is to send the log (once).
    pub fn take_send_at_close(&self, g: &GFid) -> bool {
        lock(&self.send_at_close).remove(g)
    }

    /// The refusal waiting for `g`'s `fsync` or `close`, once.
    pub fn take_deferred(&self, g: &GFid) -> Option<RemoteError> {
        lock(&self.deferred).remove(g)
    }
}

/// The objects whose `fsync` or `close` reports a refusal of `mutation`: what it changes, the
/// directory it names a thing in, and what it creates.
fn concerned(mutation: &Mutation) -> Vec<Fid> {
    let volume = mutation.volume();
    let mut fids: Vec<Fid> = match mutation {
        Mutation::Store { fid, .. } | Mutation::SetAttr { fid, .. } => vec![*fid],
        Mutation::Rename { from, to, .. } => vec![*from, *to],
        other => other.target().map(|(dir, _)| dir).into_iter().collect(),
    };
    fids.extend(mutation.created().map(|o| Fid::new(volume, o)));
    fids
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: CellId = CellId(1);
    const V: VolumeId = VolumeId(2);

    #[test]
    fn a_permit_is_trusted_for_three_quarters_of_its_lease_from_when_it_was_asked_for() {
        let p = Permits::new(Some(Duration::from_secs(1)));
        assert!(p.start_asking(C, V));
        assert!(!p.start_asking(C, V), "one request at a time");
        let long_ago = Instant::now() - Duration::from_secs(8);
        p.granted(C, V, long_ago, Duration::from_secs(10));
        assert!(!p.holds(C, V), "8 s of a 10 s lease: no longer trusted");
        assert_eq!(p.due(), (vec![], vec![(C, V)]));
        p.granted(C, V, Instant::now() - Duration::from_secs(4), Duration::from_secs(10));
        assert!(p.holds(C, V));
        assert_eq!(p.due(), (vec![(C, V)], vec![]), "a third gone: renew");
        assert!(p.recalled(C, V));
        p.granted(C, V, Instant::now(), Duration::from_secs(10));
        assert!(!p.holds(C, V), "a renewal answered after the recall does not undo it");
        p.ended(C, V);
        assert!(!p.start_asking(C, V), "not asked for again at once");
        p.granted(C, V, Instant::now(), Duration::from_secs(10));
        assert!(!p.holds(C, V), "nor after the end");
    }

    #[test]
    fn once_venus_stops_no_permit_is_asked_for_and_one_on_its_way_is_not_taken() {
        let p = Permits::new(Some(Duration::from_secs(1)));
        let other = VolumeId(3);
        assert!(p.start_asking(C, V));
        p.close();
        assert!(p.asking(), "the request on its way is waited for");
        assert!(!p.start_asking(C, other), "nothing new is asked for");
        assert!(!p.granted(C, V, Instant::now(), Duration::from_secs(10)), "granted now: to be given back");
        assert!(!p.holds(C, V));
        p.ended(C, V);
        assert!(!p.asking());
    }

    #[test]
    fn write_back_off_asks_for_nothing() {
        let p = Permits::new(None);
        assert!(!p.start_asking(C, V));
    }

    #[test]
    fn a_refusal_is_reported_once_to_each_object_it_concerns() {
        let p = Permits::new(Some(Duration::from_secs(1)));
        let dir = Fid::root(V);
        let m = Mutation::Create {
            parent: dir,
            name: proto::Name::new("f").unwrap(),
            object: proto::ObjectId(9),
            mode: 0o644,
            owner: 0,
            group: 0,
            mtime: proto::Timestamp::now(),
        };
        p.defer(C, &m, &RemoteError::QuotaExceeded);
        assert_eq!(p.take_deferred(&GFid::new(C, dir)), Some(RemoteError::QuotaExceeded));
        assert_eq!(p.take_deferred(&GFid::new(C, dir)), None);
        assert!(p.take_deferred(&GFid::new(C, Fid::new(V, proto::ObjectId(9)))).is_some());
    }
}
