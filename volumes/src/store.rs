//! The volume store of one server: every volume it holds, their objects and directories, and
//! the chunks of their files.
//!
//! SQLite (WAL) holds the metadata behind one writer connection; reads use a small pool of
//! connections that see the last committed state, so fetches never wait for a store to commit.
//! All methods block: the server calls them from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use proto::chunk::MAX_CHUNK;
use proto::msg::{VolumeInfo, VolumeKind};
use proto::{Attr, ChunkHash, ChunkRef, DirEntry, Fid, Name, ObjectId, ObjectKind, RemoteError, ServerId, Timestamp};
use proto::{VersionVector, VolumeId, VolumeStamp};
use rusqlite::{Connection, OptionalExtension, params};

use proto::auth::{Access, Acl, PtsId, Rights};
use proto::msg::AttrCheck;

use crate::access::{self, Caller};
use crate::chunks::{ChunkStore, INLINE_MAX};
use crate::error::{Result, StoreError, refuse};
use crate::rows::{self, Object};
use crate::schema;

const READERS: usize = 4;

pub struct Store {
    pub(crate) server: ServerId,
    path: PathBuf,
    pub(crate) writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    pub(crate) chunks: ChunkStore,
    /// Uploads hold this shared; the sweep holds it exclusively, so it never deletes a chunk
    /// file an upload is about to record.
    pub(crate) gc: RwLock<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`: `dir/volumes.sqlite` and `dir/chunks/`.
    pub fn open(dir: &Path, server: ServerId) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("volumes.sqlite");
        let mut writer = schema::open(&path)?;
        schema::migrate(&mut writer)?;
        let chunks = ChunkStore::open(&dir.join("chunks"))?;
        Ok(Store {
            server,
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            chunks,
            gc: RwLock::new(()),
        })
    }

    pub fn server(&self) -> ServerId {
        self.server
    }

    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is safe to reuse.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a read connection from the pool.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => schema::open(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        out
    }

    // ----- volumes -----

    /// Creates a volume with an empty root directory governed by `root_acl`.
    pub fn create_volume(
        &self,
        id: VolumeId,
        name: &str,
        kind: VolumeKind,
        quota: u64,
        root_acl: &Acl,
    ) -> Result<VolumeInfo> {
        if let Err(e) = root_acl.validate() {
            return refuse(RemoteError::Invalid(e));
        }
        let mut conn = self.lock_writer();
        let tx = conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row("SELECT id FROM volumes WHERE id = ?1 OR name = ?2", params![id.0 as i64, name], |r| r.get(0))
            .optional()?;
        if exists.is_some() {
            return refuse(RemoteError::Exists);
        }
        let now = Timestamp::now();
        let incarnation: u64 = rand::random::<u64>() >> 1;
        tx.execute(
            "INSERT INTO volumes (id, name, kind, incarnation, counter, quota, used, files, dirs, created)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, 0, 0, 1, ?6)",
            params![id.0 as i64, name, rows::volume_kind_code(kind), incarnation as i64, quota as i64, now.as_nanos()],
        )?;
        let root = Object {
            attr: Attr {
                fid: Fid::root(id),
                kind: ObjectKind::Directory,
                mode: 0o755,
                owner: 0,
                group: 0,
                size: 0,
                nlink: 2,
                mtime: now,
                ctime: now,
                version: VersionVector::first(self.server),
                parent: Some(ObjectId::ROOT),
                link: None,
            },
            last_op: None,
            acl: Some(root_acl.clone()),
        };
        rows::put_object(&tx, &root)?;
        let info = rows::load_volume(&tx, id)?.ok_or_else(|| StoreError::Corrupt("new volume vanished".into()))?;
        tx.commit()?;
        Ok(info)
    }

    /// Removes a volume and everything in it. Its chunks are reclaimed by the next sweep.
    pub fn remove_volume(&self, id: VolumeId) -> Result<()> {
        let mut conn = self.lock_writer();
        let tx = conn.transaction()?;
        let v = id.0 as i64;
        let n = tx.execute("DELETE FROM volumes WHERE id = ?1", params![v])?;
        if n == 0 {
            return refuse(RemoteError::NoSuchVolume);
        }
        tx.execute("DELETE FROM objects WHERE volume = ?1", params![v])?;
        tx.execute("DELETE FROM dirents WHERE volume = ?1", params![v])?;
        tx.execute("DELETE FROM file_chunks WHERE volume = ?1", params![v])?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_quota(&self, id: VolumeId, quota: u64) -> Result<()> {
        let conn = self.lock_writer();
        let n = conn.execute("UPDATE volumes SET quota = ?2 WHERE id = ?1", params![id.0 as i64, quota as i64])?;
        if n == 0 {
            return refuse(RemoteError::NoSuchVolume);
        }
        Ok(())
    }

    pub fn volume(&self, id: VolumeId) -> Result<VolumeInfo> {
        self.read(|c| rows::load_volume(c, id))?.ok_or(StoreError::Refused(RemoteError::NoSuchVolume))
    }

    pub fn volume_by_name(&self, name: &str) -> Result<Option<VolumeInfo>> {
        self.read(|c| {
            let sql = format!("SELECT {} FROM volumes WHERE name = ?1", rows::VOLUME_COLUMNS);
            let mut stmt = c.prepare(&sql)?;
            let mut rs = stmt.query(params![name])?;
            match rs.next()? {
                Some(row) => Ok(Some(rows::volume_from_row(row)?)),
                None => Ok(None),
            }
        })
    }

    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.read(|c| {
            let sql = format!("SELECT {} FROM volumes ORDER BY name", rows::VOLUME_COLUMNS);
            let mut stmt = c.prepare(&sql)?;
            let mut rs = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rs.next()? {
                out.push(rows::volume_from_row(row)?);
            }
            Ok(out)
        })
    }

    pub fn stamp(&self, id: VolumeId) -> Result<VolumeStamp> {
        Ok(self.volume(id)?.stamp)
    }

    // ----- reads -----

    /// An object's attributes; needs `l` on its directory.
    pub fn fetch_status(&self, caller: &Caller, fid: Fid) -> Result<(Attr, Access)> {
        self.read(|c| {
            let obj = load_existing(c, fid)?;
            let access = access::access(c, caller, &obj)?;
            if !access.caller.contains(Rights::LOOKUP) {
                return refuse(RemoteError::PermissionDenied);
            }
            Ok((obj.attr, access))
        })
    }

    /// A directory's entries; needs `l` on it.
    pub fn fetch_dir(&self, caller: &Caller, fid: Fid) -> Result<(Attr, Vec<DirEntry>, Access)> {
        self.read(|c| {
            let (dir, access) = looked_up_dir(c, caller, fid)?;
            let mut stmt =
                c.prepare_cached("SELECT name, child, kind FROM dirents WHERE volume = ?1 AND dir = ?2 ORDER BY name")?;
            let mut rs = stmt.query(params![fid.volume.0 as i64, rows::oid(fid.object)])?;
            let mut entries = Vec::new();
            while let Some(row) = rs.next()? {
                let name: String = row.get(0)?;
                entries.push(DirEntry {
                    name: Name::new(name).map_err(|e| StoreError::Corrupt(format!("stored name: {e}")))?,
                    object: rows::oid_from(&row.get::<_, Vec<u8>>(1)?)?,
                    kind: rows::kind_from(row.get(2)?)?,
                });
            }
            Ok((dir.attr, entries, access))
        })
    }

    /// A file's attributes and chunk list (read the bytes with [`Store::read_chunk`]); needs
    /// `r` on its directory, subject to the file rules of [`proto::auth::file_rights`].
    pub fn fetch_data(&self, caller: &Caller, fid: Fid) -> Result<(Attr, Vec<ChunkRef>, Access)> {
        self.read(|c| {
            let obj = load_existing(c, fid)?;
            match obj.kind() {
                ObjectKind::File => {}
                ObjectKind::Directory => return refuse(RemoteError::IsDirectory),
                ObjectKind::Symlink | ObjectKind::MountPoint => {
                    return refuse(RemoteError::Invalid("not a regular file".into()));
                }
            }
            let access = access::access(c, caller, &obj)?;
            access::require(c, caller, &obj, Rights::READ)?;
            Ok((obj.attr, file_chunks(c, fid)?, access))
        })
    }

    /// For each object the client holds at a version: still current, changed (its attributes
    /// now), gone, or no longer visible to the caller. One read snapshot; rights are computed
    /// once per governing directory.
    pub fn validate_attrs(&self, caller: &Caller, objects: &[(Fid, VersionVector)]) -> Result<Vec<AttrCheck>> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let mut rights: std::collections::HashMap<Fid, Access> = std::collections::HashMap::new();
            let mut out = Vec::with_capacity(objects.len());
            for (fid, version) in objects {
                let Some(obj) = rows::load_object(&tx, *fid)? else {
                    out.push(AttrCheck::Gone);
                    continue;
                };
                let dir = if obj.kind() == ObjectKind::Directory {
                    *fid
                } else {
                    Fid::new(fid.volume, obj.attr.parent.unwrap_or(ObjectId::ROOT))
                };
                let access = match rights.get(&dir) {
                    Some(a) => *a,
                    None => {
                        let a = access::access(&tx, caller, &obj)?;
                        rights.insert(dir, a);
                        a
                    }
                };
                out.push(if !access.caller.contains(Rights::LOOKUP) {
                    AttrCheck::Denied
                } else if obj.attr.version.same_as(version) {
                    AttrCheck::Same { access }
                } else {
                    AttrCheck::Changed { attr: obj.attr, access }
                });
            }
            Ok(out)
        })
    }

    /// A directory's ACL; needs `l` on it.
    pub fn fetch_acl(&self, caller: &Caller, fid: Fid) -> Result<(Acl, Access)> {
        self.read(|c| {
            let (dir, access) = looked_up_dir(c, caller, fid)?;
            Ok((dir.acl.unwrap_or_default(), access))
        })
    }

    /// Sets one ACL entry of a directory (`a` needed). The directory gets a new version and the
    /// volume a new stamp, so every cached right derived from the old ACL is revalidated.
    pub fn set_acl_entry(
        &self,
        caller: &Caller,
        fid: Fid,
        who: PtsId,
        rights: Rights,
        negative: bool,
    ) -> Result<(Attr, Access)> {
        let mut conn = self.lock_writer();
        let tx = conn.transaction()?;
        let mut dir = load_existing(&tx, fid)?;
        if dir.kind() != ObjectKind::Directory {
            return refuse(RemoteError::NotDirectory);
        }
        let info = rows::load_volume(&tx, fid.volume)?.ok_or(StoreError::Refused(RemoteError::NoSuchVolume))?;
        if info.kind != VolumeKind::ReadWrite {
            return refuse(RemoteError::ReadOnly);
        }
        access::require_on_dir(caller, &dir, Rights::ADMINISTER)?;
        let mut acl = dir.acl.clone().unwrap_or_default();
        acl.set(who, rights, negative).map_err(RemoteError::Invalid)?;
        dir.acl = Some(acl);
        dir.attr.version.bump(self.server);
        dir.attr.ctime = Timestamp::now();
        rows::put_object(&tx, &dir)?;
        tx.execute("UPDATE volumes SET counter = counter + 1 WHERE id = ?1", params![fid.volume.0 as i64])?;
        let access = access::access(&tx, caller, &dir)?;
        tx.commit()?;
        Ok((dir.attr, access))
    }

    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        if chunk.len <= INLINE_MAX {
            let row: Option<Option<Vec<u8>>> = self.read(|c| {
                Ok(c.prepare_cached("SELECT data FROM chunks WHERE hash = ?1")?
                    .query_row(params![&chunk.hash.0[..]], |r| r.get(0))
                    .optional()?)
            })?;
            // No bytes in the row: a chunk recorded before small chunks were kept inline.
            if let Some(Some(data)) = row {
                if data.len() != chunk.len as usize {
                    return Err(StoreError::Corrupt(format!(
                        "chunk {} has {} bytes, not {}",
                        chunk.hash,
                        data.len(),
                        chunk.len
                    )));
                }
                return Ok(data);
            }
        }
        self.chunks.read(&chunk.hash, chunk.len)
    }

    /// Indices of the chunks this server does not hold.
    pub fn missing_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<u32>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?;
            let mut out = Vec::new();
            for (i, h) in hashes.iter().enumerate() {
                if !stmt.exists(params![&h.0[..]])? {
                    out.push(i as u32);
                }
            }
            Ok(out)
        })
    }

    /// Starts an upload of chunks; see [`ChunkUpload`].
    pub fn upload(&self) -> ChunkUpload<'_> {
        ChunkUpload {
            store: self,
            _gc: self.gc.read().unwrap_or_else(|p| p.into_inner()),
            in_files: Vec::new(),
            inline: Vec::new(),
        }
    }
}

/// An upload batch: chunks are written as they arrive and recorded (made visible to stores)
/// only by [`ChunkUpload::commit`], after one sync makes them all durable. Small chunks are
/// kept in memory and recorded with their bytes.
pub struct ChunkUpload<'a> {
    store: &'a Store,
    _gc: std::sync::RwLockReadGuard<'a, ()>,
    in_files: Vec<ChunkRef>,
    inline: Vec<SmallChunk>,
}

impl ChunkUpload<'_> {
    /// Verifies and writes one chunk. The data must hash to `chunk.hash`.
    pub fn add(&mut self, chunk: ChunkRef, data: &[u8]) -> Result<()> {
        verify(chunk, data)?;
        // A file on disk without a row may be torn by a crash: only a recorded chunk is trusted.
        let recorded = self.store.read(|c| {
            Ok(c.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?.exists(params![&chunk.hash.0[..]])?)
        })?;
        if recorded {
            return Ok(());
        }
        if chunk.len <= INLINE_MAX {
            self.inline.push(SmallChunk { chunk, data: data.to_vec() });
        } else {
            self.store.chunks.write(&chunk.hash, data)?;
            self.in_files.push(chunk);
        }
        Ok(())
    }

    /// Makes the batch durable and records it. Returns how many chunks were new.
    pub fn commit(self) -> Result<u32> {
        if self.in_files.is_empty() && self.inline.is_empty() {
            return Ok(0);
        }
        let hashes: Vec<ChunkHash> = self.in_files.iter().map(|c| c.hash).collect();
        self.store.chunks.make_durable(&hashes)?;
        let mut conn = self.store.lock_writer();
        let tx = conn.transaction()?;
        record_chunks(&tx, &self.in_files, &self.inline, Timestamp::now())?;
        tx.commit()?;
        Ok((self.in_files.len() + self.inline.len()) as u32)
    }
}

/// A chunk of at most [`INLINE_MAX`] bytes whose data matches its hash, to be recorded with
/// its bytes (see [`Store::apply_with_chunks`]).
#[derive(Debug, Clone)]
pub struct SmallChunk {
    chunk: ChunkRef,
    data: Vec<u8>,
}

impl SmallChunk {
    pub fn new(chunk: ChunkRef, data: Vec<u8>) -> Result<Self> {
        verify(chunk, &data)?;
        if chunk.len > INLINE_MAX {
            return refuse(RemoteError::Invalid(format!("chunk of {} bytes is not small", chunk.len)));
        }
        Ok(SmallChunk { chunk, data })
    }
}

/// Refuses a chunk that is too large or whose data does not match its hash.
fn verify(chunk: ChunkRef, data: &[u8]) -> Result<()> {
    if chunk.len > MAX_CHUNK || data.len() != chunk.len as usize {
        return refuse(RemoteError::Invalid(format!("chunk of {} bytes", data.len())));
    }
    if ChunkHash::of(data) != chunk.hash {
        return refuse(RemoteError::Invalid("chunk data does not match its hash".into()));
    }
    Ok(())
}

/// Records durable chunks: those in files (already synced) and small ones with their bytes.
pub(crate) fn record_chunks(
    c: &Connection,
    in_files: &[ChunkRef],
    inline: &[SmallChunk],
    now: Timestamp,
) -> Result<()> {
    let mut stmt =
        c.prepare_cached("INSERT OR IGNORE INTO chunks (hash, len, added_at, data) VALUES (?1, ?2, ?3, ?4)")?;
    for c in in_files {
        stmt.execute(params![&c.hash.0[..], c.len, now.as_nanos(), None::<Vec<u8>>])?;
    }
    for s in inline {
        stmt.execute(params![&s.chunk.hash.0[..], s.chunk.len, now.as_nanos(), &s.data])?;
    }
    Ok(())
}

/// A directory the caller may look into (`l`), with their access.
fn looked_up_dir(c: &Connection, caller: &Caller, fid: Fid) -> Result<(Object, Access)> {
    let dir = load_existing(c, fid)?;
    if dir.kind() != ObjectKind::Directory {
        return refuse(RemoteError::NotDirectory);
    }
    let access = access::access(c, caller, &dir)?;
    if !access.caller.contains(Rights::LOOKUP) {
        return refuse(RemoteError::PermissionDenied);
    }
    Ok((dir, access))
}

pub(crate) fn load_existing(c: &Connection, fid: Fid) -> Result<Object> {
    rows::load_object(c, fid)?.ok_or(StoreError::Refused(RemoteError::NotFound))
}

pub(crate) fn file_chunks(c: &Connection, fid: Fid) -> Result<Vec<ChunkRef>> {
    let mut stmt =
        c.prepare_cached("SELECT hash, len FROM file_chunks WHERE volume = ?1 AND object = ?2 ORDER BY seq")?;
    let mut rs = stmt.query(params![fid.volume.0 as i64, rows::oid(fid.object)])?;
    let mut out = Vec::new();
    while let Some(row) = rs.next()? {
        let hash: Vec<u8> = row.get(0)?;
        let hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt("chunk hash is not 32 bytes".into()))?;
        out.push(ChunkRef { hash: ChunkHash(hash), len: row.get(1)? });
    }
    Ok(out)
}
