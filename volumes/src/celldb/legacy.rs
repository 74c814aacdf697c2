//! Moving cell databases: a cell made before the cell database existed (its location and
//! protection databases in `vldb.sqlite` and `pts.sqlite`) is imported into the embedded cell
//! database once, and an embedded one is copied to etcd (`vice migrate-cell-db`), checked key
//! by key.

use std::path::Path;

use proto::msg::{ServerInfo, Site, SiteRole, VldbEntry};
use proto::{ServerId, VolumeId};

use super::{CellDb, Committed, KeyValue, Op, Txn};
use crate::error::{Result, StoreError};

/// The keys of an import from the old files, as one transaction.
fn legacy_ops(vldb: &Path, pts: &Path) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    let conn = rusqlite::Connection::open(vldb)?;
    let mut stmt = conn.prepare("SELECT name, next FROM counters")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (name, next) = row?;
        ops.push(Op::put(format!("counter/{name}"), &(next as u64)));
    }
    let mut stmt = conn.prepare("SELECT name, rw, ro, bk, sites FROM entries")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    for row in rows {
        let (name, rw, ro, bk, sites) = row?;
        let sites: Vec<(u32, u8)> =
            postcard::from_bytes(&sites).map_err(|e| StoreError::Corrupt(format!("old vldb sites of {name}: {e}")))?;
        let entry = VldbEntry {
            name: name.clone(),
            rw: VolumeId(rw as u64),
            ro: ro.map(|v| VolumeId(v as u64)),
            backup: bk.map(|v| VolumeId(v as u64)),
            sites: sites
                .into_iter()
                .map(|(s, role)| Site {
                    server: ServerId(s),
                    role: match role {
                        0 => SiteRole::ReadWrite,
                        1 => SiteRole::ReadOnly,
                        _ => SiteRole::NewReadOnly,
                    },
                })
                .collect(),
        };
        for id in std::iter::once(entry.rw).chain(entry.ro).chain(entry.backup) {
            ops.push(Op::put(format!("vldb/id/{}", id.0), &name));
        }
        ops.push(Op::put(format!("vldb/name/{name}"), &entry));
    }
    let mut stmt = conn.prepare("SELECT id, address, fingerprint FROM servers")?;
    for row in
        stmt.query_map([], |r| Ok(ServerInfo { id: ServerId(r.get(0)?), address: r.get(1)?, fingerprint: r.get(2)? }))?
    {
        let s = row?;
        ops.push(Op::put(format!("server/{}", s.id.0), &s));
    }

    let conn = rusqlite::Connection::open(pts)?;
    let mut stmt = conn.prepare("SELECT id, name, password FROM entries")?;
    let (mut users, mut groups) = (0i32, proto::auth::PtsId::ADMINISTRATORS.0);
    for row in
        stmt.query_map([], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?)))?
    {
        let (id, name, password) = row?;
        if id > 0 && id < proto::auth::PtsId::ANONYMOUS.0 {
            users = users.max(id);
        } else if id < 0 {
            groups = groups.min(id);
        }
        if !name.starts_with('#') {
            ops.push(Op::put(format!("pts/name/{name}"), &id));
        }
        ops.push(Op::put(format!("pts/id/{id}"), &serde_json::json!({ "name": name, "password": password })));
    }
    ops.push(Op::put("pts/counter/user", &users));
    ops.push(Op::put("pts/counter/group", &groups));
    let mut stmt = conn.prepare("SELECT grp, user FROM members")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i32>(1)?)))? {
        let (g, u) = row?;
        ops.push(Op::put(format!("pts/member/{g}/{u}"), &1));
        ops.push(Op::put(format!("pts/memberof/{u}/{g}"), &1));
    }
    Ok(ops)
}

