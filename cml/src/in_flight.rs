//! Records on their way to the server while their system call waits (connected changes).
//!
//! Such a record almost always leaves again a moment later, with the server's answer, so it
//! is kept where it costs least: a table of its own with no index, one row and one page
//! written per change, against a `records` row with its two indexes and its `touches` rows.
//! It shares `records`' seqs (see [`rows::next_seq`]), so a record that stays — its answer was
//! lost, or venus died — moves into `records` under the seq it had ([`keep_all`]) and takes
//! its place in the log's order with nothing else changed. No reader of pending records
//! looks here: until then, a record in flight is its system call's, not reintegration's.

use proto::{Record, Timestamp};
use rusqlite::{Connection, params};

use crate::error::{CmlError, Result};
use crate::rows;

pub(crate) const SCHEMA: &str = "
CREATE TABLE in_flight (
    seq     INTEGER PRIMARY KEY,
    cell    TEXT NOT NULL,
    created INTEGER NOT NULL,
    record  BLOB NOT NULL
);";

/// Puts a record in flight; returns its seq.
pub(crate) fn insert(c: &Connection, cell: &str, record: &Record, created: Timestamp) -> Result<u64> {
    let seq = rows::next_seq(c)?;
    c.prepare_cached("INSERT INTO in_flight (seq, cell, created, record) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![rows::seq_param(seq)?, cell, created.as_nanos(), rows::encode(record)?,])?;
    Ok(seq)
}

/// The record was answered: it leaves, from wherever it is by now (a failure of another
/// change may have moved it into `records`, see [`keep_all`]).
pub(crate) fn delete(c: &Connection, seq: u64) -> Result<()> {
    let gone = c.prepare_cached("DELETE FROM in_flight WHERE seq = ?1")?.execute(params![rows::seq_param(seq)?])?;
    if gone == 0 {
        rows::delete(c, seq)?;
    }
    Ok(())
}

/// Moves every record in flight into `records`, frozen (each may be on the server already)
/// and indexed, under the seq it had. Returns how many.
pub(crate) fn keep_all(c: &Connection) -> Result<usize> {
    let raw: Vec<(i64, String, i64, Vec<u8>)> = c
        .prepare_cached("SELECT seq, cell, created, record FROM in_flight ORDER BY seq")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, cell, created, blob) in &raw {
        let seq = u64::try_from(*seq).map_err(|_| CmlError::Corrupt(format!("negative seq {seq}")))?;
        let record: Record = postcard::from_bytes(blob)
            .map_err(|e| CmlError::Corrupt(format!("record {seq} in flight does not decode: {e}")))?;
        rows::insert_at(c, seq, cell, &record, Timestamp::from_nanos(*created), true)?;
    }
    c.prepare_cached("DELETE FROM in_flight")?.execute([])?;
    Ok(raw.len())
}
