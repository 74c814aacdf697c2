//! The client modification log (CML): every mutation venus makes, in order, until a server has
//! applied it.
//!
//! # One write path
//!
//! Venus logs every mutation here, connected or not. Connected, it reintegrates the record at
//! once and removes it when the server answers; disconnected, the record waits, and is replayed
//! per volume, oldest first and in bounded chunks ([`Cml::first`]), when the servers are back.
//!
//! # Storage
//!
//! One SQLite database (WAL, `synchronous=NORMAL`, schema versioned with `user_version`, see
//! `schema`). Each record is a postcard blob plus indexed columns: its cell, volume, kind,
//! subject object, and in a side table every object it touches with its roles (see `touch`),
//! so the optimiser finds related records by index, never by scanning the log. An append is
//! committed before it returns, so it survives venus being killed; [`Cml::sync`] makes the log
//! survive a machine crash, for `fsync(2)`.
//!
//! # Optimisation
//!
//! [`Cml::append`] optimises the log in the append's own transaction, Coda style, so it stays
//! small while a laptop is offline: a Store replaces earlier Stores, create … remove cancels,
//! a removal for good makes earlier Stores and SetAttrs moot, SetAttrs merge, renames of
//! offline-created objects fold into their creation. `optimise` lists the rules and their
//! conditions. Each change to the log is checked by `rebase`: the bases of the remaining records
//! are re-derived, so the optimised log certifies wherever the raw one would have and leaves the
//! volume in the same state, and a record about an object changed on the server still conflicts
//! (a conflict can only vanish with the records that would have caused it, such as a create and
//! remove of a name someone else took meanwhile). A change whose bases cannot be derived is not
//! made. A property test checks all this against a model of the server's certification.
//!
//! # What venus must do
//!
//! - **Bases come from the log**: for a record about object `o`, use
//!   [`Cml::base_of`]`(cell, o)`, and the version venus last got from the server when that is
//!   `None`. The log knows which of its records last stamped an object after optimisation (a
//!   client tracking ops itself would still name records the optimiser deleted).
//! - **Unlinking the last name of a file** (link count 1): append the Remove with
//!   [`Cml::append_removing_last_name`]. Only then may the log drop the pending Stores of a file
//!   older than the log; it cannot see names made before it, and must not lose data under them.
//! - **Send only records obtained from [`Cml::first`]**: it freezes what it returns, because a
//!   record that may have reached the server must never be optimised away or rewritten.
//! - Do not log renames that POSIX says do nothing (a name onto itself, or onto another name of
//!   the same file): the server does not stamp the directories for them, the log assumes it does.

mod error;
mod in_flight;
mod optimise;
mod plan;
mod rebase;
mod rows;
mod salvage;
mod schema;
mod touch;

#[cfg(test)]
mod model;
#[cfg(test)]
mod reftest;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use proto::{Base, Fid, Record, Timestamp, VolumeId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tracing::debug;

pub use error::CmlError;
use error::Result;
use plan::Plan;
pub use salvage::Salvage;
pub use schema::WAL_CHECKPOINT_PAGES;
pub use touch::stamped;

/// The log: one SQLite database shared by every cell and volume venus knows.
pub struct Cml {
    conn: Mutex<Connection>,
    /// Records the server answered ([`Cml::answered`]), deleted in the next transaction of any
    /// kind: a connected change then costs one commit (its append), not two.
    answered: Mutex<Vec<u64>>,
}

/// One pending record.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in the log; never reused.
    pub seq: u64,
    pub cell: String,
    pub volume: VolumeId,
    pub record: Record,
    /// When the record was first appended.
    pub created: Timestamp,
}

/// What the log holds for one volume (for `venus status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLog {
    pub cell: String,
    pub volume: VolumeId,
    pub records: u64,
    /// File data waiting to be stored: the sum of the Stores' lengths.
    pub bytes: u64,
    /// When the oldest pending record was appended.
    pub oldest: Option<Timestamp>,
}

impl Cml {
    /// Opens (creating if needed) the log at `path`.
    pub fn open(path: &Path) -> Result<Cml, CmlError> {
        let cml = Cml { conn: Mutex::new(schema::open(path)?), answered: Mutex::new(Vec::new()) };
        // Records that were in flight when the last venus stopped are pending like the others.
        cml.keep_in_flight()?;
        Ok(cml)
    }

