//! The cell's database: the volume location database, the protection database, the registry of
//! servers and the locks of admin operations, over one small key-value interface.
//!
//! [`CellDb`] is that interface: keys with revisions, compare-and-swap transactions, leases
//! and prefix watches, which is etcd's model. It has two implementations:
//! [`SqliteCellDb`], embedded in a one-server cell's `vice` (the default), and (with the `etcd`
//! feature) `EtcdCellDb`, which every server of a multi-server cell shares, so no one server's
//! loss stops logins, lookups or volume operations. What the cell keeps is written once, over
//! the interface: [`Vldb`](vldb::Vldb), [`Ptdb`](pts::Ptdb), [`Registry`](registry::Registry)
//! and [`Locks`](locks::Locks). The keys (relative to the cell's prefix) are listed in
//! docs/architecture.md.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StoreError};

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod legacy;
pub mod locks;
pub mod pts;
pub mod registry;
pub mod sqlite;
pub mod vldb;

pub use sqlite::SqliteCellDb;

/// A lease: keys put under it vanish when it expires (it is not kept alive in time) or is
/// revoked. 0 is no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// A key with its value and revisions, as etcd keeps it. `create_rev` is the revision of the
/// transaction that made the key (it changes only when the key is deleted and made again):
/// a lock's `create_rev` is its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub lease: i64,
}

impl KeyValue {
    /// The value, decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.value)
            .map_err(|e| StoreError::Corrupt(format!("cell database key {}: {e}", self.key)))
    }
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Missing(String),
    /// The key exists and was last changed at this revision.
    ModRev(String, i64),
    /// The key exists and was made at this revision (a lock still held by the same holder).
    CreateRev(String, i64),
}

/// A change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete(String),
}

impl Op {
    /// A put of `value` as JSON.
    pub fn put<T: Serialize + ?Sized>(key: impl Into<String>, value: &T) -> Op {
        Op::Put { key: key.into(), value: to_json(value), lease: None }
    }

    /// A put under a lease.
    pub fn put_leased<T: Serialize + ?Sized>(key: impl Into<String>, value: &T, lease: LeaseId) -> Op {
        Op::Put { key: key.into(), value: to_json(value), lease: Some(lease) }
    }

    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete(key.into())
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising our own plain types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Changes made all at once if every condition holds, and not at all otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }
    pub fn when(mut self, c: Compare) -> Self {
        self.when.push(c);
        self
    }
    pub fn then(mut self, op: Op) -> Self {
        self.then.push(op);
        self
    }
}

/// What a transaction did: the revision of its changes, or that a condition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    At(i64),
    ConditionFailed,
}

/// A watch of a prefix: its value is the newest revision seen under it, and changes whenever
/// something under the prefix changes (or may have: a watch that had to reconnect says so by
/// changing too, so watchers drop what they cached).
pub type Watch = tokio::sync::watch::Receiver<i64>;

/// The cell database's storage: keys, revisions, transactions, leases, watches. Calls block
/// (SQLite or a network round trip): from async code, call them on a blocking thread. A
/// database that cannot be reached answers [`StoreError::Unavailable`].
pub trait CellDb: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    fn txn(&self, txn: Txn) -> Result<Committed>;
    /// A new lease that lasts `ttl` unless kept alive.
    fn grant(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease for its whole ttl; false if it has expired (its keys are gone).
    fn keep_alive(&self, lease: LeaseId) -> Result<bool>;
    /// Ends a lease now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> Result<()>;
    /// Watches every key starting with `prefix`.
    fn watch(&self, prefix: &str) -> Result<Watch>;
    /// What it is, for logs and `vos listaddrs`: "embedded SQLite (PATH)", "etcd (URLS)".
    fn describe(&self) -> String;
}

/// A cell database that is somewhere else: the one of a server that joined a cell whose
/// database is the first server's embedded SQLite. Every call says where to go instead.
pub struct Elsewhere;

fn elsewhere<T>() -> Result<T> {
    // "Unavailable" (not a refusal): clients and vos then ask the next server of the cell.
    Err(StoreError::Unavailable(
        "this server holds volumes only; the cell database is on the cell's first server".into(),
    ))
}

