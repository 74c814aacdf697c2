//! The cell database on an etcd cluster, shared by every server of a multi-server cell.
//!
//! Keys live under `/afs/CELL/` (so one etcd can hold several cells). The client runs on a
//! runtime of its own, one thread named `etcd`: the [`CellDb`] calls block their caller (a
//! blocking thread of vice's runtime) on a channel, never on the async runtime they come
//! from, and every call has a deadline, so a cluster that lost its quorum answers
//! "unavailable" within seconds instead of hanging a server. Requests need an etcd leader
//! (`require_leader`): a member cut off from the majority refuses rather than answering from
//! its stale copy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn as EtcdTxn, TxnOp,
    WatchOptions,
};

use super::{CellDb, Committed, Compare, KeyValue, LeaseId, Op, Txn, Watch};
use crate::error::{Result, StoreError};

/// How long one call may take before the database counts as unavailable.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long a watch waits before reconnecting after its stream broke.
const REWATCH: Duration = Duration::from_millis(500);
/// After the cluster failed to answer, calls fail at once for this long, and then one call
/// tries again while the others still fail at once.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Whether calls go to the cluster. Without it, while etcd has no quorum every call of every
/// request would wait out the deadline: a location lookup, a login, a server's lease renewal
/// would each take seconds to fail instead of failing at once (clients then work from what
/// they know, and admins get "cell database unavailable" promptly).
#[derive(Default)]
struct Breaker {
    /// Set while the cluster is failing: until when no call goes to it.
    open_until: Option<Instant>,
    /// One call is trying the cluster again.
    probing: bool,
}

impl Breaker {
    /// Whether a call may go to the cluster now.
    fn admit(&mut self) -> bool {
        match self.open_until {
            None => true,
            Some(until) if Instant::now() < until || self.probing => false,
            Some(_) => {
                self.probing = true;
                true
            }
        }
    }

    /// What a call that went to the cluster found: whether the cluster answered.
    fn record(&mut self, answered: bool) {
        self.open_until = (!answered).then(|| Instant::now() + RETRY_AFTER);
        self.probing = false;
    }
}

pub struct EtcdCellDb {
    /// Always `Some` until dropped: `Drop` takes it to shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    /// One client per member, in the order given. A request goes to the member that answered
    /// last; a member that cannot be reached, or has no leader, is passed over for the next
    /// (etcd-client's own balancing keeps sending to a dead member).
    members: Arc<Vec<Client>>,
    current: Arc<AtomicUsize>,
    prefix: String,
    urls: Vec<String>,
    breaker: Mutex<Breaker>,
}

fn unavailable(urls: &[String], e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd at {}: {e}", urls.join(",")))
}

/// Whether another member may answer what this one could not: it was not reached, or it has
/// no leader (cut off from the majority), or it ran out of time. In the first two cases nothing
/// was applied; after a timeout a transaction may have been, which is safe to try again: every
/// change is conditioned on the revisions it read, so a second try of an applied one fails its
/// condition and its caller reads again.
fn try_another(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
        }
        _ => false,
    }
}

/// Runs `f` against the members in turn, from the one that answered last, until one answers.
async fn on_some_member<T, F>(
    members: &[Client],
    current: &AtomicUsize,
    f: impl Fn(Client) -> F,
) -> std::result::Result<T, etcd_client::Error>
where
    F: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let start = current.load(Ordering::Relaxed);
    let mut last = None;
    for k in 0..members.len() {
        let i = (start + k) % members.len();
        match f(members[i].clone()).await {
            Err(e) if try_another(&e) => last = Some(e),
            answer => {
                current.store(i, Ordering::Relaxed);
                return answer;
            }
        }
    }
    Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd members".into())))
}

