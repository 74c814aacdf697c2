//! Conversions between database rows and protocol types.

use proto::Acl;
use proto::attr::MODE_MASK;
use proto::msg::{VolumeInfo, VolumeKind};
use proto::{Attr, Fid, ObjectId, ObjectKind, OpId, Timestamp, VersionVector, VolumeId, VolumeStamp};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Result, StoreError};

pub fn oid(id: ObjectId) -> [u8; 16] {
    id.0.to_be_bytes()
}

pub fn oid_from(blob: &[u8]) -> Result<ObjectId> {
    let arr: [u8; 16] = blob.try_into().map_err(|_| StoreError::Corrupt("object id is not 16 bytes".into()))?;
    Ok(ObjectId(u128::from_be_bytes(arr)))
}

pub fn op_blob(op: OpId) -> [u8; 16] {
    op.0.to_be_bytes()
}

pub fn kind_code(k: ObjectKind) -> i64 {
    match k {
        ObjectKind::File => 1,
        ObjectKind::Directory => 2,
        ObjectKind::Symlink => 3,
        ObjectKind::MountPoint => 4,
        ObjectKind::Fifo => 5,
        ObjectKind::Socket => 6,
    }
}

pub fn kind_from(code: i64) -> Result<ObjectKind> {
    Ok(match code {
        1 => ObjectKind::File,
        2 => ObjectKind::Directory,
        3 => ObjectKind::Symlink,
        4 => ObjectKind::MountPoint,
        5 => ObjectKind::Fifo,
        6 => ObjectKind::Socket,
        other => return Err(StoreError::Corrupt(format!("object kind {other}"))),
    })
}

pub fn volume_kind_code(k: VolumeKind) -> i64 {
    match k {
        VolumeKind::ReadWrite => 0,
        VolumeKind::ReadOnly => 1,
        VolumeKind::Backup => 2,
    }
}

pub fn volume_kind_from(code: i64) -> Result<VolumeKind> {
    Ok(match code {
        0 => VolumeKind::ReadWrite,
        1 => VolumeKind::ReadOnly,
        2 => VolumeKind::Backup,
        other => return Err(StoreError::Corrupt(format!("volume kind {other}"))),
    })
}

pub fn vv_blob(v: &VersionVector) -> Vec<u8> {
    // Encoding a map of integers cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

pub fn vv_from(blob: &[u8]) -> Result<VersionVector> {
    postcard::from_bytes(blob).map_err(|e| StoreError::Corrupt(format!("version vector: {e}")))
}

/// An object row: its attributes plus the server-private last op.
#[derive(Debug, Clone)]
pub struct Object {
    pub attr: Attr,
    pub last_op: Option<OpId>,
    /// Directories only: who may do what in it.
    pub acl: Option<Acl>,
}

impl Object {
    pub fn id(&self) -> ObjectId {
        self.attr.fid.object
    }

    pub fn kind(&self) -> ObjectKind {
        self.attr.kind
    }
}

pub const OBJECT_COLUMNS: &str =
    "id, kind, mode, owner, grp, size, nlink, mtime, ctime, version, last_op, parent, link, acl";

pub fn acl_blob(acl: &Acl) -> Vec<u8> {
    postcard::to_stdvec(acl).unwrap_or_default()
}

pub fn acl_from(blob: &[u8]) -> Result<Acl> {
    postcard::from_bytes(blob).map_err(|e| StoreError::Corrupt(format!("acl: {e}")))
}

fn object_from_row(volume: VolumeId, row: &Row<'_>) -> Result<Object> {
    let id = oid_from(&row.get::<_, Vec<u8>>(0)?)?;
    let parent: Option<Vec<u8>> = row.get(11)?;
    let last_op: Option<Vec<u8>> = row.get(10)?;
    let last_op = match last_op {
        Some(b) => Some(OpId(u128::from_be_bytes(
            b.as_slice().try_into().map_err(|_| StoreError::Corrupt("last_op is not 16 bytes".into()))?,
        ))),
        None => None,
    };
    Ok(Object {
        attr: Attr {
            fid: Fid::new(volume, id),
            kind: kind_from(row.get(1)?)?,
            mode: row.get::<_, u32>(2)? & MODE_MASK,
            owner: row.get(3)?,
            group: row.get(4)?,
            size: row.get::<_, i64>(5)? as u64,
            nlink: row.get(6)?,
            mtime: Timestamp::from_nanos(row.get(7)?),
            ctime: Timestamp::from_nanos(row.get(8)?),
            version: vv_from(&row.get::<_, Vec<u8>>(9)?)?,
            parent: parent.map(|p| oid_from(&p)).transpose()?,
            link: row.get(12)?,
        },
        last_op,
        acl: row.get::<_, Option<Vec<u8>>>(13)?.map(|b| acl_from(&b)).transpose()?,
    })
}

pub fn load_object(conn: &Connection, fid: Fid) -> Result<Option<Object>> {
    let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE volume = ?1 AND id = ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![fid.volume.0 as i64, oid(fid.object)])?;
    match rows.next()? {
        Some(row) => Ok(Some(object_from_row(fid.volume, row)?)),
        None => Ok(None),
    }
}

