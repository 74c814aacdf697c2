//! Callback promises: which clients hold a cached copy the server has promised to tell them
//! about, and the breaking of those promises when something changes.
//!
//! Promises are kept per Fid and per volume. A promise lasts longer when few clients hold the
//! same object (OpenAFS's idea), so the table stays bounded when many clients share hot objects.
//! A change breaks every other holder's promise over its connection and waits for the ack before
//! the writer gets its reply: once a store returns, no client still trusts the old contents. A
//! client that does not ack in time (or has no connection) loses all its promises and is told
//! `CallbacksLost` on its next request, so it revalidates instead of trusting stale data.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::msg::{Promise, Push};
use proto::{ClientId, Fid, VolumeId};

/// Promise lengths by how many clients hold the object (after this grant).
const LADDER: &[(usize, u32)] = &[(5, 4 * 3600), (20, 3600), (100, 15 * 60), (500, 5 * 60), (usize::MAX, 2 * 60)];
/// The server keeps a promise a little longer than it tells the client, so clock skew and reply
/// latency never leave a client trusting a promise the server has forgotten.
const SLACK: Duration = Duration::from_secs(60);
/// Above this many promises in total, new grants are refused (the client simply revalidates).
const MAX_PROMISES: usize = 2_000_000;

fn promise_secs(holders: usize) -> u32 {
    LADDER.iter().find(|(n, _)| holders <= *n).map_or(60, |(_, s)| *s)
}

#[derive(Default)]
struct Table {
    by_fid: HashMap<Fid, HashMap<ClientId, Instant>>,
    by_volume: HashMap<VolumeId, HashMap<ClientId, Instant>>,
    conns: HashMap<ClientId, quinn::Connection>,
    lost: HashSet<ClientId>,
    total: usize,
    /// Every break sent since start, by outcome (for metrics).
    broken: BreakReport,
}

impl Table {
    fn grant(map: &mut HashMap<ClientId, Instant>, total: &mut usize, client: ClientId) -> Promise {
        let now = Instant::now();
        map.retain(|_, exp| *exp > now);
        if !map.contains_key(&client) {
            *total += 1;
        }
        let secs = promise_secs(map.len() + 1);
        map.insert(client, now + Duration::from_secs(u64::from(secs)) + SLACK);
        Promise { secs }
    }

    /// Removes every promise of `client` (it lost them).
    fn drop_client(&mut self, client: ClientId) {
        let mut removed = 0;
        for holders in self.by_fid.values_mut().chain(self.by_volume.values_mut()) {
            if holders.remove(&client).is_some() {
                removed += 1;
            }
        }
        self.by_fid.retain(|_, h| !h.is_empty());
        self.by_volume.retain(|_, h| !h.is_empty());
        self.total = self.total.saturating_sub(removed);
    }
}

pub struct Callbacks {
    table: Mutex<Table>,
    break_timeout: Duration,
}

/// The outcome of a round of breaks, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BreakReport {
    pub acked: usize,
    pub lost: usize,
}

