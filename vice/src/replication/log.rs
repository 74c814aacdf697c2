//! The consensus log of every group this server belongs to, in one SQLite database
//! (`DATA/raft.sqlite`, WAL, `synchronous=FULL`): an append is durable when it returns, which
//! is what lets the leader count this server toward a majority.
//!
//! ```text
//! groups (grp)                  the groups this server is a member of (by volume id)
//! log    (grp, idx, entry)      entries, postcard
//! meta   (grp, key, value)      "vote", "committed", "purged": postcard
//! ```

// openraft's storage traits fix the error type (`StorageError`, large): helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use proto::VolumeId;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Serialize, de::DeserializeOwned};

use super::types::Replication;

type Error = StorageError<u64>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS groups (grp INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS log (grp INTEGER NOT NULL, idx INTEGER NOT NULL, entry BLOB NOT NULL,
    PRIMARY KEY (grp, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (grp INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (grp, key)) WITHOUT ROWID;
";

/// The database every group's log lives in.
#[derive(Clone)]
pub struct LogDb {
    conn: Arc<Mutex<Connection>>,
}

fn io(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::write_logs(&e).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(v).map_err(io)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(b).map_err(|e| StorageIOError::read_logs(&e).into())
}

impl LogDb {
    pub fn open(path: &Path) -> rusqlite::Result<LogDb> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA)?;
        Ok(LogDb { conn: Arc::new(Mutex::new(conn)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A transaction rolls back when dropped: a panic leaves nothing half-written.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the database off the async threads.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || f(&mut db.lock())).await {
            Ok(r) => r,
            Err(e) => Err(io(std::io::Error::other(e.to_string()))),
        }
    }

    /// The groups this server is a member of.
    pub fn groups(&self) -> rusqlite::Result<Vec<VolumeId>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT grp FROM groups ORDER BY grp")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        rows.map(|r| r.map(|g| VolumeId(g as u64))).collect()
    }

    pub fn add_group(&self, volume: VolumeId) -> rusqlite::Result<()> {
        self.lock().execute("INSERT OR IGNORE INTO groups (grp) VALUES (?1)", params![volume.0 as i64])?;
        Ok(())
    }

    /// Forgets a group: its log and its vote.
    pub fn remove_group(&self, volume: VolumeId) -> rusqlite::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let g = volume.0 as i64;
        tx.execute("DELETE FROM groups WHERE grp = ?1", params![g])?;
        tx.execute("DELETE FROM log WHERE grp = ?1", params![g])?;
        tx.execute("DELETE FROM meta WHERE grp = ?1", params![g])?;
        tx.commit()
    }

    /// The log of one group.
    pub fn log(&self, volume: VolumeId) -> GroupLog {
        GroupLog { db: self.clone(), group: volume.0 as i64 }
    }
}

/// One group's log: openraft's log storage and reader.
#[derive(Clone)]
pub struct GroupLog {
    db: LogDb,
    group: i64,
}

fn get_meta<T: DeserializeOwned>(c: &Connection, group: i64, key: &str) -> Result<Option<T>, Error> {
    let blob: Option<Vec<u8>> = c
        .query_row("SELECT value FROM meta WHERE grp = ?1 AND key = ?2", params![group, key], |r| r.get(0))
        .optional()
        .map_err(io)?;
    blob.map(|b| decode(&b)).transpose()
}

fn put_meta<T: Serialize>(c: &Connection, group: i64, key: &str, v: &T) -> Result<(), Error> {
    c.execute("INSERT OR REPLACE INTO meta (grp, key, value) VALUES (?1, ?2, ?3)", params![group, key, encode(v)?])
        .map_err(io)?;
    Ok(())
}

impl RaftLogReader<Replication> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Replication>>, Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let group = self.group;
        self.db
            .run(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT entry FROM log WHERE grp = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx")
                    .map_err(io)?;
                let rows = stmt
                    .query_map(params![group, start as i64, end.min(i64::MAX as u64) as i64], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })
                    .map_err(io)?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(decode(&r.map_err(io)?)?);
                }
                Ok(out)
            })
            .await
    }
}

impl RaftLogStorage<Replication> for GroupLog {
    type LogReader = GroupLog;

    async fn get_log_state(&mut self) -> Result<LogState<Replication>, Error> {
        let group = self.group;
        self.db
            .run(move |c| {
                let purged: Option<LogId<u64>> = get_meta(c, group, "purged")?;
                let last: Option<Vec<u8>> = c
                    .query_row("SELECT entry FROM log WHERE grp = ?1 ORDER BY idx DESC LIMIT 1", params![group], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(io)?;
                let last = match last {
                    Some(b) => Some(decode::<Entry<Replication>>(&b)?.log_id),
                    None => purged,
                };
                Ok(LogState { last_purged_log_id: purged, last_log_id: last })
            })
            .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Error> {
        let (group, vote) = (self.group, *vote);
        self.db.run(move |c| put_meta(c, group, "vote", &vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Error> {
        let group = self.group;
        self.db.run(move |c| get_meta(c, group, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), Error> {
        let group = self.group;
        self.db.run(move |c| put_meta(c, group, "committed", &committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, Error> {
        let group = self.group;
        self.db.run(move |c| Ok(get_meta::<Option<LogId<u64>>>(c, group, "committed")?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Replication>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<Replication>> + Send,
        I::IntoIter: Send,
    {
        let group = self.group;
        let rows: Vec<(u64, Vec<u8>)> =
            entries.into_iter().map(|e| encode(&e).map(|b| (e.log_id.index, b))).collect::<Result<_, _>>()?;
        let written = self
            .db
            .run(move |c| {
                let tx = c.transaction().map_err(io)?;
                {
                    let mut ins = tx
                        .prepare_cached("INSERT OR REPLACE INTO log (grp, idx, entry) VALUES (?1, ?2, ?3)")
                        .map_err(io)?;
                    for (idx, blob) in &rows {
                        ins.execute(params![group, *idx as i64, blob]).map_err(io)?;
                    }
                }
                // synchronous=FULL: durable once the commit returns.
                tx.commit().map_err(io)
            })
            .await;
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        let group = self.group;
        self.db
            .run(move |c| {
                c.execute("DELETE FROM log WHERE grp = ?1 AND idx >= ?2", params![group, log_id.index as i64])
                    .map_err(io)?;
                Ok(())
            })
            .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        let group = self.group;
        self.db
            .run(move |c| {
                let tx = c.transaction().map_err(io)?;
                put_meta(&tx, group, "purged", &log_id)?;
                tx.execute("DELETE FROM log WHERE grp = ?1 AND idx <= ?2", params![group, log_id.index as i64])
                    .map_err(io)?;
                tx.commit().map_err(io)
            })
            .await
    }
}