impl CellDb for Elsewhere {
    fn get(&self, _: &str) -> Result<Option<KeyValue>> {
        elsewhere()
    }
    fn range(&self, _: &str) -> Result<Vec<KeyValue>> {
        elsewhere()
    }
    fn txn(&self, _: Txn) -> Result<Committed> {
        elsewhere()
    }
    fn grant(&self, _: Duration) -> Result<LeaseId> {
        elsewhere()
    }
    fn keep_alive(&self, _: LeaseId) -> Result<bool> {
        elsewhere()
    }
    fn revoke(&self, _: LeaseId) -> Result<()> {
        elsewhere()
    }
    fn watch(&self, _: &str) -> Result<Watch> {
        elsewhere()
    }
    fn describe(&self) -> String {
        "on the cell's first server".into()
    }
}

/// Where a cell database is, as `vice init --cell-db` and server.toml name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded SQLite file in the server's data directory.
    Embedded,
    /// An etcd cluster: its client URLs (`http://HOST:PORT`).
    Etcd(Vec<String>),
}

impl Location {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` (or `embedded`).
    pub fn parse(text: &str) -> std::result::Result<Location, String> {
        if text == "embedded" || text == "sqlite" {
            return Ok(Location::Embedded);
        }
        let Some(rest) = text.strip_prefix("etcd://") else {
            return Err(format!("{text:?}: a cell database is etcd://HOST:PORT[,HOST:PORT...] or embedded"));
        };
        let mut urls = Vec::new();
        for hp in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (host, port) = hp.rsplit_once(':').ok_or_else(|| format!("{hp:?} in {text:?} has no :PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() || hp.contains('/') {
                return Err(format!("{hp:?} in {text:?} is not HOST:PORT"));
            }
            urls.push(format!("http://{hp}"));
        }
        if urls.is_empty() {
            return Err(format!("{text:?} names no etcd endpoint"));
        }
        Ok(Location::Etcd(urls))
    }

    /// The text `parse` reads back.
    pub fn to_text(&self) -> String {
        match self {
            Location::Embedded => "embedded".into(),
            Location::Etcd(urls) => {
                let hosts: Vec<&str> = urls.iter().map(|u| u.trim_start_matches("http://")).collect();
                format!("etcd://{}", hosts.join(","))
            }
        }
    }
}

/// Opens the cell database at `location` for cell `cell`; `embedded` is the SQLite file to use
/// for [`Location::Embedded`].
pub fn open(location: &Location, cell: &str, embedded: &std::path::Path) -> Result<Arc<dyn CellDb>> {
    match location {
        Location::Embedded => Ok(Arc::new(SqliteCellDb::open(embedded)?)),
        #[cfg(feature = "etcd")]
        Location::Etcd(urls) => Ok(Arc::new(etcd::EtcdCellDb::connect(urls, cell)?)),
        #[cfg(not(feature = "etcd"))]
        Location::Etcd(_) => {
            let _ = cell;
            Err(StoreError::Refused(proto::RemoteError::Invalid(
                "this build has no etcd support: build with `cargo build --release --features vice/etcd` \
                 (needs protoc: apt-get install protobuf-compiler)"
                    .into(),
            )))
        }
    }
}

/// The value at `key`, decoded, with its revision.
pub fn get_json<T: DeserializeOwned>(db: &dyn CellDb, key: &str) -> Result<Option<(T, i64)>> {
    match db.get(key)? {
        Some(kv) => Ok(Some((kv.json()?, kv.mod_rev))),
        None => Ok(None),
    }
}

/// The condition that `key` is as `seen` found it (absent, or at that revision).
pub fn unchanged(key: &str, seen: Option<i64>) -> Compare {
    match seen {
        Some(rev) => Compare::ModRev(key.to_string(), rev),
        None => Compare::Missing(key.to_string()),
    }
}

/// How often a compare-and-swap is retried when another server's change came in between.
pub(crate) const RETRIES: usize = 20;

/// Runs `attempt` until its transaction commits: it reads, decides, and builds a transaction
/// conditioned on what it read (an error from it ends the tries).
pub(crate) fn retrying<T>(
    db: &dyn CellDb,
    what: &str,
    mut attempt: impl FnMut() -> Result<(Txn, T)>,
) -> Result<(T, i64)> {
    for _ in 0..RETRIES {
        let (txn, out) = attempt()?;
        if let Committed::At(rev) = db.txn(txn)? {
            return Ok((out, rev));
        }
    }
    Err(StoreError::Unavailable(format!("{what}: the cell database kept changing underneath ({RETRIES} tries)")))
}

#[cfg(test)]
mod tests;