impl Callbacks {
    pub fn new(break_timeout: Duration) -> Self {
        Callbacks { table: Mutex::new(Table::default()), break_timeout }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the connection breaks for `client` travel on.
    pub fn attach(&self, client: ClientId, conn: quinn::Connection) {
        self.lock().conns.insert(client, conn);
    }

    /// Forgets the connection if it is still the client's current one.
    pub fn detach(&self, client: ClientId, conn: &quinn::Connection) {
        let mut t = self.lock();
        if t.conns.get(&client).is_some_and(|c| c.stable_id() == conn.stable_id()) {
            t.conns.remove(&client);
        }
    }

    /// The connection `client` said Hello on last, if it is still open.
    pub fn connection(&self, client: ClientId) -> Option<quinn::Connection> {
        self.lock().conns.get(&client).filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Whether `client` must be told `CallbacksLost`; clears the flag.
    pub fn take_lost(&self, client: ClientId) -> bool {
        self.lock().lost.remove(&client)
    }

    pub fn grant(&self, client: ClientId, fid: Fid) -> Promise {
        let mut t = self.lock();
        if t.total >= MAX_PROMISES {
            return Promise { secs: 0 };
        }
        let Table { by_fid, total, .. } = &mut *t;
        Table::grant(by_fid.entry(fid).or_default(), total, client)
    }

    pub fn grant_volume(&self, client: ClientId, volume: VolumeId) -> Promise {
        let mut t = self.lock();
        if t.total >= MAX_PROMISES {
            return Promise { secs: 0 };
        }
        let Table { by_volume, total, .. } = &mut *t;
        Table::grant(by_volume.entry(volume).or_default(), total, client)
    }

    pub fn give_up(&self, client: ClientId, fids: &[Fid]) {
        let mut t = self.lock();
        let mut removed = 0;
        for fid in fids {
            if let Some(h) = t.by_fid.get_mut(fid)
                && h.remove(&client).is_some()
            {
                removed += 1;
            }
        }
        t.total = t.total.saturating_sub(removed);
    }

    /// How many promises are held (for status and tests).
    pub fn count(&self) -> usize {
        self.lock().total
    }

    /// Clients with a connection breaks can travel on.
    pub fn clients(&self) -> usize {
        self.lock().conns.len()
    }

    /// How many clients acked a break, and how many lost their promises instead, since start.
    pub fn breaks(&self) -> BreakReport {
        self.lock().broken
    }

    /// Drops expired promises; run periodically.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut t = self.lock();
        let mut total = 0;
        let Table { by_fid, by_volume, .. } = &mut *t;
        for holders in by_fid.values_mut().chain(by_volume.values_mut()) {
            holders.retain(|_, exp| *exp > now);
            total += holders.len();
        }
        t.by_fid.retain(|_, h| !h.is_empty());
        t.by_volume.retain(|_, h| !h.is_empty());
        t.total = total;
    }

    /// Breaks every promise on anything in `volume` (its contents were replaced: a restore, a
    /// new backup, a removal).
    pub async fn break_volume(&self, volume: VolumeId) -> BreakReport {
        let fids: Vec<Fid> = self.lock().by_fid.keys().filter(|f| f.volume == volume).copied().collect();
        self.break_promises(None, &fids, &[volume]).await
    }

    /// Breaks every promise on anything in `volume` held by a client other than `keep` (which is
    /// given a write-back permit on it).
    pub async fn break_volume_except(&self, volume: VolumeId, keep: ClientId) -> BreakReport {
        let fids: Vec<Fid> = self.lock().by_fid.keys().filter(|f| f.volume == volume).copied().collect();
        self.break_promises(Some(keep), &fids, &[volume]).await
    }

    /// Breaks every promise on `fids` and `volumes` held by clients other than `writer`, and
    /// waits until each has acked or been declared lost.
    pub async fn break_promises(&self, writer: Option<ClientId>, fids: &[Fid], volumes: &[VolumeId]) -> BreakReport {
        // Collect, per client, what it must drop; remove the promises now so a concurrent grant
        // after this point is a fresh promise that a later change will break again.
        let mut per_client: HashMap<ClientId, (Vec<Fid>, Vec<VolumeId>)> = HashMap::new();
        let now = Instant::now();
        let notices: Vec<Notice> = {
            let mut t = self.lock();
            let mut removed = 0;
            for fid in fids {
                if let Some(holders) = t.by_fid.remove(fid) {
                    for (client, exp) in holders {
                        removed += 1;
                        if Some(client) == writer {
                            // The writer keeps its promise: it made the change.
                            t.by_fid.entry(*fid).or_default().insert(client, exp);
                            removed -= 1;
                        } else if exp > now {
                            per_client.entry(client).or_default().0.push(*fid);
                        }
                    }
                }
            }
            for vol in volumes {
                if let Some(holders) = t.by_volume.remove(vol) {
                    for (client, exp) in holders {
                        removed += 1;
                        if Some(client) == writer {
                            t.by_volume.entry(*vol).or_default().insert(client, exp);
                            removed -= 1;
                        } else if exp > now {
                            per_client.entry(client).or_default().1.push(*vol);
                        }
                    }
                }
            }
            t.total = t.total.saturating_sub(removed);
            per_client
                .into_iter()
                .map(|(client, (fids, volumes))| Notice { client, conn: t.conns.get(&client).cloned(), fids, volumes })
                .collect()
        };
        if notices.is_empty() {
            return BreakReport::default();
        }
        let timeout = self.break_timeout;
        let sends = notices.into_iter().map(|Notice { client, conn, fids, volumes }| async move {
            let ok = match conn {
                Some(conn) => {
                    let push = Push::BreakCallbacks { fids, volumes };
                    match proto::client::send_push(&conn, &push, timeout).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::info!(%client, error = %e, "callback break not acknowledged; client loses its promises");
                            false
                        }
                    }
                }
                None => false,
            };
            (client, ok)
        });
        let results = join_all(sends).await;
        let mut report = BreakReport::default();
        let mut t = self.lock();
        for (client, ok) in results {
            if ok {
                report.acked += 1;
            } else {
                report.lost += 1;
                t.drop_client(client);
                t.lost.insert(client);
            }
        }
        t.broken.acked += report.acked;
        t.broken.lost += report.lost;
        report
    }
}

