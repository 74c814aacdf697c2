//! Reading and writing log rows: the record blob and the index rows that go with it.
//!
//! Every write goes through [`insert`], [`update`] or [`delete`], which keep `records` and
//! `touches` in step. Everything read back from the database is checked: a blob that does not
//! decode is [`CmlError::Corrupt`], never a panic.

use proto::chunk::total_len;
use proto::{Mutation, ObjectId, OpId, Record, Timestamp, VolumeId};
use rusqlite::{Connection, OptionalExtension, Row as SqlRow, params};

use crate::error::{CmlError, Result, corrupt};
use crate::touch::{self, Kind, object_bytes, op_bytes};

/// One record as the log holds it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub seq: u64,
    pub cell: String,
    pub volume: VolumeId,
    pub frozen: bool,
    pub created: Timestamp,
    pub record: Record,
}

/// Columns read by [`from_sql`], prefixed with the `records` table's alias `r`.
pub(crate) const COLUMNS: &str = "r.seq, r.cell, r.volume, r.frozen, r.created, r.record";

pub(crate) fn from_sql(row: &SqlRow<'_>) -> rusqlite::Result<(i64, String, i64, bool, i64, Vec<u8>)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
}

/// Turns the raw columns into a [`Row`], decoding the record.
pub(crate) fn decode(raw: (i64, String, i64, bool, i64, Vec<u8>)) -> Result<Row> {
    let (seq, cell, volume, frozen, created, blob) = raw;
    let seq = u64::try_from(seq).map_err(|_| CmlError::Corrupt(format!("negative seq {seq}")))?;
    let record: Record =
        postcard::from_bytes(&blob).map_err(|e| CmlError::Corrupt(format!("record {seq} does not decode: {e}")))?;
    let volume = VolumeId(volume as u64);
    if record.mutation.volume() != volume {
        return corrupt(format!(
            "record {seq} is filed under volume {volume} but changes {}",
            record.mutation.volume()
        ));
    }
    Ok(Row { seq, cell, volume, frozen, created: Timestamp::from_nanos(created), record })
}

/// Runs a query whose columns are [`COLUMNS`] and decodes every row.
pub(crate) fn query(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(sql)?;
    let raw = stmt.query_map(params, from_sql)?.collect::<rusqlite::Result<Vec<_>>>()?;
    raw.into_iter().map(decode).collect()
}

pub(crate) fn encode(record: &Record) -> Result<Vec<u8>> {
    postcard::to_stdvec(record).map_err(|e| CmlError::Corrupt(format!("encoding a record: {e}")))
}

fn bytes_of(m: &Mutation) -> i64 {
    match m {
        Mutation::Store { chunks, .. } => i64::try_from(total_len(chunks)).unwrap_or(i64::MAX),
        _ => 0,
    }
}

pub(crate) fn seq_param(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| CmlError::Corrupt(format!("seq {seq} out of range")))
}

/// Appends a record; returns its seq.
pub(crate) fn insert(c: &Connection, cell: &str, record: &Record, created: Timestamp) -> Result<u64> {
    let seq = next_seq(c)?;
    insert_at(c, seq, cell, record, created, false)?;
    Ok(seq)
}

/// The seq the next record gets, in `records` or in flight: after every seq either table
/// has held (`records` is AUTOINCREMENT, so its counter remembers deleted ones) and every record
/// in flight now. Every write to the log holds its one connection, so two callers never get
/// the same seq.
pub(crate) fn next_seq(c: &Connection) -> Result<u64> {
    let last: i64 = c
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'records'), 0),
                        COALESCE((SELECT MAX(seq) FROM in_flight), 0))",
        )?
        .query_row([], |r| r.get(0))?;
    let last = u64::try_from(last).map_err(|_| CmlError::Corrupt(format!("negative seq {last}")))?;
    Ok(last + 1)
}

/// Stores a record under `seq` (a new one from [`next_seq`], or the seq it had in flight),
/// indexed; `frozen` for one that may already be on the server.
pub(crate) fn insert_at(
    c: &Connection,
    seq: u64,
    cell: &str,
    record: &Record,
    created: Timestamp,
    frozen: bool,
) -> Result<()> {
    let m = &record.mutation;
    let volume = m.volume().0 as i64;
    c.prepare_cached(
        "INSERT INTO records (seq, cell, volume, kind, object, op, frozen, bytes, created, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        seq_param(seq)?,
        cell,
        volume,
        touch::kind(m) as i64,
        &object_bytes(touch::subject(m))[..],
        &op_bytes(record.op)[..],
        frozen,
        bytes_of(m),
        created.as_nanos(),
        encode(record)?,
    ])?;
    index(c, cell, seq, record)
}

/// Indexes the records that have no `touches` rows yet: records a venus of log version 1 left
/// in flight (it kept them in `records`, unindexed). Every record touches at least its subject.
pub(crate) fn index_unindexed(c: &Connection) -> Result<usize> {
    let missing: Vec<i64> = c
        .prepare_cached("SELECT seq FROM records r WHERE NOT EXISTS (SELECT 1 FROM touches t WHERE t.seq = r.seq)")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for &seq in &missing {
        if let Some(row) = load(c, seq as u64)? {
            index(c, &row.cell, row.seq, &row.record)?;
        }
    }
    Ok(missing.len())
}

