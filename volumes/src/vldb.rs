//! The volume location database: which volumes exist and which servers hold them.
//!
//! [`Vldb`] is the interface; [`SqliteVldb`] is the embedded backend a single-server cell uses.
//! A multi-server cell will put the same interface over etcd.

use std::path::Path;
use std::sync::Mutex;

use proto::msg::{ServerInfo, Site, SiteRole, VldbEntry, VolumeRef};
use proto::{ServerId, VolumeId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Result, StoreError};

pub trait Vldb: Send + Sync {
    /// A volume id never used before in this cell.
    fn allocate_volume_id(&self) -> Result<VolumeId>;
    /// Adds an entry; refuses a name that exists.
    fn create(&self, entry: &VldbEntry) -> Result<()>;
    fn lookup(&self, volume: &VolumeRef) -> Result<Option<VldbEntry>>;
    fn list(&self) -> Result<Vec<VldbEntry>>;
    fn remove(&self, name: &str) -> Result<()>;
    /// Replaces `old` by `new` only if the entry is still `old` (compare-and-swap).
    fn update(&self, old: &VldbEntry, new: &VldbEntry) -> Result<()>;
    /// Renames an entry; refuses a name that exists.
    fn rename(&self, name: &str, new_name: &str) -> Result<()>;
    fn allocate_server_id(&self) -> Result<ServerId>;
    fn register_server(&self, server: &ServerInfo) -> Result<()>;
    fn servers(&self) -> Result<Vec<ServerInfo>>;
}

pub struct SqliteVldb {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY,
    rw   INTEGER NOT NULL UNIQUE,
    ro   INTEGER,
    bk   INTEGER,
    sites BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (id INTEGER PRIMARY KEY, address TEXT NOT NULL, fingerprint TEXT NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('volume', 1), ('server', 1);
"#;

impl SqliteVldb {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = crate::schema::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteVldb { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self, counter: &str) -> Result<u64> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "UPDATE counters SET next = next + 1 WHERE name = ?1 RETURNING next - 1",
            params![counter],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

/// An entries row: name, rw, ro, backup, encoded sites.
type EntryRow = (String, i64, Option<i64>, Option<i64>, Vec<u8>);

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_entry(row: EntryRow) -> Result<VldbEntry> {
    let (name, rw, ro, bk, sites) = row;
    let sites: Vec<(u32, u8)> =
        postcard::from_bytes(&sites).map_err(|e| StoreError::Corrupt(format!("vldb sites of {name}: {e}")))?;
    Ok(VldbEntry {
        name,
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
    })
}

fn sites_blob(sites: &[Site]) -> Vec<u8> {
    let code = |role: SiteRole| match role {
        SiteRole::ReadWrite => 0u8,
        SiteRole::ReadOnly => 1,
        SiteRole::NewReadOnly => 2,
    };
    let v: Vec<(u32, u8)> = sites.iter().map(|s| (s.server.0, code(s.role))).collect();
    postcard::to_stdvec(&v).unwrap_or_default()
}

impl Vldb for SqliteVldb {
    fn allocate_volume_id(&self) -> Result<VolumeId> {
        self.next("volume").map(VolumeId)
    }

    fn create(&self, e: &VldbEntry) -> Result<()> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT OR IGNORE INTO entries (name, rw, ro, bk, sites) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                e.name,
                e.rw.0 as i64,
                e.ro.map(|v| v.0 as i64),
                e.backup.map(|v| v.0 as i64),
                sites_blob(&e.sites)
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Refused(proto::RemoteError::Exists));
        }
        Ok(())
    }

    fn lookup(&self, volume: &VolumeRef) -> Result<Option<VldbEntry>> {
        let conn = self.conn();
        let row = match volume {
            VolumeRef::Name(name) => {
                let base = name.trim_end_matches(".readonly").trim_end_matches(".backup");
                conn.query_row(
                    "SELECT name, rw, ro, bk, sites FROM entries WHERE name = ?1",
                    params![base],
                    entry_from_row,
                )
                .optional()?
            }
            VolumeRef::Id(id) => conn
                .query_row(
                    "SELECT name, rw, ro, bk, sites FROM entries WHERE rw = ?1 OR ro = ?1 OR bk = ?1",
                    params![id.0 as i64],
                    entry_from_row,
                )
                .optional()?,
        };
        row.map(to_entry).transpose()
    }