    /// Opens the log at `path`; a damaged one is put aside and what can be read of it is
    /// logged again in a new one (see `salvage`), and the result says so.
    pub fn open_or_salvage(path: &Path) -> Result<(Cml, Option<Salvage>), CmlError> {
        let reason = match Self::open(path) {
            Ok(cml) => return Ok((cml, None)),
            Err(e) if salvage::is_damage(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        let saved_as = salvage::set_aside(path)?;
        let (records, cut_short) = salvage::read_back(&saved_as);
        let cml = Self::open(path)?;
        let kept = records.len();
        for (cell, record) in records {
            cml.append(&cell, record)?;
        }
        Ok((cml, Some(Salvage { reason, saved_as, kept, cut_short })))
    }

    /// The connection, with the answered records gone: nothing reads or changes a log that
    /// still holds them.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        let mut conn = self.raw_lock();
        let answered = std::mem::take(&mut *self.answered.lock().unwrap_or_else(|p| p.into_inner()));
        if !answered.is_empty()
            && let Err(e) = delete_all(&mut conn, &answered)
        {
            // Kept for the next try: until then they are replayed, which their op ids make
            // harmless.
            debug!(error = %e, "cml: answered records not deleted yet");
            self.answered.lock().unwrap_or_else(|p| p.into_inner()).extend(answered);
        }
        conn
    }

    fn raw_lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half done (it rolls back
        // on drop), so the connection is fine to use.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a record, applying the log optimisations in the same transaction. Returns the seq
    /// of the record as stored, or of the stored record it was folded into (a merged SetAttr, a
    /// rename folded into its creation), or `None` if the optimisation cancelled it (a Remove
    /// that cancelled an offline Create).
    pub fn append(&self, cell: &str, record: Record) -> Result<Option<u64>, CmlError> {
        self.append_as(cell, record, false)
    }

    /// Appends a Remove that takes away the file's last name (venus knows the link count), like
    /// [`Cml::append`], and also lets the removal drop the file's earlier Stores and SetAttrs
    /// when the log cannot tell by itself that no other name survives (a file older than the
    /// log). Use plain [`Cml::append`] when in doubt: dropping them while another name survives
    /// would lose what was written.
    pub fn append_removing_last_name(&self, cell: &str, record: Record) -> Result<Option<u64>, CmlError> {
        self.append_as(cell, record, true)
    }

    /// Appends a record that was already sent and whose answer was lost (the server went away
    /// with it in flight): it may be on the server, so it goes in as it is and frozen, exactly
    /// like a record handed out by [`Cml::first`]: no later append may optimise it away or fold
    /// into it. Returns its seq.
    pub fn append_sent(&self, cell: &str, record: Record) -> Result<Option<u64>, CmlError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let plan = Plan::plain(cell, record);
        let answer = plan.execute(&tx, Timestamp::now())?;
        if let Some(seq) = answer {
            tx.prepare_cached("UPDATE records SET frozen = 1 WHERE seq = ?1")?.execute(params![seq as i64])?;
        }
        tx.commit()?;
        Ok(answer)
    }

    /// Appends a record that is being sent now, while its system call waits for the answer:
    /// it goes where records in flight wait (`in_flight`: one unindexed row, one page per
    /// commit), in the same commit as the deletion of the records answered since the last one.
    /// Until it is answered or kept, no reader of pending records sees it, and nothing
    /// optimises it away. Returns its seq.
    pub fn append_in_flight(&self, cell: &str, record: Record) -> Result<u64, CmlError> {
        let mut conn = self.raw_lock();
        let answered = std::mem::take(&mut *self.answered.lock().unwrap_or_else(|p| p.into_inner()));
        let tx = conn.transaction()?;
        for &seq in &answered {
            in_flight::delete(&tx, seq)?;
        }
        let seq = in_flight::insert(&tx, cell, &record, Timestamp::now())?;
        let committed = tx.commit();
        if committed.is_err() {
            self.answered.lock().unwrap_or_else(|p| p.into_inner()).extend(answered);
        }
        committed?;
        Ok(seq)
    }

    /// The records in flight stay (an answer was lost): they become pending records, frozen,
    /// in their place in the log's order.
    pub fn keep_in_flight(&self) -> Result<(), CmlError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        in_flight::keep_all(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The server applied (or refused) a record appended in flight: it leaves the log with the
    /// next transaction. Until then it is still there for a crash to replay, which its op id
    /// makes harmless.
    pub fn answered(&self, seq: u64) {
        self.answered.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
    }

    fn append_as(&self, cell: &str, record: Record, last_name: bool) -> Result<Option<u64>, CmlError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut plan = optimise::plan(&tx, cell, record, last_name)?;
        if !plan.is_plain() && !rebase::settle(&tx, &mut plan)? {
            debug!(rule = plan.rule, op = %plan.incoming.op, "cml: optimisation would break a base; appending as is");
            plan = Plan::plain(cell, plan.incoming);
        }
        let answer = plan.execute(&tx, Timestamp::now())?;
        tx.commit()?;
        if !plan.after.is_empty() || plan.append.is_none() {
            debug!(
                rule = plan.rule,
                verb = plan.incoming.mutation.verb(),
                changed = plan.after.len(),
                stored = plan.append.is_some(),
                "cml: optimised"
            );
        }
        Ok(answer)
    }

    /// Pending records of one volume, in order.
    pub fn pending(&self, cell: &str, volume: VolumeId) -> Result<Vec<Entry>, CmlError> {
        let conn = self.lock();
        let rows = rows::query(
            &conn,
            &format!("SELECT {} FROM records r WHERE r.cell = ?1 AND r.volume = ?2 ORDER BY r.seq", rows::COLUMNS),
            params![cell, volume.0 as i64],
        )?;
        Ok(rows.into_iter().map(entry).collect())
    }

    /// Up to `limit` oldest pending records of one volume, for reintegration in bounded chunks.
    /// The records returned are frozen: they may reach the server from now on, so the optimiser
    /// never deletes or rewrites them ([`Cml::replace`] still may).
    pub fn first(&self, cell: &str, volume: VolumeId, limit: usize) -> Result<Vec<Entry>, CmlError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let rows = rows::query(
            &tx,
            &format!(
                "SELECT {} FROM records r WHERE r.cell = ?1 AND r.volume = ?2 ORDER BY r.seq LIMIT ?3",
                rows::COLUMNS
            ),
            params![cell, volume.0 as i64, i64::try_from(limit).unwrap_or(i64::MAX)],
        )?;
        {
            let mut freeze = tx.prepare_cached("UPDATE records SET frozen = 1 WHERE seq = ?1 AND frozen = 0")?;
            for row in rows.iter().filter(|r| !r.frozen) {
                freeze.execute(params![row.seq as i64])?;
            }
        }
        tx.commit()?;
        Ok(rows.into_iter().map(entry).collect())
    }