/// Imports `vldb.sqlite` and `pts.sqlite` of a cell made before the cell database, if they
/// exist and `db` is empty, in one transaction; renames them to `*.imported` after. Whether it
/// imported anything.
pub fn import_old_files(vldb: &Path, pts: &Path, db: &dyn CellDb) -> Result<bool> {
    if !vldb.exists() || !pts.exists() || !db.range("")?.is_empty() {
        return Ok(false);
    }
    let mut txn = Txn::new();
    txn.then = legacy_ops(vldb, pts)?;
    if let Committed::ConditionFailed = db.txn(txn)? {
        return Err(StoreError::Corrupt("importing the old databases failed".into()));
    }
    for old in [vldb, pts] {
        std::fs::rename(old, old.with_extension("sqlite.imported"))?;
    }
    tracing::info!(vldb = %vldb.display(), pts = %pts.display(), "old location and protection databases imported");
    Ok(true)
}

/// Keys that belong to a running server or admin (under leases): not copied.
fn durable(kv: &KeyValue) -> bool {
    kv.lease == 0
}

/// Keys per transaction when copying (etcd allows 128 operations per transaction by default).
const BATCH: usize = 100;

/// Copies every durable key of `from` into `to`, which must hold nothing yet, then reads `to`
/// back and checks that it holds exactly those keys and values. The number of keys copied.
pub fn copy_all(from: &dyn CellDb, to: &dyn CellDb) -> Result<usize> {
    if !to.range("")?.is_empty() {
        return Err(StoreError::Refused(proto::RemoteError::Invalid(format!(
            "{} is not empty: a cell database is copied only into an empty one",
            to.describe()
        ))));
    }
    let keys: Vec<KeyValue> = from.range("")?.into_iter().filter(durable).collect();
    for batch in keys.chunks(BATCH) {
        let mut txn = Txn::new();
        for kv in batch {
            txn = txn.when(super::Compare::Missing(kv.key.clone())).then(Op::Put {
                key: kv.key.clone(),
                value: kv.value.clone(),
                lease: None,
            });
        }
        if let Committed::ConditionFailed = to.txn(txn)? {
            return Err(StoreError::Refused(proto::RemoteError::Invalid(format!(
                "{} changed while the cell database was being copied into it",
                to.describe()
            ))));
        }
    }
    let copied: Vec<(String, Vec<u8>)> =
        to.range("")?.into_iter().filter(durable).map(|kv| (kv.key, kv.value)).collect();
    let wanted: Vec<(String, Vec<u8>)> = keys.into_iter().map(|kv| (kv.key, kv.value)).collect();
    if copied != wanted {
        return Err(StoreError::Corrupt(format!(
            "the copy in {} differs from the original ({} keys against {})",
            to.describe(),
            copied.len(),
            wanted.len()
        )));
    }
    Ok(wanted.len())
}

#[cfg(test)]
pub(crate) fn make_old_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (vldb, pts) = (dir.join("vldb.sqlite"), dir.join("pts.sqlite"));
    let v = rusqlite::Connection::open(&vldb).unwrap();
    v.execute_batch(
        "CREATE TABLE counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
         CREATE TABLE entries (name TEXT PRIMARY KEY, rw INTEGER NOT NULL UNIQUE, ro INTEGER, bk INTEGER, sites BLOB NOT NULL);
         CREATE TABLE servers (id INTEGER PRIMARY KEY, address TEXT NOT NULL, fingerprint TEXT NOT NULL);
         INSERT INTO counters VALUES ('volume', 4), ('server', 2);
         INSERT INTO servers VALUES (1, '127.0.0.1:7000', 'b3:abc');",
    )
    .unwrap();
    let sites = postcard::to_stdvec(&vec![(1u32, 0u8), (1u32, 1u8)]).unwrap();
    v.execute("INSERT INTO entries VALUES ('root.cell', 2, 3, NULL, ?1)", rusqlite::params![sites]).unwrap();
    let p = rusqlite::Connection::open(&pts).unwrap();
    p.execute_batch(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, password TEXT);
         CREATE TABLE members (grp INTEGER NOT NULL, user INTEGER NOT NULL, PRIMARY KEY (grp, user));
         INSERT INTO entries VALUES (32766, 'anonymous', NULL), (-101, 'system:anyuser', NULL),
             (-102, 'system:authuser', NULL), (-204, 'system:administrators', NULL),
             (1, 'admin', 'x'), (2, '#2', NULL), (-205, 'admin:friends', NULL);
         INSERT INTO members VALUES (-204, 1), (-205, 1);",
    )
    .unwrap();
    (vldb, pts)
}
