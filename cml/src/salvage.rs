//! A damaged log: what venus does with a `cml.sqlite` that fails its check (a torn page after a
//! machine crash on a bad disk, a file truncated or overwritten by something else).
//!
//! The log holds the only copy of changes not yet on a server, so it is never just replaced:
//! the damaged file is put aside under a dated name (with its WAL, whose committed frames are
//! part of it), every record that can still be read from it, in order, is appended to a new log,
//! and venus says what happened. What cannot be read is lost from the log; the file contents
//! it named are not (venus logs a store for every dirty container nothing logged carries).

use std::path::{Path, PathBuf};

use proto::Record;
use rusqlite::{Connection, OpenFlags};

use crate::error::{CmlError, Result};

/// What was done with a damaged log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// Why the log could not be used.
    pub reason: String,
    /// Where the damaged file now is.
    pub saved_as: PathBuf,
    /// Records read back from it and logged again.
    pub kept: usize,
    /// Whether reading stopped at damage before the end (records after it are lost).
    pub cut_short: bool,
}

/// Whether an error means the database file is damaged (not busy, full, or from a newer venus).
pub(crate) fn is_damage(e: &CmlError) -> bool {
    match e {
        CmlError::Damaged(_) => true,
        CmlError::Db(rusqlite::Error::SqliteFailure(f, _)) => {
            matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        }
        _ => false,
    }
}

/// Moves the damaged log at `path` (and its WAL) aside; returns the new name.
pub(crate) fn set_aside(path: &Path) -> Result<PathBuf> {
    let nanos = proto::Timestamp::now().as_nanos();
    let saved = PathBuf::from(format!("{}.damaged-{nanos}", path.display()));
    std::fs::rename(path, &saved).map_err(|e| CmlError::Damaged(format!("moving the log aside: {e}")))?;
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", saved.display()))
                .map_err(|e| CmlError::Damaged(format!("moving the log's {suffix} aside: {e}")))?;
        }
    }
    Ok(saved)
}

/// Reads every record it can from a damaged log, in order, with its cell; stops at the first
/// damage. Says whether it stopped short.
pub(crate) fn read_back(path: &Path) -> (Vec<(String, Record)>, bool) {
    let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return (Vec::new(), true);
    };
    let mut out = Vec::new();
    // Records in flight when the log was damaged are read back in their place too (a log of
    // version 1 has no such table).
    let both = "SELECT seq, cell, record FROM records UNION ALL SELECT seq, cell, record FROM in_flight ORDER BY seq";
    let Ok(mut stmt) =
        conn.prepare(both).or_else(|_| conn.prepare("SELECT seq, cell, record FROM records ORDER BY seq"))
    else {
        return (out, true);
    };
    let Ok(mut rows) = stmt.query([]) else { return (out, true) };
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let (Ok(cell), Ok(blob)) = (row.get::<_, String>(1), row.get::<_, Vec<u8>>(2)) else { continue };
                if let Ok(record) = postcard::from_bytes::<Record>(&blob) {
                    out.push((cell, record));
                }
            }
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}