    fn list(&self) -> Result<Vec<VldbEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, rw, ro, bk, sites FROM entries ORDER BY name")?;
        let rows = stmt.query_map([], entry_from_row)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(to_entry).collect()
    }

    fn remove(&self, name: &str) -> Result<()> {
        let n = self.conn().execute("DELETE FROM entries WHERE name = ?1", params![name])?;
        if n == 0 {
            return Err(StoreError::Refused(proto::RemoteError::NoSuchVolume));
        }
        Ok(())
    }

    fn update(&self, old: &VldbEntry, e: &VldbEntry) -> Result<()> {
        if old.name != e.name {
            return Err(StoreError::Refused(proto::RemoteError::Invalid("an update cannot rename".into())));
        }
        let conn = self.conn();
        let now = conn
            .query_row("SELECT name, rw, ro, bk, sites FROM entries WHERE name = ?1", params![e.name], entry_from_row)
            .optional()?
            .map(to_entry)
            .transpose()?;
        match now {
            None => return Err(StoreError::Refused(proto::RemoteError::NoSuchVolume)),
            Some(now) if now != *old => {
                return Err(StoreError::Refused(proto::RemoteError::Invalid(format!(
                    "the location entry of {} changed meanwhile (another vos at work?); nothing was changed",
                    e.name
                ))));
            }
            Some(_) => {}
        }
        let n = conn.execute(
            "UPDATE entries SET rw = ?2, ro = ?3, bk = ?4, sites = ?5 WHERE name = ?1",
            params![
                e.name,
                e.rw.0 as i64,
                e.ro.map(|v| v.0 as i64),
                e.backup.map(|v| v.0 as i64),
                sites_blob(&e.sites)
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Refused(proto::RemoteError::NoSuchVolume));
        }
        Ok(())
    }

    fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        let conn = self.conn();
        let taken =
            conn.query_row("SELECT 1 FROM entries WHERE name = ?1", params![new_name], |_| Ok(())).optional()?;
        if taken.is_some() {
            return Err(StoreError::Refused(proto::RemoteError::Exists));
        }
        let n = conn.execute("UPDATE entries SET name = ?2 WHERE name = ?1", params![name, new_name])?;
        if n == 0 {
            return Err(StoreError::Refused(proto::RemoteError::NoSuchVolume));
        }
        Ok(())
    }

    fn allocate_server_id(&self) -> Result<ServerId> {
        self.next("server").map(|n| ServerId(n as u32))
    }

    fn register_server(&self, s: &ServerInfo) -> Result<()> {
        self.conn().execute(
            "INSERT INTO servers (id, address, fingerprint) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET address = excluded.address, fingerprint = excluded.fingerprint",
            params![s.id.0, s.address, s.fingerprint],
        )?;
        Ok(())
    }

    fn servers(&self) -> Result<Vec<ServerInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, address, fingerprint FROM servers ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| Ok(ServerInfo { id: ServerId(r.get(0)?), address: r.get(1)?, fingerprint: r.get(2)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// The location database of a server that does not hold it (it joined a cell): every call says
/// where to go instead.
pub struct NoVldb;

fn elsewhere<T>() -> Result<T> {
    Err(StoreError::Refused(proto::RemoteError::Invalid(
        "this server holds volumes only; ask the cell's database server (the first in the cell file)".into(),
    )))
}

impl Vldb for NoVldb {
    fn allocate_volume_id(&self) -> Result<VolumeId> {
        elsewhere()
    }
    fn create(&self, _: &VldbEntry) -> Result<()> {
        elsewhere()
    }
    fn lookup(&self, _: &VolumeRef) -> Result<Option<VldbEntry>> {
        elsewhere()
    }
    fn list(&self) -> Result<Vec<VldbEntry>> {
        elsewhere()
    }
    fn remove(&self, _: &str) -> Result<()> {
        elsewhere()
    }
    fn update(&self, _: &VldbEntry, _: &VldbEntry) -> Result<()> {
        elsewhere()
    }
    fn rename(&self, _: &str, _: &str) -> Result<()> {
        elsewhere()
    }
    fn allocate_server_id(&self) -> Result<ServerId> {
        elsewhere()
    }
    fn register_server(&self, _: &ServerInfo) -> Result<()> {
        elsewhere()
    }
    fn servers(&self) -> Result<Vec<ServerInfo>> {
        elsewhere()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_servers() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteVldb::open(&dir.path().join("vldb.sqlite")).unwrap();
        let a = db.allocate_volume_id().unwrap();
        let b = db.allocate_volume_id().unwrap();
        assert_ne!(a, b);
        let e = VldbEntry {
            name: "home".into(),
            rw: a,
            ro: None,
            backup: None,
            sites: vec![Site { server: ServerId(1), role: SiteRole::ReadWrite }],
        };
        db.create(&e).unwrap();
        assert!(db.create(&e).is_err(), "duplicate name");
        assert_eq!(db.lookup(&VolumeRef::Name("home".into())).unwrap(), Some(e.clone()));
        assert_eq!(db.lookup(&VolumeRef::Name("home.readonly".into())).unwrap(), Some(e.clone()));
        assert_eq!(db.lookup(&VolumeRef::Id(a)).unwrap(), Some(e.clone()));
        assert_eq!(db.list().unwrap().len(), 1);
        // Updates are compare-and-swap: one made from a stale entry changes nothing.
        let released = VldbEntry { ro: Some(b), ..e.clone() };
        db.update(&e, &released).unwrap();
        let other = VldbEntry { backup: Some(b), ..e.clone() };
        assert!(db.update(&e, &other).is_err());
        assert_eq!(db.lookup(&VolumeRef::Name("home".into())).unwrap(), Some(released));
        db.remove("home").unwrap();
        assert_eq!(db.lookup(&VolumeRef::Id(a)).unwrap(), None);

        let id = db.allocate_server_id().unwrap();
        db.register_server(&ServerInfo { id, address: "127.0.0.1:1".into(), fingerprint: "b3:x".into() }).unwrap();
        db.register_server(&ServerInfo { id, address: "127.0.0.1:2".into(), fingerprint: "b3:x".into() }).unwrap();
        assert_eq!(db.servers().unwrap()[0].address, "127.0.0.1:2");
    }
}