impl EtcdCellDb {
    /// Connects to the etcd cluster at `urls` (`http://HOST:PORT`), for cell `cell`.
    pub fn connect(urls: &[String], cell: &str) -> Result<Self> {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("etcd").enable_all().build()?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(DEADLINE)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let endpoints = urls.to_vec();
        // Not `block_on`: the caller may be a thread of another runtime, where that panics.
        // (Connecting only builds the channels; members are reached at the first request.)
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let mut members = Vec::new();
            for e in endpoints {
                match Client::connect([e], Some(options.clone())).await {
                    Ok(c) => members.push(c),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(members));
        });
        let members = match rx.recv_timeout(DEADLINE) {
            Ok(Ok(members)) => members,
            Ok(Err(e)) => return Err(unavailable(urls, e)),
            Err(_) => return Err(unavailable(urls, "no answer")),
        };
        // Not checked here: a server starts (and serves files) while etcd has no quorum.
        Ok(EtcdCellDb {
            rt: Some(rt),
            members: Arc::new(members),
            current: Arc::default(),
            prefix: format!("/afs/{cell}/"),
            urls: urls.to_vec(),
            breaker: Mutex::default(),
        })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.rt {
            rt.spawn(task);
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `f` on the etcd runtime against some member, and waits for it, up to the deadline.
    fn run<T, F>(&self, f: impl Fn(Client) -> F + Send + 'static) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    {
        if !self.breaker().admit() {
            return Err(unavailable(&self.urls, "no quorum at the last try"));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (members, current) = (self.members.clone(), self.current.clone());
        self.spawn(async move {
            let r = tokio::time::timeout(DEADLINE, on_some_member(&members, &current, f)).await;
            let _ = tx.send(r);
        });
        let r = rx.recv_timeout(DEADLINE + Duration::from_secs(1));
        let answered = matches!(&r, Ok(Ok(Ok(_)))) || matches!(&r, Ok(Ok(Err(e))) if !try_another(e));
        self.breaker().record(answered);
        match r {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.error(e)),
            Ok(Err(_)) | Err(_) => Err(unavailable(&self.urls, format!("no answer within {DEADLINE:?}"))),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, e: etcd_client::Error) -> StoreError {
        let text = e.to_string();
        if text.contains("requested lease not found") {
            return StoreError::Refused(proto::RemoteError::Invalid("the lease has expired".into()));
        }
        unavailable(&self.urls, text)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        let key = kv.key_str().ok()?.strip_prefix(self.prefix.as_str())?.to_string();
        Some(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_rev: kv.create_revision(),
            mod_rev: kv.mod_revision(),
            lease: kv.lease(),
        })
    }
}

impl Drop for EtcdCellDb {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which panics inside another runtime (vice's).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl CellDb for EtcdCellDb {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = self.key(key);
        let resp = self.run(move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(resp.kvs().first().and_then(|kv| self.to_kv(kv)))
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let key = self.key(prefix);
        let resp = self.run(move |mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
        })?;
        Ok(resp.kvs().iter().filter_map(|kv| self.to_kv(kv)).collect())
    }

    fn txn(&self, txn: Txn) -> Result<Committed> {
        let when: Vec<EtcdCompare> = txn
            .when
            .iter()
            .map(|c| match c {
                // A key that does not exist has create revision 0.
                Compare::Missing(k) => EtcdCompare::create_revision(self.key(k), CompareOp::Equal, 0),
                Compare::ModRev(k, rev) => EtcdCompare::mod_revision(self.key(k), CompareOp::Equal, *rev),
                Compare::CreateRev(k, rev) => EtcdCompare::create_revision(self.key(k), CompareOp::Equal, *rev),
            })
            .collect();
        let then: Vec<TxnOp> = txn
            .then
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = lease.map(|l| PutOptions::new().with_lease(l.0));
                    TxnOp::put(self.key(key), value.clone(), options)
                }
                Op::Delete(key) => TxnOp::delete(self.key(key), None),
            })
            .collect();
        let resp = self.run(move |mut c| {
            let txn = EtcdTxn::new().when(when.clone()).and_then(then.clone());
            async move { c.txn(txn).await }
        })?;
        if !resp.succeeded() {
            return Ok(Committed::ConditionFailed);
        }
        Ok(Committed::At(resp.header().map_or(0, |h| h.revision())))
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self.run(move |mut c| async move { c.lease_grant(secs, None).await })?;
        Ok(LeaseId(resp.id()))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let r = self.run(move |mut c| async move {
            match c.lease_keep_alive(lease.0).await {
                Ok(_) => Ok(true),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                Err(e) => Err(e),
            }
        });
        match r {
            Err(StoreError::Refused(_)) => Ok(false),
            other => other,
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.run(move |mut c| async move { c.lease_revoke(lease.0).await }) {
            Ok(_) | Err(StoreError::Refused(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn watch(&self, prefix: &str) -> Result<Watch> {
        let (tx, rx) = tokio::sync::watch::channel(0);
        let (members, key) = (self.members.clone(), self.key(prefix));
        self.spawn(async move {
            // Until every receiver is gone: watch; after a break, watch again (on the next
            // member), and once watching again tell the receivers that anything may have
            // changed, as events of the gap were missed.
            let (mut next, mut missed) = (0, false);
            while !tx.is_closed() {
                let mut c = members[next % members.len()].clone();
                next += 1;
                if let Ok(mut stream) = c.watch(key.clone(), Some(WatchOptions::new().with_prefix())).await {
                    if std::mem::take(&mut missed) {
                        tx.send_modify(|_| {});
                    }
                    loop {
                        tokio::select! {
                            _ = tx.closed() => return,
                            m = stream.message() => match m {
                                Ok(Some(resp)) if resp.canceled() => break,
                                Ok(Some(resp)) => {
                                    if !resp.events().is_empty() {
                                        let rev = resp.header().map_or(0, |h| h.revision());
                                        tx.send_replace(rev);
                                    }
                                }
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                    missed = true;
                }
                tokio::time::sleep(REWATCH).await;
            }
        });
        Ok(rx)
    }

    fn describe(&self) -> String {
        format!("etcd ({})", self.urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failure_calls_fail_at_once_until_one_tries_again() {
        let mut b = Breaker::default();
        assert!(b.admit());
        b.record(false);
        assert!(!b.admit(), "right after the failure");
        b.open_until = Some(Instant::now());
        assert!(b.admit(), "the one that tries again");
        assert!(!b.admit(), "others while it tries");
        b.record(true);
        assert!(b.admit() && b.admit(), "the cluster answered");
    }
}
