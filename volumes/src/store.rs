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
use crate::chunks::{ChunkStore, INLINE_MAX, PackId, PackWriter};
use crate::error::{Result, StoreError, refuse};
use crate::rows::{self, Object};
use crate::schema;
use crate::space::{self, Admission, FreeSpace, Limits, SpaceGuard};

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
    /// Free space on the store's disk: growth refused below the low-water mark, the reserve.
    pub(crate) space: SpaceGuard,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`: `dir/volumes.sqlite`, `dir/chunks/` and the
    /// reserve file `dir/reserve` (see [`crate::space`]).
    pub fn open(dir: &Path, server: ServerId) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let space = SpaceGuard::new(dir);
        Store::open_with_space(dir, server, space)
    }

    /// [`Store::open`] measuring free space with `source` and these sizes (tests simulate a
    /// full disk this way).
    pub fn open_with(dir: &Path, server: ServerId, source: Box<dyn FreeSpace>, limits: Limits) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Store::open_with_space(dir, server, SpaceGuard::with(dir, source, limits))
    }

    fn open_with_space(dir: &Path, server: ServerId, space: SpaceGuard) -> Result<Self> {
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
            space,
        })
    }

    /// The store's free-space guard.
    pub fn space(&self) -> &SpaceGuard {
        &self.space
    }

    /// Below the low-water mark, after something was freed: sweeps unreferenced chunks at once
    /// (no grace period) so that removed files' space comes back before a growing change is
    /// refused. The grace period protects chunks a client was just told the server holds; a
    /// client whose store then names a swept chunk hears `MissingChunks` and uploads it again,
    /// which costs less than refusing every change until the next periodic sweep.
    pub(crate) fn reclaim_under_pressure(&self) {
        if !self.space.take_freed() {
            return;
        }
        match self.space.retry_freeing(|| self.sweep(std::time::Duration::ZERO)) {
            Ok(r) => r.log("disk nearly full: swept at once"),
            Err(e) => tracing::error!(error = %e, "disk nearly full and the sweep failed"),
        }
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
        let birth = crate::replicated::Birth {
            incarnation: rand::random::<u64>() >> 1,
            now: Timestamp::now(),
            stamp: self.server,
        };
        self.create_volume_as(id, name, kind, quota, root_acl, birth, None)
    }

    /// [`Store::create_volume`] with its incarnation, clock and version-vector entry given
    /// (a replicated volume is born the same on every member), and a log position to record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_volume_as(
        &self,
        id: VolumeId,
        name: &str,
        kind: VolumeKind,
        quota: u64,
        root_acl: &Acl,
        birth: crate::replicated::Birth,
        applied: Option<&[u8]>,
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
        let (now, incarnation) = (birth.now, birth.incarnation);
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
                version: VersionVector::first(birth.stamp),
                parent: Some(ObjectId::ROOT),
                link: None,
            },
            last_op: None,
            acl: Some(root_acl.clone()),
        };
        rows::put_object(&tx, &root)?;
        if let Some(applied) = applied {
            crate::replicated::note_applied(&tx, id, applied)?;
        }
        let info = rows::load_volume(&tx, id)?.ok_or_else(|| StoreError::Corrupt("new volume vanished".into()))?;
        tx.commit()?;
        Ok(info)
    }

    /// Removes a volume and everything in it. Its chunks are reclaimed by the next sweep. It
    /// frees space, so on a full disk it may use the reserve.
    pub fn remove_volume(&self, id: VolumeId) -> Result<()> {
        self.space.retry_freeing(|| {
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
            tx.execute("DELETE FROM replicated WHERE volume = ?1", params![v])?;
            tx.commit()?;
            Ok(())
        })?;
        self.space.note_freed();
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
                ObjectKind::Symlink | ObjectKind::MountPoint | ObjectKind::Fifo | ObjectKind::Socket => {
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
                    AttrCheck::Current { attr: obj.attr, access }
                } else {
                    AttrCheck::Changed { attr: obj.attr, access }
                });
            }
            Ok(out)
        })
    }

    /// A volume's quota and use and this server's room for it (`df`); needs `l` on its root.
    pub fn volume_space(&self, caller: &Caller, volume: VolumeId) -> Result<proto::msg::VolumeSpace> {
        let info = self.read(|c| {
            looked_up_dir(c, caller, Fid::root(volume))?;
            rows::load_volume(c, volume)?.ok_or(StoreError::Refused(RemoteError::NotFound))
        })?;
        let server_free = self.space.measure().headroom().map(|h| u64::try_from(h).unwrap_or(0));
        Ok(proto::msg::VolumeSpace {
            stamp: info.stamp,
            used: info.used,
            quota: info.quota,
            files: info.files,
            directories: info.directories,
            server_free,
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
        self.set_acl_entry_as(caller, fid, (who, rights, negative), Timestamp::now(), self.server, None)
    }

    /// [`Store::set_acl_entry`] with the clock and version-vector entry given, recording a
    /// replicated volume's log position in the same transaction.
    pub(crate) fn set_acl_entry_as(
        &self,
        caller: &Caller,
        fid: Fid,
        (who, rights, negative): (PtsId, Rights, bool),
        now: Timestamp,
        stamp: ServerId,
        applied: Option<&[u8]>,
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
        dir.attr.version.bump(stamp);
        dir.attr.ctime = now;
        rows::put_object(&tx, &dir)?;
        tx.execute("UPDATE volumes SET counter = counter + 1 WHERE id = ?1", params![fid.volume.0 as i64])?;
        if let Some(applied) = applied {
            crate::replicated::note_applied(&tx, fid.volume, applied)?;
        }
        let access = access::access(&tx, caller, &dir)?;
        tx.commit()?;
        Ok((dir.attr, access))
    }

    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        // The sweep may move a packed chunk between the lookup and the read (it deletes the old
        // pack only after the new place is committed): a second lookup finds the new place.
        for _ in 0..2 {
            let data = match self.chunk_place(&chunk.hash)? {
                Some(Place::Inline(data)) => data,
                Some(Place::Packed { pack, offset }) => match self.chunks.read_packed(pack, offset, chunk.len) {
                    Ok(data) => data,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::Corrupt(format!("chunk {} in its pack: {e}", chunk.hash))),
                },
                Some(Place::File) => self.chunks.read_file(&chunk.hash, chunk.len)?,
                None => return Err(StoreError::Corrupt(format!("chunk {} is not recorded", chunk.hash))),
            };
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
        Err(StoreError::Corrupt(format!("chunk {}: its pack is missing", chunk.hash)))
    }

    fn chunk_place(&self, hash: &ChunkHash) -> Result<Option<Place>> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT data, pack, pack_offset FROM chunks WHERE hash = ?1")?
                .query_row(params![&hash.0[..]], |r| {
                    let data: Option<Vec<u8>> = r.get(0)?;
                    let pack: Option<i64> = r.get(1)?;
                    let offset: Option<i64> = r.get(2)?;
                    Ok(match (data, pack, offset) {
                        (Some(data), _, _) => Place::Inline(data),
                        (None, Some(pack), Some(offset)) => Place::Packed { pack: PackId(pack), offset: offset as u64 },
                        _ => Place::File,
                    })
                })
                .optional()?)
        })
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

    /// Whether `bytes` more may be written now, reclaiming what removals freed first if the
    /// disk is below the low-water mark (so it may block for a sweep).
    pub fn room_for(&self, bytes: u64) -> bool {
        if self.space.budget().allows(bytes) {
            return true;
        }
        self.reclaim_under_pressure();
        self.space.budget().allows(bytes)
    }

    /// Starts an upload of chunks; see [`ChunkUpload`]. Not checked against the free space
    /// (admin work such as a restore); clients' uploads go through [`Store::upload_sized`].
    pub fn upload(&self) -> ChunkUpload<'_> {
        self.new_upload(None)
    }

    /// Starts an upload of `declared` bytes if they leave the disk above the low-water mark
    /// (reclaiming what removals freed first, if need be); refused with `NoSpace` otherwise,
    /// before anything is written. Until written, the bytes count against the free space.
    pub fn upload_sized(&self, declared: u64) -> Result<ChunkUpload<'_>> {
        if let Some(admitted) = self.space.admit(declared) {
            return Ok(self.new_upload(Some(admitted)));
        }
        self.reclaim_under_pressure();
        match self.space.admit(declared) {
            Some(admitted) => Ok(self.new_upload(Some(admitted))),
            None => Err(space::no_space()),
        }
    }

    fn new_upload<'a>(&'a self, admitted: Option<Admission<'a>>) -> ChunkUpload<'a> {
        ChunkUpload {
            store: self,
            _gc: self.gc.read().unwrap_or_else(|p| p.into_inner()),
            admitted,
            pack: None,
            packed: Vec::new(),
            inline: Vec::new(),
            inline_bytes: 0,
            seen: std::collections::HashSet::new(),
        }
    }
}

/// An upload batch: large chunks are appended to a pack of the batch's own as they arrive,
/// small ones kept in memory; [`ChunkUpload::commit`] makes the pack durable, then records
/// them all (small ones with their bytes) in one transaction.
///
/// A chunk that fails to be added (bad hash, disk full) leaves the batch as it was: the chunks
/// before it can still be committed, and so can those of an upload cut short, so a client's
/// retry asks only for what is still missing.
pub struct ChunkUpload<'a> {
    store: &'a Store,
    _gc: std::sync::RwLockReadGuard<'a, ()>,
    /// The declared bytes still to be written, for an upload admitted against free space.
    admitted: Option<Admission<'a>>,
    pack: Option<PackWriter>,
    packed: Vec<(ChunkRef, u64)>,
    inline: Vec<SmallChunk>,
    inline_bytes: usize,
    /// What this batch already holds: a chunk sent twice is written once.
    seen: std::collections::HashSet<ChunkHash>,
}

/// Small chunks an upload keeps in memory until its commit; past this, they go to its pack
/// like large ones (a client may send thousands of small chunks in one request).
const INLINE_BUFFER: usize = 8 << 20;

impl ChunkUpload<'_> {
    /// Verifies and writes one chunk. The data must hash to `chunk.hash`.
    pub fn add(&mut self, chunk: ChunkRef, data: &[u8]) -> Result<()> {
        verify(chunk, data)?;
        let recorded = self.store.read(|c| {
            Ok(c.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?.exists(params![&chunk.hash.0[..]])?)
        })?;
        if recorded || self.seen.contains(&chunk.hash) {
            self.wrote(data.len());
            return Ok(());
        }
        if chunk.len <= INLINE_MAX && self.inline_bytes + data.len() <= INLINE_BUFFER {
            // Written with the commit's rows: still in flight until then.
            self.seen.insert(chunk.hash);
            self.inline_bytes += data.len();
            self.inline.push(SmallChunk { chunk, data: data.to_vec() });
            return Ok(());
        }
        let pack = match &mut self.pack {
            Some(p) => p,
            None => self.pack.insert(self.store.chunks.new_pack()?),
        };
        let offset = pack.append(data)?;
        self.seen.insert(chunk.hash);
        self.packed.push((chunk, offset));
        self.wrote(data.len());
        Ok(())
    }

    fn wrote(&mut self, bytes: usize) {
        if let Some(a) = &mut self.admitted {
            a.wrote(bytes as u64);
        }
    }

    /// How many chunks the batch holds so far (to be recorded by its commit).
    pub fn len(&self) -> usize {
        self.packed.len() + self.inline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the batch durable and records it. Returns how many chunks were new.
    pub fn commit(mut self) -> Result<u32> {
        let pack = match self.pack.take() {
            Some(p) => Some(p.finish()?),
            None => None,
        };
        if self.packed.is_empty() && self.inline.is_empty() {
            return Ok(0);
        }
        let packed: Vec<(ChunkRef, PackId, u64)> =
            pack.map(|id| self.packed.iter().map(|&(c, at)| (c, id, at)).collect()).unwrap_or_default();
        let mut conn = self.store.lock_writer();
        let tx = conn.transaction()?;
        record_chunks(&tx, &packed, &self.inline, Timestamp::now())?;
        tx.commit()?;
        Ok((self.packed.len() + self.inline.len()) as u32)
    }
}

/// Where a recorded chunk's bytes are.
enum Place {
    Inline(Vec<u8>),
    Packed {
        pack: PackId,
        offset: u64,
    },
    /// Its own file: recorded before packs existed.
    File,
}

/// A chunk of at most [`INLINE_MAX`] bytes whose data matches its hash, to be recorded with
/// its bytes (see [`Store::apply_with_chunks`]).
#[derive(Debug, Clone)]
pub struct SmallChunk {
    chunk: ChunkRef,
    data: Vec<u8>,
}

impl SmallChunk {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn chunk(&self) -> ChunkRef {
        self.chunk
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

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

/// Records durable chunks: those in packs (already synced) and small ones with their bytes.
/// A chunk recorded meanwhile by another upload keeps its first place.
pub(crate) fn record_chunks(
    c: &Connection,
    packed: &[(ChunkRef, PackId, u64)],
    inline: &[SmallChunk],
    now: Timestamp,
) -> Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT OR IGNORE INTO chunks (hash, len, added_at, data, pack, pack_offset) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (chunk, pack, at) in packed {
        stmt.execute(params![&chunk.hash.0[..], chunk.len, now.as_nanos(), None::<Vec<u8>>, pack.0, *at as i64])?;
    }
    for s in inline {
        stmt.execute(params![&s.chunk.hash.0[..], s.chunk.len, now.as_nanos(), &s.data, None::<i64>, None::<i64>])?;
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