/// Rewrites a stored record in place (same seq, same place in the order).
pub(crate) fn update(c: &Connection, cell: &str, seq: u64, record: &Record) -> Result<()> {
    let m = &record.mutation;
    c.prepare_cached(
        "UPDATE records SET volume = ?2, kind = ?3, object = ?4, op = ?5, bytes = ?6, record = ?7 WHERE seq = ?1",
    )?
    .execute(params![
        seq_param(seq)?,
        m.volume().0 as i64,
        touch::kind(m) as i64,
        &object_bytes(touch::subject(m))[..],
        &op_bytes(record.op)[..],
        bytes_of(m),
        encode(record)?,
    ])?;
    c.prepare_cached("DELETE FROM touches WHERE seq = ?1")?.execute(params![seq_param(seq)?])?;
    index(c, cell, seq, record)
}

pub(crate) fn delete(c: &Connection, seq: u64) -> Result<()> {
    let s = seq_param(seq)?;
    c.prepare_cached("DELETE FROM records WHERE seq = ?1")?.execute(params![s])?;
    c.prepare_cached("DELETE FROM touches WHERE seq = ?1")?.execute(params![s])?;
    Ok(())
}

fn index(c: &Connection, cell: &str, seq: u64, record: &Record) -> Result<()> {
    let volume = record.mutation.volume().0 as i64;
    let mut stmt =
        c.prepare_cached("INSERT INTO touches (cell, volume, object, seq, roles) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for (object, roles) in touch::touches(&record.mutation) {
        stmt.execute(params![cell, volume, &object_bytes(object)[..], seq_param(seq)?, roles])?;
    }
    Ok(())
}

pub(crate) fn load(c: &Connection, seq: u64) -> Result<Option<Row>> {
    let raw = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM records r WHERE r.seq = ?1"))?
        .query_row(params![seq_param(seq)?], from_sql)
        .optional()?;
    raw.map(decode).transpose()
}

/// The records of one volume that touch `object` in any of the `roles` (a bit set), with seq
/// in `from..`, in log order.
pub(crate) fn touching(
    c: &Connection,
    cell: &str,
    volume: VolumeId,
    object: ObjectId,
    roles: i64,
    from: u64,
) -> Result<Vec<Row>> {
    query(
        c,
        &format!(
            "SELECT {COLUMNS} FROM touches t JOIN records r ON r.seq = t.seq
             WHERE t.cell = ?1 AND t.volume = ?2 AND t.object = ?3 AND (t.roles & ?4) != 0 AND t.seq >= ?5
             ORDER BY t.seq"
        ),
        params![cell, volume.0 as i64, &object_bytes(object)[..], roles, seq_param(from)?],
    )
}

/// The op of the last record before `before` that stamps `object`.
pub(crate) fn last_stamp_before(
    c: &Connection,
    cell: &str,
    volume: VolumeId,
    object: ObjectId,
    before: u64,
) -> Result<Option<OpId>> {
    let op: Option<Vec<u8>> = c
        .prepare_cached(
            "SELECT r.op FROM touches t JOIN records r ON r.seq = t.seq
             WHERE t.cell = ?1 AND t.volume = ?2 AND t.object = ?3 AND (t.roles & ?4) != 0 AND t.seq < ?5
             ORDER BY t.seq DESC LIMIT 1",
        )?
        .query_row(params![cell, volume.0 as i64, &object_bytes(object)[..], touch::STAMP, seq_param(before)?], |r| {
            r.get(0)
        })
        .optional()?;
    op.map(|b| op_from(&b)).transpose()
}

/// The first record before `before` that carries a base for `object`.
pub(crate) fn first_ref_before(
    c: &Connection,
    cell: &str,
    volume: VolumeId,
    object: ObjectId,
    before: u64,
) -> Result<Option<Row>> {
    let rows = query(
        c,
        &format!(
            "SELECT {COLUMNS} FROM touches t JOIN records r ON r.seq = t.seq
             WHERE t.cell = ?1 AND t.volume = ?2 AND t.object = ?3 AND (t.roles & ?4) != 0 AND t.seq < ?5
             ORDER BY t.seq LIMIT 1"
        ),
        params![cell, volume.0 as i64, &object_bytes(object)[..], touch::REF, seq_param(before)?],
    )?;
    Ok(rows.into_iter().next())
}

/// Whether the volume holds a record of `kind` with seq after `after`.
pub(crate) fn any_of_kind_after(c: &Connection, cell: &str, volume: VolumeId, kind: Kind, after: u64) -> Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM records WHERE cell = ?1 AND volume = ?2 AND kind = ?3 AND seq > ?4 LIMIT 1")?
        .exists(params![cell, volume.0 as i64, kind as i64, seq_param(after)?])?)
}

fn op_from(b: &[u8]) -> Result<OpId> {
    let arr: [u8; 16] = b.try_into().map_err(|_| CmlError::Corrupt(format!("op id of {} bytes", b.len())))?;
    Ok(OpId(u128::from_be_bytes(arr)))
}

/// The last record of one volume that touches `object` in any of the `roles`.
pub(crate) fn last_touching(
    c: &Connection,
    cell: &str,
    volume: VolumeId,
    object: ObjectId,
    roles: i64,
) -> Result<Option<Row>> {
    let rows = query(
        c,
        &format!(
            "SELECT {COLUMNS} FROM touches t JOIN records r ON r.seq = t.seq
             WHERE t.cell = ?1 AND t.volume = ?2 AND t.object = ?3 AND (t.roles & ?4) != 0
             ORDER BY t.seq DESC LIMIT 1"
        ),
        params![cell, volume.0 as i64, &object_bytes(object)[..], roles],
    )?;
    Ok(rows.into_iter().next())
}