/// Writes an object row, new or changed. Callers have checked existence in the same
/// transaction (a new id must be free; a changed object was just loaded).
pub fn put_object(conn: &Connection, o: &Object) -> Result<()> {
    let a = &o.attr;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO objects (volume, id, kind, mode, owner, grp, size, nlink, mtime, ctime, version, last_op, parent, link, acl)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        a.fid.volume.0 as i64,
        oid(a.fid.object),
        kind_code(a.kind),
        a.mode,
        a.owner,
        a.group,
        a.size as i64,
        a.nlink,
        a.mtime.as_nanos(),
        a.ctime.as_nanos(),
        vv_blob(&a.version),
        o.last_op.map(op_blob),
        a.parent.map(oid),
        a.link,
        o.acl.as_ref().map(acl_blob),
    ])?;
    Ok(())
}

pub fn lookup_entry(conn: &Connection, dir: Fid, name: &str) -> Result<Option<(ObjectId, ObjectKind)>> {
    let mut stmt =
        conn.prepare_cached("SELECT child, kind FROM dirents WHERE volume = ?1 AND dir = ?2 AND name = ?3")?;
    let row = stmt
        .query_row(params![dir.volume.0 as i64, oid(dir.object), name], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    match row {
        Some((child, kind)) => Ok(Some((oid_from(&child)?, kind_from(kind)?))),
        None => Ok(None),
    }
}

pub fn count_entries(conn: &Connection, dir: Fid) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM dirents WHERE volume = ?1 AND dir = ?2")?
        .query_row(params![dir.volume.0 as i64, oid(dir.object)], |r| r.get(0))?;
    Ok(n as u64)
}

pub fn volume_from_row(row: &Row<'_>) -> Result<VolumeInfo> {
    Ok(VolumeInfo {
        id: VolumeId(row.get::<_, i64>(0)? as u64),
        name: row.get(1)?,
        kind: volume_kind_from(row.get(2)?)?,
        stamp: VolumeStamp { incarnation: row.get::<_, i64>(3)? as u64, counter: row.get::<_, i64>(4)? as u64 },
        quota: row.get::<_, i64>(5)? as u64,
        used: row.get::<_, i64>(6)? as u64,
        files: row.get::<_, i64>(7)? as u64,
        directories: row.get::<_, i64>(8)? as u64,
        created: Timestamp::from_nanos(row.get(9)?),
    })
}

pub const VOLUME_COLUMNS: &str = "id, name, kind, incarnation, counter, quota, used, files, dirs, created";

pub fn load_volume(conn: &Connection, id: VolumeId) -> Result<Option<VolumeInfo>> {
    let sql = format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![id.0 as i64])?;
    match rows.next()? {
        Some(row) => Ok(Some(volume_from_row(row)?)),
        None => Ok(None),
    }
}
