//! The SQLite schema of a server's volume store.
//!
//! One database holds every volume on the server, so chunks are shared across volumes (clones
//! and backups cost metadata only) and a reintegration batch commits in one transaction.
//! Object ids are 16-byte big-endian blobs; times are nanoseconds since the epoch.

use rusqlite::Connection;

use crate::error::Result;

const VERSION: i64 = 6;

/// Which client holds the write-back permit of a volume (vice keeps the leases in memory; a
/// restarted server gives each holder a fresh lease to come back and flush in).
const PERMITS: &str = "CREATE TABLE IF NOT EXISTS permits (volume INTEGER PRIMARY KEY, client BLOB NOT NULL);";
/// A replicated volume's place in its group's log: what was applied last and the membership
/// then (an opaque blob of the replication layer), written in the transaction of the change
/// itself, so a crash never leaves the volume and its applied position apart.
/// Which volume each remembered result belongs to, so a replicated volume's snapshot carries
/// them (a retry reaching a rebuilt member is still answered, not applied again).
const OP_VOLUMES: &str = "ALTER TABLE op_results ADD COLUMN volume INTEGER;
     CREATE INDEX op_results_volume ON op_results(volume) WHERE volume IS NOT NULL;";
const REPLICATED: &str = "CREATE TABLE IF NOT EXISTS replicated (volume INTEGER PRIMARY KEY, applied BLOB NOT NULL);";

const SCHEMA: &str = r#"
CREATE TABLE volumes (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        INTEGER NOT NULL,
    incarnation INTEGER NOT NULL,
    counter     INTEGER NOT NULL,
    quota       INTEGER NOT NULL,
    used        INTEGER NOT NULL DEFAULT 0,
    files       INTEGER NOT NULL DEFAULT 0,
    dirs        INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL
);
CREATE TABLE objects (
    volume  INTEGER NOT NULL,
    id      BLOB NOT NULL,
    kind    INTEGER NOT NULL,
    mode    INTEGER NOT NULL,
    owner   INTEGER NOT NULL,
    grp     INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    nlink   INTEGER NOT NULL,
    mtime   INTEGER NOT NULL,
    ctime   INTEGER NOT NULL,
    version BLOB NOT NULL,
    last_op BLOB,
    -- The directory an object is entered in (files may have several names, all in one directory).
    parent  BLOB,
    link    TEXT,
    -- Directories: their ACL (postcard).
    acl     BLOB,
    PRIMARY KEY (volume, id)
) WITHOUT ROWID;
CREATE TABLE dirents (
    volume INTEGER NOT NULL,
    dir    BLOB NOT NULL,
    name   TEXT NOT NULL,
    child  BLOB NOT NULL,
    kind   INTEGER NOT NULL,
    PRIMARY KEY (volume, dir, name)
) WITHOUT ROWID;
-- A file's contents: its chunks in order.
CREATE TABLE file_chunks (
    volume INTEGER NOT NULL,
    object BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    len    INTEGER NOT NULL,
    PRIMARY KEY (volume, object, seq)
) WITHOUT ROWID;
CREATE INDEX file_chunks_hash ON file_chunks(hash);
-- A row exists only once the chunk's bytes are durable: in `data` for small chunks, in pack
-- `pack` at `pack_offset` for larger ones, or (recorded before packs) in the chunk's own file
-- when both are NULL. Unreferenced chunks older than the grace period are swept (mark and
-- sweep against file_chunks).
CREATE TABLE chunks (
    hash        BLOB PRIMARY KEY,
    len         INTEGER NOT NULL,
    added_at    INTEGER NOT NULL,
    data        BLOB,
    pack        INTEGER,
    pack_offset INTEGER
) WITHOUT ROWID;
CREATE INDEX chunks_pack ON chunks(pack) WHERE pack IS NOT NULL;
-- Results of recent mutations by OpId: a retried request is answered, not applied twice.
CREATE TABLE op_results (
    op     BLOB PRIMARY KEY,
    client BLOB NOT NULL,
    at     INTEGER NOT NULL,
    result BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX op_results_at ON op_results(at);
"#;

/// Opens a connection with the pragmas the durability promises need: WAL, and `FULL` sync so a
/// committed transaction survives a machine crash. Every database of a server opens this way.
pub fn open(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")?;
    // Plans that do not depend on bound values: otherwise a statement compared with an index
    // is prepared again whenever a new value is bound to it.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

/// Creates the schema in a new database, or brings an existing one up to date, one version at a
/// time, each step in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(crate::error::StoreError::Corrupt(format!(
            "database schema version {version} is newer than this server understands ({VERSION})"
        )));
    }
    while version < VERSION {
        let tx = conn.transaction()?;
        match version {
            0 => {
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(PERMITS)?;
                tx.execute_batch(REPLICATED)?;
                tx.execute_batch(OP_VOLUMES)?;
                version = VERSION;
            }
            1 => {
                // Version 2: ACLs on directories, and every object knows its directory.
                tx.execute_batch(
                    "ALTER TABLE objects ADD COLUMN acl BLOB;
                     UPDATE objects SET parent = (SELECT d.dir FROM dirents d
                         WHERE d.volume = objects.volume AND d.child = objects.id LIMIT 1)
                     WHERE parent IS NULL;",
                )?;
                let acl = crate::rows::acl_blob(&proto::Acl::volume_default());
                tx.execute(
                    "UPDATE objects SET acl = ?1 WHERE kind = ?2",
                    rusqlite::params![acl, crate::rows::kind_code(proto::ObjectKind::Directory)],
                )?;
                version = 2;
            }
            2 => {
                // Version 3: small chunks' bytes in their rows. Existing chunks stay files.
                tx.execute_batch("ALTER TABLE chunks ADD COLUMN data BLOB;")?;
                version = 3;
            }
            3 => {
                // Version 4: large chunks in pack files. Existing chunk files stay.
                tx.execute_batch(
                    "ALTER TABLE chunks ADD COLUMN pack INTEGER;
                     ALTER TABLE chunks ADD COLUMN pack_offset INTEGER;
                     CREATE INDEX chunks_pack ON chunks(pack) WHERE pack IS NOT NULL;",
                )?;
                version = 4;
            }
            4 => {
                // Version 5: the write-back permits granted, so a restart keeps them.
                tx.execute_batch(PERMITS)?;
                version = 5;
            }
            5 => {
                // Version 6: replicated volumes' applied positions.
                tx.execute_batch(REPLICATED)?;
                tx.execute_batch(OP_VOLUMES)?;
                version = 6;
            }
            other => {
                return Err(crate::error::StoreError::Corrupt(format!("database schema version {other} is not valid")));
            }
        }
        tx.execute_batch(&format!("PRAGMA user_version={version}"))?;
        tx.commit()?;
    }
    Ok(())
}
