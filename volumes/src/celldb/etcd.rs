//! The cell database on an etcd cluster, shared by every server of a multi-server cell.
//!
//! Keys live under `/afs/CELL/` (so one etcd can hold several cells). The client runs on a
//! runtime of its own, one thread named `etcd`: the [`CellDb`] calls block their caller (a
//! blocking thread of vice's runtime) on a channel, never on the async runtime they come
//! from, and every call has a deadline, so a cluster that lost its quorum answers
//! "unavailable" within seconds instead of hanging a server. Requests need an etcd leader
//! (`require_leader`): a member cut off from the majority refuses rather than answering from
//! its stale copy.

use std::time::Duration;

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

pub struct EtcdCellDb {
    /// Always `Some` until dropped: `Drop` takes it to shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    urls: Vec<String>,
}

fn unavailable(urls: &[String], e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd at {}: {e}", urls.join(",")))
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
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(tokio::time::timeout(DEADLINE, Client::connect(endpoints, Some(options))).await);
        });
        let client = match rx.recv_timeout(DEADLINE + Duration::from_secs(1)) {
            Ok(Ok(Ok(client))) => client,
            Ok(Ok(Err(e))) => return Err(unavailable(urls, e)),
            Ok(Err(_)) | Err(_) => return Err(unavailable(urls, "no answer")),
        };
        Ok(EtcdCellDb { rt: Some(rt), client, prefix: format!("/afs/{cell}/"), urls: urls.to_vec() })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.rt {
            rt.spawn(task);
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `f` on the etcd runtime and waits for it, up to the deadline.
    fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.client.clone());
        self.spawn(async move {
            let r = tokio::time::timeout(DEADLINE, fut).await;
            let _ = tx.send(r);
        });
        match rx.recv_timeout(DEADLINE + Duration::from_secs(1)) {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.error(e)),
            Ok(Err(_)) | Err(_) => Err(unavailable(&self.urls, format!("no answer within {DEADLINE:?}"))),
        }
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
        let resp = self.run(|mut c| async move { c.get(key, None).await })?;
        Ok(resp.kvs().first().and_then(|kv| self.to_kv(kv)))
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let key = self.key(prefix);
        let resp = self.run(|mut c| async move { c.get(key, Some(GetOptions::new().with_prefix())).await })?;
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
        let resp = self.run(|mut c| async move { c.txn(EtcdTxn::new().when(when).and_then(then)).await })?;
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
        let (client, key) = (self.client.clone(), self.key(prefix));
        self.spawn(async move {
            // Until every receiver is gone: watch, and after a break tell the receivers that
            // anything may have changed (events were possibly missed), then watch again.
            while !tx.is_closed() {
                let mut c = client.clone();
                if let Ok(mut stream) = c.watch(key.clone(), Some(WatchOptions::new().with_prefix())).await {
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
                }
                tx.send_modify(|_| {});
                tokio::time::sleep(REWATCH).await;
            }
        });
        Ok(rx)
    }

    fn describe(&self) -> String {
        format!("etcd ({})", self.urls.join(","))
    }
}