    /// Removes records once the server applied them (or they were settled). Seqs no longer in
    /// the log are ignored.
    pub fn remove(&self, seqs: &[u64]) -> Result<(), CmlError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for &seq in seqs {
            rows::delete(&tx, seq)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces stored records in place, all in one transaction (venus refreshes the chunk
    /// lists of a batch's stores before sending it). No optimisation runs. A record that is
    /// gone is skipped: it was removed, or optimised away because a later record superseded it.
    pub fn replace(&self, records: &[(u64, Record)]) -> Result<(), CmlError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (seq, record) in records {
            match rows::load(&tx, *seq)? {
                Some(row) => rows::update(&tx, &row.cell, *seq, record)?,
                None => debug!(seq, "cml: replace of a record no longer in the log"),
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The base a new record about `fid` must carry, as far as the log knows: `AfterOp` of the
    /// latest pending record that stamps the object (sets its last op on the server). `None`
    /// when no pending record does: use the version the server last gave.
    pub fn base_of(&self, cell: &str, fid: Fid) -> Result<Option<Base>, CmlError> {
        let conn = self.lock();
        let op = rows::last_stamp_before(&conn, cell, fid.volume, fid.object, i64::MAX as u64)?;
        Ok(op.map(Base::AfterOp))
    }

    /// Per-volume summary for `venus status`.
    pub fn summary(&self) -> Result<Vec<VolumeLog>, CmlError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT cell, volume, COUNT(*), COALESCE(SUM(bytes), 0), MIN(created) FROM records
             GROUP BY cell, volume ORDER BY cell, volume",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(VolumeLog {
                    cell: r.get(0)?,
                    volume: VolumeId(r.get::<_, i64>(1)? as u64),
                    records: r.get::<_, i64>(2)?.max(0) as u64,
                    bytes: r.get::<_, i64>(3)?.max(0) as u64,
                    oldest: r.get::<_, Option<i64>>(4)?.map(Timestamp::from_nanos),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Whether a volume has pending records (without freezing any, unlike [`Cml::first`]).
    pub fn has_pending(&self, cell: &str, volume: VolumeId) -> Result<bool, CmlError> {
        let conn = self.lock();
        let found = conn
            .prepare_cached("SELECT 1 FROM records WHERE cell = ?1 AND volume = ?2 LIMIT 1")?
            .query_row(params![cell, volume.0 as i64], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    pub fn total_records(&self) -> Result<u64, CmlError> {
        let conn = self.lock();
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Makes everything appended so far durable against a machine crash (fsync), for `fsync(2)`.
    pub fn sync(&self) -> Result<(), CmlError> {
        schema::sync(&self.lock())
    }
}

impl Drop for Cml {
    fn drop(&mut self) {
        // A clean stop leaves no answered record behind to replay.
        drop(self.lock());
    }
}

fn delete_all(conn: &mut Connection, seqs: &[u64]) -> Result<()> {
    let tx = conn.transaction()?;
    for &seq in seqs {
        in_flight::delete(&tx, seq)?;
    }
    tx.commit()?;
    Ok(())
}

fn entry(row: rows::Row) -> Entry {
    Entry { seq: row.seq, cell: row.cell, volume: row.volume, record: row.record, created: row.created }
}
