//! The embedded cell database: etcd's model (revisions, transactions, leases, watches) in one
//! SQLite file, for a cell whose one server is also its database.
//!
//! Every transaction that changes something takes the next revision; a key keeps the revision
//! it was made at and the one it was last changed at. Leases expire by the wall clock, so a
//! lease outlives a restart of the server by what is left of its ttl, as in etcd. Expired
//! leases are swept before every call, so no caller ever sees a key whose lease has ended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::{CellDb, Committed, Compare, KeyValue, LeaseId, Op, Txn, Watch};
use crate::error::Result;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    lease      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"#;

pub struct SqliteCellDb {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Watches by prefix: told the revision of every change under their prefix.
    watchers: Mutex<HashMap<String, tokio::sync::watch::Sender<i64>>>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue { key: r.get(0)?, value: r.get(1)?, create_rev: r.get(2)?, mod_rev: r.get(3)?, lease: r.get(4)? })
}

/// The smallest string greater than every string starting with `prefix` (for range scans).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

impl SqliteCellDb {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = crate::schema::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteCellDb { path: path.to_path_buf(), conn: Mutex::new(conn), watchers: Mutex::new(HashMap::new()) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the watches whose prefix covers one of `keys`.
    fn notify(&self, keys: &[String], rev: i64) {
        let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for (prefix, tx) in watchers.iter() {
            if keys.iter().any(|k| k.starts_with(prefix.as_str())) {
                tx.send_replace(rev);
            }
        }
    }

    /// Deletes the keys of expired leases, as one change; the keys it deleted and its revision.
    fn sweep(conn: &mut Connection) -> Result<Option<(Vec<String>, i64)>> {
        let now = now_ms();
        let tx = conn.transaction()?;
        let keys: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT key FROM kv WHERE lease != 0 AND lease IN (SELECT id FROM leases WHERE expires_ms < ?1)",
            )?;
            stmt.query_map(params![now], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        let expired = tx.execute("DELETE FROM leases WHERE expires_ms < ?1", params![now])?;
        if keys.is_empty() {
            if expired > 0 {
                tx.commit()?;
            }
            return Ok(None);
        }
        let rev: i64 =
            tx.query_row("UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value", [], |r| {
                r.get(0)
            })?;
        for k in &keys {
            tx.execute("DELETE FROM kv WHERE key = ?1", params![k])?;
        }
        tx.commit()?;
        Ok(Some((keys, rev)))
    }

    /// A connection with expired leases swept (and their watchers told).
    fn swept(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        let mut conn = self.conn();
        if let Some((keys, rev)) = Self::sweep(&mut conn)? {
            drop(conn);
            self.notify(&keys, rev);
            conn = self.conn();
        }
        Ok(conn)
    }

    /// Every key and value, for export to another cell database.
    pub fn dump(&self) -> Result<Vec<KeyValue>> {
        self.range("")
    }
}

fn holds(tx: &rusqlite::Transaction<'_>, c: &Compare) -> Result<bool> {
    let get = |key: &str| -> Result<Option<(i64, i64)>> {
        Ok(tx
            .prepare_cached("SELECT create_rev, mod_rev FROM kv WHERE key = ?1")?
            .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    };
    Ok(match c {
        Compare::Missing(k) => get(k)?.is_none(),
        Compare::ModRev(k, rev) => get(k)?.is_some_and(|(_, m)| m == *rev),
        Compare::CreateRev(k, rev) => get(k)?.is_some_and(|(c, _)| c == *rev),
    })
}

impl CellDb for SqliteCellDb {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let conn = self.swept()?;
        let mut stmt = conn.prepare_cached("SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key = ?1")?;
        Ok(stmt.query_row(params![key], row).optional()?)
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let conn = self.swept()?;
        let rows = match prefix_end(prefix) {
            Some(end) => {
                let mut stmt = conn.prepare_cached(
                    "SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )?;
                stmt.query_map(params![prefix, end], row)?.collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut stmt = conn.prepare_cached(
                    "SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key >= ?1 ORDER BY key",
                )?;
                stmt.query_map(params![prefix], row)?.collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        Ok(rows)
    }

    fn txn(&self, txn: Txn) -> Result<Committed> {
        let mut conn = self.swept()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for c in &txn.when {
            if !holds(&tx, c)? {
                return Ok(Committed::ConditionFailed);
            }
        }
        if txn.then.is_empty() {
            let rev: i64 = tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))?;
            return Ok(Committed::At(rev));
        }
        let rev: i64 =
            tx.query_row("UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value", [], |r| {
                r.get(0)
            })?;
        let mut keys = Vec::with_capacity(txn.then.len());
        for op in &txn.then {
            match op {
                Op::Put { key, value, lease } => {
                    let lease = lease.map_or(0, |l| l.0);
                    if lease != 0 {
                        let live = tx
                            .query_row("SELECT 1 FROM leases WHERE id = ?1", params![lease], |_| Ok(()))
                            .optional()?;
                        if live.is_none() {
                            return Err(crate::error::StoreError::Refused(proto::RemoteError::Invalid(format!(
                                "lease {lease:x} has expired"
                            ))));
                        }
                    }
                    tx.execute(
                        "INSERT INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?1, ?2, ?3, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev,
                                                        lease = excluded.lease",
                        params![key, value, rev, lease],
                    )?;
                    keys.push(key.clone());
                }
                Op::Delete(key) => {
                    tx.execute("DELETE FROM kv WHERE key = ?1", params![key])?;
                    keys.push(key.clone());
                }
            }
        }
        tx.commit()?;
        drop(conn);
        self.notify(&keys, rev);
        Ok(Committed::At(rev))
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let conn = self.swept()?;
        let ttl_ms = ttl.as_millis().max(1) as i64;
        // Random ids, as etcd's, so a lease of a crashed server is never mistaken for a new one.
        let id = (rand::random::<u64>() >> 2) as i64 + 1;
        conn.execute(
            "INSERT INTO leases (id, ttl_ms, expires_ms) VALUES (?1, ?2, ?3)",
            params![id, ttl_ms, now_ms() + ttl_ms],
        )?;
        Ok(LeaseId(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let conn = self.swept()?;
        let n = conn.execute("UPDATE leases SET expires_ms = ?2 + ttl_ms WHERE id = ?1", params![lease.0, now_ms()])?;
        Ok(n == 1)
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let keys: Vec<String> = {
            let mut stmt = tx.prepare_cached("SELECT key FROM kv WHERE lease = ?1")?;
            stmt.query_map(params![lease.0], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        tx.execute("DELETE FROM leases WHERE id = ?1", params![lease.0])?;
        if keys.is_empty() {
            tx.commit()?;
            return Ok(());
        }
        let rev: i64 =
            tx.query_row("UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value", [], |r| {
                r.get(0)
            })?;
        tx.execute("DELETE FROM kv WHERE lease = ?1", params![lease.0])?;
        tx.commit()?;
        drop(conn);
        self.notify(&keys, rev);
        Ok(())
    }

    fn watch(&self, prefix: &str) -> Result<Watch> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let tx = watchers.entry(prefix.to_string()).or_insert_with(|| tokio::sync::watch::channel(0).0);
        Ok(tx.subscribe())
    }

    fn describe(&self) -> String {
        format!("embedded SQLite ({})", self.path.display())
    }
}
