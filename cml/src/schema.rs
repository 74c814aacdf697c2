//! The SQLite schema of the modification log.
//!
//! `records` holds each record as a postcard blob plus the columns the log is read by (cell,
//! volume, order) and summarised by (size of stored data, age). `touches` indexes every object a
//! record touches and how (see [`crate::touch`]), so the optimiser finds related records with an
//! index lookup instead of scanning the log. Object and op ids are 16-byte big-endian blobs;
//! times are nanoseconds since the epoch.
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a committed append is in the WAL
//! file, so it survives the process being killed; [`crate::Cml::sync`] makes everything durable
//! against a machine crash when `fsync(2)` asks for it.

use rusqlite::Connection;

use crate::error::{Result, corrupt};

/// 1: `records`, `touches`, `meta`. 2: `in_flight` (see `crate::in_flight`).
const VERSION: i64 = 2;

const SCHEMA: &str = r#"
CREATE TABLE records (
    -- AUTOINCREMENT: a seq is never reused, so a stale seq can never name another record.
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    cell    TEXT NOT NULL,
    volume  INTEGER NOT NULL,
    kind    INTEGER NOT NULL,
    -- The object the record is about (see touch::subject).
    object  BLOB NOT NULL,
    op      BLOB NOT NULL,
    -- Handed out for reintegration: may be on the server already, so never optimised again.
    frozen  INTEGER NOT NULL DEFAULT 0,
    -- Bytes of file data the record carries (a Store's total length).
    bytes   INTEGER NOT NULL,
    created INTEGER NOT NULL,
    record  BLOB NOT NULL
);
CREATE INDEX records_by_volume ON records(cell, volume, seq);
CREATE INDEX records_by_kind ON records(cell, volume, kind, seq);
-- Every object a record touches, with a bit set of roles (touch::SUBJECT, DIR, STAMP, REF, VICTIM).
CREATE TABLE touches (
    cell   TEXT NOT NULL,
    volume INTEGER NOT NULL,
    object BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    roles  INTEGER NOT NULL,
    PRIMARY KEY (cell, volume, object, seq)
) WITHOUT ROWID;
CREATE INDEX touches_by_seq ON touches(seq);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('syncs', 0);
"#;

/// Pages the WAL grows to before it is written back into the database (each time with two
/// `fsync`s, on the thread of the system call whose commit crossed the line). SQLite's default
/// of 1,000 (4 MiB) made one create in a hundred wait 3 ms for it under a write-back permit;
/// 4,096 (16 MiB) checkpoints a quarter as often, and a page changed many times in between
/// (the log's tail, its indexes) is written back once.
pub const WAL_CHECKPOINT_PAGES: u32 = 4096;

/// Opens the log's database with the pragmas its durability promise needs, creating the schema
/// in a new database or checking an existing one's version.
pub(crate) fn open(path: &std::path::Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // One venus owns its log: holding the lock for the connection's life (set before WAL is
    // first used) keeps the WAL index in memory, so a transaction costs no file-lock calls and
    // no shared-memory file (27 `fcntl` calls per removed file between the log and the cache
    // before). A second process opening the log gets "database is locked".
    let _: String = conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |r| r.get(0))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return corrupt(format!("{}: cannot use WAL journaling (got {mode})", path.display()));
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES};"))?;
    // Plans that do not depend on bound values: otherwise every new value bound to a
    // statement compared with an index re-prepares it (8 % of venus's CPU in an offline copy).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // A torn or overwritten page is found now, before anything is appended after it.
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(crate::error::CmlError::Damaged(check));
    }
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            let tx = conn.transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(crate::in_flight::SCHEMA)?;
            tx.execute_batch(&format!("PRAGMA user_version={VERSION}"))?;
            tx.commit()?;
            Ok(())
        }
        1 => {
            // Version 1 kept records in flight in `records`, unindexed: a venus that died
            // left them there, so they are indexed as the pending records they now are.
            let tx = conn.transaction()?;
            tx.execute_batch(crate::in_flight::SCHEMA)?;
            crate::rows::index_unindexed(&tx)?;
            tx.execute_batch(&format!("PRAGMA user_version={VERSION}"))?;
            tx.commit()?;
            Ok(())
        }
        VERSION => Ok(()),
        other => corrupt(format!("log schema version {other} is not the one this venus understands ({VERSION})")),
    }
}

/// Forces everything committed so far onto stable storage: one write under `synchronous=FULL`
/// fsyncs the WAL, and with it every earlier commit still in it (frames already checkpointed
/// were synced into the database file when their checkpoint completed).
pub(crate) fn sync(conn: &Connection) -> Result<()> {
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    let bumped = conn.execute(
        "INSERT INTO meta (key, value) VALUES ('syncs', 1) ON CONFLICT (key) DO UPDATE SET value = value + 1",
        [],
    );
    let restored = conn.execute_batch("PRAGMA synchronous=NORMAL;");
    bumped?;
    restored?;
    Ok(())
}