/// What one client must be told, and the connection to tell it on (if it has one).
struct Notice {
    client: ClientId,
    conn: Option<quinn::Connection>,
    fids: Vec<Fid>,
    volumes: Vec<VolumeId>,
}

/// Runs futures concurrently and collects their outputs (a tiny `join_all` without a new crate).
async fn join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ObjectId;

    fn fid(n: u128) -> Fid {
        Fid::new(VolumeId(1), ObjectId(n))
    }

    #[test]
    fn promises_shrink_as_holders_grow() {
        let cb = Callbacks::new(Duration::from_secs(1));
        let first = cb.grant(ClientId(1), fid(1));
        assert_eq!(first.secs, 4 * 3600);
        for c in 2..=30 {
            cb.grant(ClientId(c), fid(1));
        }
        assert_eq!(cb.grant(ClientId(31), fid(1)).secs, 15 * 60);
        assert_eq!(cb.count(), 31);
        // Granting again to the same client does not count twice.
        cb.grant(ClientId(1), fid(1));
        assert_eq!(cb.count(), 31);
    }

    #[tokio::test]
    async fn a_holder_without_connection_is_declared_lost() {
        let cb = Callbacks::new(Duration::from_millis(100));
        cb.grant(ClientId(1), fid(1));
        cb.grant(ClientId(1), fid(2));
        cb.grant(ClientId(2), fid(1));
        cb.grant_volume(ClientId(1), VolumeId(1));
        // Client 2 writes fid 1: client 1 must hear of it, but has no connection.
        let report = cb.break_promises(Some(ClientId(2)), &[fid(1)], &[VolumeId(1)]).await;
        assert_eq!(report, BreakReport { acked: 0, lost: 1 });
        // It lost everything, including the promise on fid 2; the writer kept its own.
        assert_eq!(cb.count(), 1);
        assert!(cb.take_lost(ClientId(1)));
        assert!(!cb.take_lost(ClientId(1)), "reported once");
        assert!(!cb.take_lost(ClientId(2)));
    }

    #[tokio::test]
    async fn give_up_and_expiry_remove_promises() {
        let cb = Callbacks::new(Duration::from_millis(100));
        cb.grant(ClientId(1), fid(1));
        cb.grant(ClientId(1), fid(2));
        cb.give_up(ClientId(1), &[fid(1)]);
        assert_eq!(cb.count(), 1);
        let report = cb.break_promises(Some(ClientId(2)), &[fid(1)], &[]).await;
        assert_eq!(report, BreakReport::default(), "nobody held fid 1 any more");
    }
}
