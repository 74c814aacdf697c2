//! The container-file cache: whole files on local disk, directory listings, and what venus knows
//! about each object and volume.
//!
//! The working state lives in memory (every `stat` is a hash lookup) and is written through to a
//! SQLite index, so after a restart venus knows what it has cached and reuses it after one
//! volume-stamp check per volume instead of refetching. Containers live in `CACHE/data/`; a fetch
//! writes a temporary file and renames it into place, so an open file keeps its old contents when
//! a newer version arrives (session semantics).
//!
//! Space: a byte limit over all containers, with LRU eviction of containers that are clean
//! (no local changes) and not open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::auth::{Access, PtsId, Rights};
use proto::{Attr, DirEntry, Fid, ObjectId, ObjectKind, VersionVector, VolumeId, VolumeStamp};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::recycle::Recycler;

/// What venus holds of one object.
#[derive(Debug, Clone)]
pub struct Cached {
    pub attr: Attr,
    /// The container holds the file's contents (for files).
    pub has_data: bool,
    /// Local changes not yet stored on the server.
    pub dirty: bool,
    pub data_size: u64,
    pub last_used: u64,
    /// The server version the container's contents derive from: what a store of them is based
    /// on. While the container is clean it is the version in `attr`; once it holds local
    /// changes (or is open for writing) it stays put when the server's version moves on, so
    /// the store is refused and becomes a conflict instead of silently overwriting the other
    /// change.
    pub base: VersionVector,
    /// Open file handles: an open container is never evicted.
    pub open: u32,
    /// Of those, handles open for writing: their container is the file being written, and it
    /// is kept even when the server's version changes (as if it were dirty).
    pub writers: u32,
    /// Hoard priority (0: not hoarded). Eviction takes lower priorities first, then the least
    /// recently used; set by hoard walks.
    pub priority: u16,
    /// Removed while open (POSIX keeps an unlinked file alive for its descriptors): `fstat`
    /// still answers, with no links; nothing is stored; gone at the last close. Never persisted.
    pub orphan: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolState {
    pub name: Option<String>,
    /// The stamp as of which every cached object of the volume is known current; `None` when
    /// unknown (a volume callback was broken since).
    pub stamp: Option<VolumeStamp>,
    /// The newest stamp venus has seen from the volume's servers. A server whose stamp is
    /// behind it was restored from an older dump.
    #[serde(default)]
    pub seen: Option<VolumeStamp>,
    /// Whose changes the volume's log holds: they are reintegrated with that user's token.
    #[serde(default)]
    pub log_owner: Option<LogOwner>,
}

/// A directory's entries as the cache holds them, shared with readers.
pub type Listing = Arc<Vec<DirEntry>>;

/// The local user whose changes a volume's log holds, and who they were to the cell then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOwner {
    pub uid: u32,
    pub user: PtsId,
}

struct State {
    db: Connection,
    objects: HashMap<GFid, Cached>,
    dirs: HashMap<GFid, Listing>,
    volumes: HashMap<(CellId, VolumeId), VolState>,
    /// Rights per (directory, user), with `PtsId::ANYUSER` for the anonymous user's, and whether
    /// they are fresh: a break of the directory's promise makes them stale (asked again while
    /// connected, still used offline, where they are the best there is).
    access: HashMap<(GFid, PtsId), (Rights, bool)>,
    used: u64,
    clock: u64,
    /// The cache's disk: a commit that finds it full releases its reserve and tries again.
    disk: Arc<crate::disk::CacheDisk>,
}

pub struct Cache {
    dir: PathBuf,
    limit: u64,
    /// The disk the cache lives on, and its reserve.
    disk: Arc<crate::disk::CacheDisk>,
    state: Mutex<State>,
    /// Containers no longer needed, kept empty for reuse.
    recycler: Recycler,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub limit: u64,
    pub objects: u64,
    pub files_cached: u64,
    /// Files with open handles (their containers are neither evicted nor reused).
    #[serde(default)]
    pub files_open: u64,
    /// Empty containers kept for reuse by the next new or fetched file.
    #[serde(default)]
    pub free_containers: u64,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cells (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS volumes (
    cell INTEGER NOT NULL, volume INTEGER NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (cell, volume)
);
CREATE TABLE IF NOT EXISTS objects (
    cell INTEGER NOT NULL, volume INTEGER NOT NULL, object BLOB NOT NULL,
    attr BLOB NOT NULL, has_data INTEGER NOT NULL, dirty INTEGER NOT NULL, data_size INTEGER NOT NULL,
    base BLOB,
    PRIMARY KEY (cell, volume, object)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (id INTEGER PRIMARY KEY AUTOINCREMENT, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS access (
    cell INTEGER NOT NULL, volume INTEGER NOT NULL, object BLOB NOT NULL, user INTEGER NOT NULL,
    rights INTEGER NOT NULL,
    PRIMARY KEY (cell, volume, object, user)
) WITHOUT ROWID;
-- Which listings are cached. `entries` is empty: caches written before entries had rows of
-- their own kept the whole listing here, and are moved to `dirents` when opened.
CREATE TABLE IF NOT EXISTS dirs (
    cell INTEGER NOT NULL, volume INTEGER NOT NULL, object BLOB NOT NULL, entries BLOB NOT NULL,
    PRIMARY KEY (cell, volume, object)
) WITHOUT ROWID;
-- One row per entry of a cached listing: a change in a large directory writes one row.
CREATE TABLE IF NOT EXISTS dirents (
    cell INTEGER NOT NULL, volume INTEGER NOT NULL, dir BLOB NOT NULL, name TEXT NOT NULL, entry BLOB NOT NULL,
    PRIMARY KEY (cell, volume, dir, name)
) WITHOUT ROWID;
"#;

fn key(g: &GFid) -> (i64, i64, [u8; 16]) {
    (i64::from(g.cell.0), g.fid.volume.0 as i64, g.fid.object.0.to_be_bytes())
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Opens the index in `dir` and loads what it knows.
fn open_index(dir: &Path, disk: &Arc<crate::disk::CacheDisk>) -> Result<State> {
    use std::os::unix::fs::PermissionsExt;
    let db = Connection::open(dir.join("cache.sqlite"))?;
    // This venus alone uses the database: locked for the connection's life, no file locks
    // or shared memory per transaction (as the log, see `cml::schema::open`).
    let _: String = db.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |r| r.get(0))?;
    match db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
            let msg = format!("the cache {} is in use by another venus", dir.display());
            return Err(std::io::Error::new(std::io::ErrorKind::ResourceBusy, msg).into());
        }
        other => other?,
    };
    db.execute_batch("PRAGMA synchronous=NORMAL;")?;
    // Written back as seldom as the log's (see `cml::WAL_CHECKPOINT_PAGES`).
    db.execute_batch(&format!("PRAGMA wal_autocheckpoint={};", cml::WAL_CHECKPOINT_PAGES))?;
    // Plans that do not depend on bound values (see `cml::schema::open`).
    db.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // A torn or overwritten page is found now, not in the middle of serving a file.
    let check: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(VenusError::Damaged(format!("cache index: {check}")));
    }
    db.execute_batch(SCHEMA)?;
    add_base_column(&db)?;
    std::fs::set_permissions(dir.join("cache.sqlite"), std::fs::Permissions::from_mode(0o600))?;
    let mut state = State {
        db,
        objects: HashMap::new(),
        dirs: HashMap::new(),
        volumes: HashMap::new(),
        access: HashMap::new(),
        used: 0,
        clock: 0,
        disk: disk.clone(),
    };
    load(&mut state, dir)?;
    Ok(state)
}

/// Moves a damaged database (and its WAL) aside under a dated name; returns that name.
pub fn set_aside(path: &Path) -> Result<PathBuf> {
    let stamp = crate::conflict::compact_utc(proto::Timestamp::now());
    let saved = path.with_extension(format!("sqlite.damaged-{stamp}"));
    std::fs::rename(path, &saved)?;
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", saved.display()))?;
        }
    }
    Ok(saved)
}

impl Cache {
    /// Opens the cache in `dir` (created if missing) with a limit of `limit` bytes of containers.
    pub fn open(dir: &Path, limit: u64) -> Result<Cache> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("free"))?;
        // Other local users reach the control socket in here, and nothing else: containers,
        // listings and rights are venus's alone (it serves them through the ACL checks).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        for private in ["data", "tmp", "free"] {
            std::fs::set_permissions(dir.join(private), std::fs::Permissions::from_mode(0o700))?;
        }
        for e in std::fs::read_dir(dir.join("tmp"))? {
            let _ = std::fs::remove_file(e?.path());
        }
        let disk = Arc::new(crate::disk::CacheDisk::open(dir)?);
        let state = match open_index(dir, &disk) {
            Err(e) if e.is_damage() => {
                // The index is a cache of what venus knows; the changes not yet on a server
                // are in the log, and the containers they need stay (see `adopt`). So a damaged
                // index is put aside (for whoever wants to look at it) and venus starts anew.
                let saved = set_aside(&dir.join("cache.sqlite"))?;
                tracing::error!(
                    error = %e,
                    saved = %saved.display(),
                    "the cache index is damaged; it was put aside and the cache starts empty \
                     (cached files are fetched again; changes not yet on a server are kept)"
                );
                open_index(dir, &disk)?
            }
            other => other?,
        };
        let recycler = Recycler::open(&dir.join("free"))?;
        let fitted = disk.fit(limit, state.used);
        if fitted < limit {
            tracing::warn!(
                requested = %proto::units::show(limit),
                using = %proto::units::show(fitted),
                "the cache size is more than its disk can hold; using what fits"
            );
        }
        Ok(Cache { dir: dir.to_path_buf(), limit: fitted, disk, state: Mutex::new(state), recycler })
    }

    /// Takes in a container the index does not know but the log needs (a store not yet on a
    /// server, after the index was lost): it is the file's local version, dirty, so nothing
    /// fetches over it or evicts it. Its attributes stand in until the server's are known.
    pub fn adopt(&self, g: GFid, based_on: VersionVector) -> Result<bool> {
        let Ok(meta) = std::fs::metadata(self.container(&g)) else { return Ok(false) };
        let mut s = self.lock();
        if s.objects.contains_key(&g) {
            return Ok(false);
        }
        let attr = Attr {
            fid: g.fid,
            kind: ObjectKind::File,
            mode: 0o644,
            owner: 0,
            group: 0,
            size: meta.len(),
            nlink: 1,
            mtime: meta.modified().map(proto::Timestamp::from_system).unwrap_or_default(),
            ctime: proto::Timestamp::now(),
            version: based_on.clone(),
            parent: None,
            link: None,
        };
        s.used += meta.len();
        s.objects.insert(
            g,
            Cached {
                attr,
                has_data: true,
                dirty: true,
                data_size: meta.len(),
                base: based_on,
                last_used: 0,
                open: 0,
                writers: 0,
                priority: 0,
                orphan: false,
            },
        );
        persist(&s, &g)?;
        Ok(true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The persistent id of a cell name (stable across restarts and cell-file order).
    pub fn cell_id(&self, name: &str) -> Result<CellId> {
        let s = self.lock();
        s.db.prepare_cached("INSERT OR IGNORE INTO cells (name) VALUES (?1)")?.execute(params![name])?;
        let id: i64 = s.db.query_row("SELECT id FROM cells WHERE name = ?1", params![name], |r| r.get(0))?;
        Ok(CellId(id as u16))
    }

    pub fn container(&self, g: &GFid) -> PathBuf {
        self.dir
            .join("data")
            .join(g.cell.0.to_string())
            .join(g.fid.volume.0.to_string())
            .join(format!("{}", g.fid.object))
    }

    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(format!("{:016x}", rand::random::<u64>()))
    }

    /// A new empty temporary file (a reused container when one is free), for a fetch to fill
    /// and [`Cache::install`] to move into place.
    pub fn make_temp(&self) -> Result<PathBuf> {
        let path = self.temp_path();
        self.recycler.make(&path)?;
        Ok(path)
    }

    /// Makes `g`'s container, empty (a new file's).
    pub fn make_container(&self, g: &GFid) -> Result<()> {
        let path = self.container(g);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.recycler.make(&path)?;
        Ok(())
    }

    pub fn get(&self, g: &GFid) -> Option<Cached> {
        self.lock().objects.get(g).cloned()
    }

    pub fn attr(&self, g: &GFid) -> Option<Attr> {
        self.lock().objects.get(g).map(|c| c.attr.clone())
    }

    /// An object's attributes, and whether it is an orphan (removed while open), in one look.
    pub fn attr_and_orphan(&self, g: &GFid) -> Option<(Attr, bool)> {
        self.lock().objects.get(g).map(|c| (c.attr.clone(), c.orphan))
    }

    /// Whether `g` was removed while open (see [`Cached::orphan`]).
    pub fn is_orphan(&self, g: &GFid) -> bool {
        self.lock().objects.get(g).is_some_and(|c| c.orphan)
    }

    /// Records an object's attributes as the server gave them. If the version changed, a clean
    /// container is stale and dropped; a dirty one is kept (local changes are never discarded).
    pub fn put_attr(&self, cell: CellId, attr: Attr) -> Result<()> {
        self.put_attr_with(cell, attr, false)
    }

    /// As `put_attr`; `ours` says the new version is our own change, made from the state this
    /// cache holds: the container is that version's contents (an attribute change or a rename
    /// leaves them as they were; a store sent them), and the caller applies the change's effect
    /// on a cached listing itself. So neither is dropped, unless the version shows that another
    /// change came in between (then it is as if `ours` were false).
    pub fn put_attr_with(&self, cell: CellId, attr: Attr, ours: bool) -> Result<()> {
        let g = GFid::new(cell, attr.fid);
        let mut s = self.lock();
        let retire = s.put_attr(g, attr, ours)?;
        if let Some(open) = retire {
            self.recycler.retire(&self.container(&g), open);
        }
        Ok(())
    }

    /// Records the attributes a change made here alone (emulated: logged, not yet sent) shows.
    /// Such a change has no version of its own (the server assigns versions when it arrives),
    /// so the object keeps the version the cache holds *now*, read under the same lock: the
    /// sender may have raised it since the change's attributes were read, and going back to
    /// that older version would look like another client's change and drop the listing the
    /// change is about to edit.
    pub fn put_emulated(&self, cell: CellId, attr: Attr) -> Result<()> {
        let mut batch = self.batch()?;
        batch.put_emulated(cell, attr)?;
        batch.finish()
    }

    /// Forgets an object entirely (it was removed).
    pub fn remove(&self, g: &GFid) -> Result<()> {
        let mut b = self.batch()?;
        b.remove(g)?;
        b.finish()
    }

    /// Starts a [`Batch`] of changes.
    pub fn batch(&self) -> Result<Batch<'_>> {
        let s = self.lock();
        s.db.prepare_cached("BEGIN")?.execute([])?;
        Ok(Batch { cache: self, s, retired: Vec::new(), pending: true })
    }

    /// What the server said `user` (and the anonymous user) may do in directory `dir`.
    pub fn put_access(&self, dir: GFid, user: PtsId, access: Access) -> Result<()> {
        self.put_rights(dir, PtsId::ANYUSER, access.anyuser)?;
        self.put_rights(dir, user, access.caller)
    }

    pub fn put_rights(&self, dir: GFid, user: PtsId, rights: Rights) -> Result<()> {
        let user = if user == PtsId::ANONYMOUS { PtsId::ANYUSER } else { user };
        let mut s = self.lock();
        if s.access.insert((dir, user), (rights, true)).map(|(r, _)| r) != Some(rights) {
            let (c, v, o) = key(&dir);
            s.db.prepare_cached(
                "INSERT OR REPLACE INTO access (cell, volume, object, user, rights) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![c, v, &o[..], user.0, rights.bits()])?;
        }
        Ok(())
    }

    /// `user`'s cached rights in `dir` (`PtsId::ANYUSER`: the anonymous user's), and whether
    /// they are fresh.
    pub fn rights(&self, dir: &GFid, user: PtsId) -> Option<(Rights, bool)> {
        let s = self.lock();
        let user = if user == PtsId::ANONYMOUS { PtsId::ANYUSER } else { user };
        s.access.get(&(*dir, user)).copied()
    }

    /// A new directory starts with its parent's ACL (on the server, too): the rights known for
    /// the parent hold for it.
    pub fn inherit_access(&self, parent: &GFid, child: GFid) -> Result<()> {
        let known: Vec<(PtsId, (Rights, bool))> = {
            let s = self.lock();
            s.access.iter().filter(|((g, _), _)| g == parent).map(|((_, u), r)| (*u, *r)).collect()
        };
        for (user, (rights, _)) in known {
            self.put_rights(child, user, rights)?;
        }
        Ok(())
    }

    /// Marks rights stale: in one directory, one volume, or (with neither) a whole cell.
    pub fn stale_access(&self, cell: CellId, volume: Option<VolumeId>, dir: Option<&GFid>) {
        let mut s = self.lock();
        for ((g, _), (_, fresh)) in s.access.iter_mut() {
            if g.cell == cell && volume.is_none_or(|v| v == g.fid.volume) && dir.is_none_or(|d| d == g) {
                *fresh = false;
            }
        }
    }

    /// The cached listing of `g`, shared: a lookup in a large directory copies nothing.
    pub fn listing(&self, g: &GFid) -> Option<Listing> {
        self.lock().dirs.get(g).cloned()
    }

    pub fn has_listing(&self, g: &GFid) -> bool {
        self.lock().dirs.contains_key(g)
    }

    pub fn put_listing(&self, g: GFid, entries: Vec<DirEntry>) -> Result<Listing> {
        let mut s = self.lock();
        with_room(&s.disk, || {
            let tx = s.db.unchecked_transaction()?;
            forget_listing(&tx, &g)?;
            let (c, v, o) = key(&g);
            tx.prepare_cached("INSERT INTO dirs (cell, volume, object, entries) VALUES (?1, ?2, ?3, x'')")?
                .execute(params![c, v, &o[..]])?;
            for e in &entries {
                put_entry(&tx, &g, e)?;
            }
            tx.commit()
        })?;
        let listing = Arc::new(entries);
        s.dirs.insert(g, listing.clone());
        Ok(listing)
    }

    pub fn drop_listing(&self, g: &GFid) -> Result<Option<Listing>> {
        let mut s = self.lock();
        forget_listing(&s.db, g)?;
        Ok(s.dirs.remove(g))
    }

    /// Adds `entry` to the cached listing of `g` (replacing any of the same name) after our own
    /// change was applied. Nothing happens if the listing is not cached.
    pub fn add_entry(&self, g: &GFid, entry: DirEntry) -> Result<()> {
        self.lock().add_entry(g, entry)
    }

    /// Removes `name` from the cached listing of `g` after our own change was applied.
    pub fn remove_entry(&self, g: &GFid, name: &proto::Name) -> Result<()> {
        self.lock().remove_entry(g, name)
    }

    /// Makes room for a file of hoard priority `priority`: only files of no higher priority are
    /// evicted (lowest priority first, then least recently used), so reading unrelated files
    /// never pushes hoarded ones out.
    pub fn reserve_at(&self, size: u64, priority: u16) -> Result<u64> {
        if size > self.limit {
            return Err(VenusError::TooLargeForCache { size, limit: self.limit });
        }
        let mut s = self.lock();
        let mut evicted = 0;
        if s.used + size <= self.limit {
            return Ok(0);
        }
        let limit = self.limit;
        evicted += self.evict(&mut s, priority, true, |s| s.used + size <= limit)?;
        if s.used + size > self.limit {
            return Err(VenusError::TooLargeForCache { size: s.used + size, limit: self.limit });
        }
        Ok(evicted)
    }

    /// Evicts clean, closed containers of no higher priority than `priority` (lowest priority
    /// first, then least recently used) until `enough` holds; returns how many. `reuse` keeps
    /// their files, emptied, for the next new file (which is cheaper than a new inode); without
    /// it they are deleted.
    fn evict(&self, s: &mut State, priority: u16, reuse: bool, enough: impl Fn(&State) -> bool) -> Result<u64> {
        let mut victims: Vec<(u16, u64, GFid, u64)> = s
            .objects
            .iter()
            .filter(|(_, c)| c.has_data && !c.dirty && c.open == 0 && c.priority <= priority)
            .map(|(g, c)| (c.priority, c.last_used, *g, c.data_size))
            .collect();
        victims.sort_unstable_by_key(|(p, t, _, _)| (*p, *t));
        let mut evicted = 0;
        for (_, _, g, sz) in victims {
            if enough(s) {
                break;
            }
            if let Some(c) = s.objects.get_mut(&g) {
                c.has_data = false;
                c.data_size = 0;
            }
            s.used = s.used.saturating_sub(sz);
            // Only closed containers are evicted (so none is in use).
            self.recycler.retire(&self.container(&g), !reuse);
            // The index may be what cannot commit: the eviction stands in memory regardless.
            let _ = persist(s, &g);
            evicted += 1;
        }
        Ok(evicted)
    }

    /// The disk is full: releases the reserve and evicts clean containers (of any hoard
    /// priority: a full disk matters more) until the reserve's worth is free. Says whether
    /// anything was freed, so a failed commit is worth trying again.
    pub fn make_room(&self) -> bool {
        let released = self.disk.release();
        let want = self.disk.reserve_size();
        let mut s = self.lock();
        let evicted = self.evict(&mut s, u16::MAX, false, |_| self.disk.free() >= want).unwrap_or(0);
        if evicted > 0 {
            tracing::warn!(evicted, "the cache disk is full: evicted clean files");
        }
        released || evicted > 0
    }

    /// Keeps room on the disk (run periodically): clean files go when it gets tight (some other
    /// program may be filling it), and the reserve comes back once there is room.
    pub fn keep_room(&self) {
        let want = 2 * self.disk.reserve_size();
        if self.disk.free() < want {
            let mut s = self.lock();
            let _ = self.evict(&mut s, u16::MAX, false, |_| self.disk.free() >= want);
        }
        self.disk.restore();
    }

    /// Moves a freshly fetched file into place as the container of `g`.
    pub fn install(&self, g: &GFid, tmp: &Path, size: u64) -> Result<()> {
        let path = self.container(g);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(tmp, &path)?;
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        let mut delta = 0i64;
        if let Some(c) = s.objects.get_mut(g) {
            delta = size as i64 - if c.has_data { c.data_size as i64 } else { 0 };
            c.has_data = true;
            c.dirty = false;
            c.data_size = size;
            c.base = c.attr.version.clone();
            c.last_used = clock;
        }
        s.used = (s.used as i64 + delta).max(0) as u64;
        persist(&s, g)
    }

    /// Notes the container's new size after local writes (`dirty`), or that its contents are
    /// now the server's version in `attr` (not `dirty`: stored, or reintegrated).
    pub fn set_local(&self, g: &GFid, size: u64, dirty: bool) -> Result<()> {
        self.lock().set_local(g, size, dirty)
    }

    pub fn touch(&self, g: &GFid) {
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        if let Some(c) = s.objects.get_mut(g) {
            c.last_used = clock;
        }
    }

    /// Records the hoard priority of an object (0: not hoarded).
    pub fn set_priority(&self, g: &GFid, priority: u16) {
        if let Some(c) = self.lock().objects.get_mut(g) {
            c.priority = priority;
        }
    }

    /// Forgets every hoard priority (before a walk sets the current ones).
    pub fn clear_priorities(&self) {
        for c in self.lock().objects.values_mut() {
            c.priority = 0;
        }
    }

    /// Counts an open handle (`writable`: open for writing).
    pub fn opened(&self, g: &GFid, writable: bool) {
        if let Some(c) = self.lock().objects.get_mut(g) {
            c.open += 1;
            c.writers += u32::from(writable);
        }
    }

    /// Counts a handle closed. The last writer's close lets go of a container that was kept
    /// only because it was being written: if nothing was stored and the server's version moved
    /// on meanwhile, its contents are stale.
    pub fn closed(&self, g: &GFid, writable: bool) -> Result<()> {
        let mut s = self.lock();
        let Some(c) = s.objects.get_mut(g) else { return Ok(()) };
        c.open = c.open.saturating_sub(1);
        c.writers = c.writers.saturating_sub(u32::from(writable));
        if c.orphan {
            if c.open == 0
                && let Some(c) = s.objects.remove(g)
            {
                s.used = s.used.saturating_sub(c.data_size);
                self.recycler.retire(&self.container(g), false);
            }
            return Ok(());
        }
        let stale = c.writers == 0 && !c.dirty && c.has_data && !c.base.same_as(&c.attr.version);
        if !stale {
            return Ok(());
        }
        let open = c.open > 0;
        c.has_data = false;
        c.base = c.attr.version.clone();
        let size = std::mem::take(&mut c.data_size);
        s.used = s.used.saturating_sub(size);
        self.recycler.retire(&self.container(g), open);
        persist(&s, g)
    }

    /// Drops a container whatever it holds: its local contents were kept elsewhere (a conflict
    /// copy), and the file shows the server's version again.
    pub fn discard(&self, g: &GFid) -> Result<()> {
        let mut s = self.lock();
        let Some(c) = s.objects.get_mut(g) else { return Ok(()) };
        let open = c.open > 0;
        let had = std::mem::take(&mut c.has_data);
        c.dirty = false;
        c.base = c.attr.version.clone();
        let size = std::mem::take(&mut c.data_size);
        s.used = s.used.saturating_sub(size);
        if had {
            self.recycler.retire(&self.container(g), open);
        }
        persist(&s, g)
    }

    /// The server version the container of `g` derives from (see [`Cached::base`]).
    pub fn base(&self, g: &GFid) -> Option<VersionVector> {
        self.lock().objects.get(g).map(|c| c.base.clone())
    }

    /// Files whose containers hold changes not yet on a server.
    pub fn dirty_objects(&self) -> Vec<GFid> {
        self.lock().objects.iter().filter(|(_, c)| c.dirty).map(|(g, _)| *g).collect()
    }

    /// Drops a clean container (`venus flush`); dirty data is kept. A handle still open keeps
    /// its own descriptor on the old container (the kernel releases files asynchronously after
    /// `close`), so only the next open fetches again.
    pub fn flush(&self, g: &GFid) -> Result<bool> {
        let mut s = self.lock();
        let Some(c) = s.objects.get_mut(g) else { return Ok(false) };
        // Local changes are kept, and so is a file being written (its writer's container).
        if c.dirty || c.writers > 0 {
            return Ok(false);
        }
        let size = std::mem::take(&mut c.data_size);
        let had = std::mem::take(&mut c.has_data);
        let open = c.open > 0; // flush keeps dirty containers: this one is clean
        s.used = s.used.saturating_sub(size);
        s.dirs.remove(g);
        self.recycler.retire(&self.container(g), open);
        persist(&s, g)?;
        Ok(had)
    }

    pub fn volume(&self, cell: CellId, volume: VolumeId) -> VolState {
        self.lock().volumes.get(&(cell, volume)).cloned().unwrap_or_default()
    }

    pub fn set_volume(&self, cell: CellId, volume: VolumeId, state: VolState) -> Result<()> {
        self.lock().set_volume(cell, volume, state)
    }

    /// A volume's id by the name it was last looked up by.
    pub fn volume_named(&self, cell: CellId, name: &str) -> Option<VolumeId> {
        self.lock()
            .volumes
            .iter()
            .find(|((c, _), st)| *c == cell && st.name.as_deref() == Some(name))
            .map(|((_, v), _)| *v)
    }

    /// Every volume venus has cached objects of, with its known stamp.
    pub fn cached_volumes(&self) -> Vec<(CellId, VolumeId, VolState)> {
        let s = self.lock();
        let mut vols: Vec<(CellId, VolumeId)> = s.objects.keys().map(|g| (g.cell, g.fid.volume)).collect();
        vols.sort_unstable();
        vols.dedup();
        vols.into_iter().map(|(c, v)| (c, v, s.volumes.get(&(c, v)).cloned().unwrap_or_default())).collect()
    }

    /// Records a conflict (its id is assigned here).
    pub fn add_conflict(&self, mut info: crate::conflict::ConflictInfo) -> Result<u64> {
        let s = self.lock();
        s.db.prepare_cached("INSERT INTO conflicts (info) VALUES ('{}')")?.execute([])?;
        let id = s.db.last_insert_rowid() as u64;
        info.id = id;
        let text = serde_json::to_string(&info).map_err(|e| VenusError::Io(std::io::Error::other(e)))?;
        s.db.prepare_cached("UPDATE conflicts SET info = ?2 WHERE id = ?1")?.execute(params![id as i64, text])?;
        Ok(id)
    }

    pub fn conflicts(&self) -> Result<Vec<crate::conflict::ConflictInfo>> {
        let s = self.lock();
        let mut stmt = s.db.prepare("SELECT info FROM conflicts ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
    }

    pub fn remove_conflict(&self, id: u64) -> Result<()> {
        self.lock().db.prepare_cached("DELETE FROM conflicts WHERE id = ?1")?.execute(params![id as i64])?;
        Ok(())
    }

    /// Every object venus knows of in one volume.
    pub fn objects_in(&self, cell: CellId, volume: VolumeId) -> Vec<GFid> {
        self.lock()
            .objects
            .iter()
            .filter(|(g, c)| g.cell == cell && g.fid.volume == volume && !c.orphan)
            .map(|(g, _)| *g)
            .collect()
    }

    pub fn usage(&self) -> Usage {
        let s = self.lock();
        Usage {
            used: s.used,
            limit: self.limit,
            objects: s.objects.len() as u64,
            files_cached: s.objects.values().filter(|c| c.has_data).count() as u64,
            files_open: s.objects.values().filter(|c| c.open > 0).count() as u64,
            free_containers: self.recycler.len() as u64,
        }
    }
}

/// Several changes to the cache made as one: one lock and one database transaction, so they reach
/// the disk together (a crash keeps all of them or none) and cost one commit. Committed by
/// [`Batch::finish`]; a batch dropped on an error commits what it did (the memory already
/// shows it), as separate calls would have.
pub struct Batch<'a> {
    cache: &'a Cache,
    s: MutexGuard<'a, State>,
    /// Containers to empty for reuse once the transaction is committed, and whether in use.
    retired: Vec<(GFid, bool)>,
    /// Begun and not yet committed.
    pending: bool,
}

impl Batch<'_> {
    /// As [`Cache::put_attr_with`].
    pub fn put_attr_with(&mut self, cell: CellId, attr: Attr, ours: bool) -> Result<()> {
        let g = GFid::new(cell, attr.fid);
        if let Some(open) = self.s.put_attr(g, attr, ours)? {
            self.retired.push((g, open));
        }
        Ok(())
    }

    /// As [`Cache::get`].
    pub fn get(&self, g: &GFid) -> Option<&Cached> {
        self.s.objects.get(g)
    }

    /// As [`Cache::set_local`].
    pub fn set_local(&mut self, g: &GFid, size: u64, dirty: bool) -> Result<()> {
        self.s.set_local(g, size, dirty)
    }

    /// As [`Cache::put_emulated`].
    pub fn put_emulated(&mut self, cell: CellId, mut attr: Attr) -> Result<()> {
        let g = GFid::new(cell, attr.fid);
        if let Some(c) = self.s.objects.get(&g) {
            attr.version = c.attr.version.clone();
        }
        if let Some(open) = self.s.put_attr(g, attr, true)? {
            self.retired.push((g, open));
        }
        Ok(())
    }

    /// As [`Cache::remove`].
    pub fn remove(&mut self, g: &GFid) -> Result<()> {
        if let Some(open) = self.s.remove(g)? {
            self.retired.push((*g, open));
        }
        Ok(())
    }

    /// As [`Cache::add_entry`].
    pub fn add_entry(&mut self, g: &GFid, entry: DirEntry) -> Result<()> {
        self.s.add_entry(g, entry)
    }

    /// As [`Cache::remove_entry`].
    pub fn remove_entry(&mut self, g: &GFid, name: &proto::Name) -> Result<()> {
        self.s.remove_entry(g, name)
    }

    /// As [`Cache::set_volume`].
    pub fn set_volume(&mut self, cell: CellId, volume: VolumeId, state: VolState) -> Result<()> {
        self.s.set_volume(cell, volume, state)
    }

    /// Commits the batch.
    pub fn finish(mut self) -> Result<()> {
        self.commit()
    }

    fn commit(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.pending) {
            return Ok(());
        }
        let s = &self.s;
        let committed = with_room(&s.disk, || s.db.prepare_cached("COMMIT").and_then(|mut c| c.execute([])));
        if committed.is_err() && !s.db.is_autocommit() {
            // Never leave the transaction open: every later batch would fail to begin.
            let _ = s.db.execute_batch("ROLLBACK");
        }
        for (g, open) in std::mem::take(&mut self.retired) {
            self.cache.recycler.retire(&self.cache.container(&g), open);
        }
        committed?;
        Ok(())
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "cannot record cache changes");
        }
    }
}

impl State {
    /// See [`Cache::set_local`].
    fn set_local(&mut self, g: &GFid, size: u64, dirty: bool) -> Result<()> {
        let mut delta = 0i64;
        if let Some(c) = self.objects.get_mut(g) {
            delta = size as i64 - c.data_size as i64;
            c.data_size = size;
            c.has_data = true;
            c.dirty = dirty;
            if !dirty {
                c.base = c.attr.version.clone();
            }
        }
        self.used = (self.used as i64 + delta).max(0) as u64;
        persist(self, g)
    }

    /// Records an object's attributes (see [`Cache::put_attr_with`]); says whether its container
    /// is to be emptied, and if so whether it is in use.
    fn put_attr(&mut self, g: GFid, attr: Attr, ours: bool) -> Result<Option<bool>> {
        self.clock += 1;
        let clock = self.clock;
        let mut retire = None;
        let entry = self.objects.entry(g).or_insert_with(|| Cached {
            attr: attr.clone(),
            has_data: false,
            dirty: false,
            data_size: 0,
            base: attr.version.clone(),
            last_used: clock,
            open: 0,
            writers: 0,
            priority: 0,
            orphan: false,
        });
        let changed = !entry.attr.version.same_as(&attr.version);
        // Our change, but another client's came in between (its break may still be on the
        // way): what we hold is not that version's, so it is treated as theirs.
        let ours = ours && attr.version.directly_follows(&entry.attr.version);
        let held = entry.dirty || entry.writers > 0;
        if entry.has_data && !held && changed && !ours {
            retire = Some(entry.open > 0);
        }
        // The container's base follows the server's version while it holds nothing of its own,
        // and our own changes (they were made from it); another client's change leaves a held
        // container's base where it was.
        if !held || (ours && entry.base.same_as(&entry.attr.version)) {
            entry.base = attr.version.clone();
        }
        entry.attr = attr;
        entry.last_used = clock;
        if retire.is_some() {
            entry.has_data = false;
            let size = std::mem::take(&mut entry.data_size);
            self.used = self.used.saturating_sub(size);
        }
        // A listing belongs to the version it was fetched at (or that our own change made).
        if changed && !ours && self.dirs.remove(&g).is_some() {
            forget_listing(&self.db, &g)?;
        }
        persist(self, &g)?;
        Ok(retire)
    }

    /// Forgets a removed object; says whether its container is to be emptied, and if so
    /// whether it is in use (holding changes not yet stored). A file still open stays, as an
    /// orphan, until its last close.
    fn remove(&mut self, g: &GFid) -> Result<Option<bool>> {
        let mut retire = Some(false);
        if let Some(c) = self.objects.get_mut(g)
            && c.open > 0
            && c.attr.kind == ObjectKind::File
        {
            c.orphan = true;
            c.dirty = false;
            c.attr.nlink = 0;
            retire = None;
        } else if let Some(c) = self.objects.remove(g) {
            self.used = self.used.saturating_sub(c.data_size);
            retire = Some(c.dirty);
        }
        self.dirs.remove(g);
        delete_of(&self.db, "DELETE FROM objects WHERE cell = ?1 AND volume = ?2 AND object = ?3", g)?;
        forget_listing(&self.db, g)?;
        Ok(retire)
    }

    fn add_entry(&mut self, g: &GFid, entry: DirEntry) -> Result<()> {
        if !self.dirs.contains_key(g) {
            return Ok(());
        }
        put_entry(&self.db, g, &entry)?;
        if let Some(entries) = self.dirs.get_mut(g) {
            // Copied only if someone still holds the old version.
            let entries = Arc::make_mut(entries);
            entries.retain(|x| x.name != entry.name);
            entries.push(entry);
        }
        Ok(())
    }

    fn remove_entry(&mut self, g: &GFid, name: &proto::Name) -> Result<()> {
        let Some(entries) = self.dirs.get_mut(g) else { return Ok(()) };
        Arc::make_mut(entries).retain(|x| &x.name != name);
        let (c, v, o) = key(g);
        self.db
            .prepare_cached("DELETE FROM dirents WHERE cell = ?1 AND volume = ?2 AND dir = ?3 AND name = ?4")?
            .execute(params![c, v, &o[..], name.as_str()])?;
        Ok(())
    }

    fn set_volume(&mut self, cell: CellId, volume: VolumeId, state: VolState) -> Result<()> {
        with_room(&self.disk, || {
            self.db
                .prepare_cached("INSERT OR REPLACE INTO volumes (cell, volume, state) VALUES (?1, ?2, ?3)")?
                .execute(params![i64::from(cell.0), volume.0 as i64, enc(&state)])
        })?;
        self.volumes.insert((cell, volume), state);
        Ok(())
    }
}

fn persist(s: &State, g: &GFid) -> Result<()> {
    let Some(c) = s.objects.get(g).filter(|c| !c.orphan) else { return Ok(()) };
    let (cell, v, o) = key(g);
    // The base is stored only where it differs from the version (a held container).
    let base = (!c.base.same_as(&c.attr.version)).then(|| enc(&c.base));
    with_room(&s.disk, || {
        s.db.prepare_cached(
            "INSERT OR REPLACE INTO objects (cell, volume, object, attr, has_data, dirty, data_size, base)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![cell, v, &o[..], enc(&c.attr), c.has_data, c.dirty, c.data_size as i64, base])
    })?;
    Ok(())
}

/// Runs a database write; if the disk is full, releases the disk's reserve and runs it once
/// more (see `crate::disk`).
fn with_room<T>(disk: &crate::disk::CacheDisk, mut write: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    match write() {
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull && disk.release() => {
            write()
        }
        other => other,
    }
}

/// The object a row names in its first three columns (cell, volume, object id), if well-formed.
fn gfid_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<GFid>> {
    let cell = CellId(r.get::<_, i64>(0)? as u16);
    let volume = VolumeId(r.get::<_, i64>(1)? as u64);
    let object: Vec<u8> = r.get(2)?;
    Ok(<[u8; 16]>::try_from(object.as_slice())
        .ok()
        .map(|o| GFid::new(cell, Fid::new(volume, ObjectId(u128::from_be_bytes(o))))))
}

fn load(s: &mut State, dir: &Path) -> Result<()> {
    {
        let mut stmt =
            s.db.prepare("SELECT cell, volume, object, attr, has_data, dirty, data_size, base FROM objects")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let Some(g) = gfid_of(r)? else { continue };
            let Ok(attr) = postcard::from_bytes::<Attr>(&r.get::<_, Vec<u8>>(3)?) else { continue };
            let (cell, volume) = (g.cell, g.fid.volume);
            let mut has_data: bool = r.get(4)?;
            let data_size = r.get::<_, i64>(6)? as u64;
            // Trust a container only if it is there with the recorded size.
            let path =
                dir.join("data").join(cell.0.to_string()).join(volume.0.to_string()).join(format!("{}", g.fid.object));
            if has_data && std::fs::metadata(&path).map(|m| m.len()).ok() != Some(data_size) {
                has_data = false;
            }
            if has_data {
                s.used += data_size;
            }
            let base = r
                .get::<_, Option<Vec<u8>>>(7)?
                .and_then(|b| postcard::from_bytes::<VersionVector>(&b).ok())
                .unwrap_or_else(|| attr.version.clone());
            s.objects.insert(
                g,
                Cached {
                    attr,
                    has_data,
                    dirty: r.get::<_, bool>(5)? && has_data,
                    data_size: if has_data { data_size } else { 0 },
                    base,
                    last_used: 0,
                    open: 0,
                    writers: 0,
                    priority: 0,
                    orphan: false,
                },
            );
        }
    }
    migrate_listings(&s.db)?;
    {
        let mut stmt = s.db.prepare("SELECT cell, volume, object FROM dirs")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let Some(g) = gfid_of(r)? else { continue };
            s.dirs.insert(g, Arc::new(Vec::new()));
        }
    }
    {
        let mut stmt = s.db.prepare("SELECT cell, volume, dir, entry FROM dirents")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let Some(g) = gfid_of(r)? else { continue };
            let Ok(entry) = postcard::from_bytes::<DirEntry>(&r.get::<_, Vec<u8>>(3)?) else { continue };
            // Rows of a listing no longer cached are leftovers: skipped.
            if let Some(entries) = s.dirs.get_mut(&g) {
                Arc::make_mut(entries).push(entry);
            }
        }
    }
    {
        let mut stmt = s.db.prepare("SELECT cell, volume, object, user, rights FROM access")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let Some(g) = gfid_of(r)? else { continue };
            // Fresh as of the volume stamp the cache holds; a changed stamp makes them stale.
            s.access.insert((g, PtsId(r.get(3)?)), (Rights::from_bits(r.get(4)?), true));
        }
    }
    {
        let mut stmt = s.db.prepare("SELECT cell, volume, state FROM volumes")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let cell = CellId(r.get::<_, i64>(0)? as u16);
            let volume = VolumeId(r.get::<_, i64>(1)? as u64);
            if let Ok(state) = postcard::from_bytes::<VolState>(&r.get::<_, Vec<u8>>(2)?) {
                s.volumes.insert((cell, volume), state);
            }
        }
    }
    Ok(())
}

/// Caches written before containers remembered their base have no `base` column: added (a
/// missing base means "the version", which is what those caches assumed).
fn add_base_column(db: &Connection) -> Result<()> {
    let has: bool = db.prepare("SELECT 1 FROM pragma_table_info('objects') WHERE name = 'base'")?.exists([])?;
    if !has {
        db.execute_batch("ALTER TABLE objects ADD COLUMN base BLOB")?;
    }
    Ok(())
}

/// Whether an object kind is shown to the kernel as a directory (mount points are crossed).
pub fn shows_as_dir(kind: ObjectKind) -> bool {
    matches!(kind, ObjectKind::Directory | ObjectKind::MountPoint)
}

/// Deletes the stored listing of `g`.
fn forget_listing(db: &rusqlite::Connection, g: &GFid) -> rusqlite::Result<()> {
    delete_of(db, "DELETE FROM dirs WHERE cell = ?1 AND volume = ?2 AND object = ?3", g)?;
    delete_of(db, "DELETE FROM dirents WHERE cell = ?1 AND volume = ?2 AND dir = ?3", g)
}

/// Runs `sql`, a DELETE whose `?1`, `?2` and `?3` stand for the cell, volume and object of `g`.
fn delete_of(db: &rusqlite::Connection, sql: &str, g: &GFid) -> rusqlite::Result<()> {
    let (c, v, o) = key(g);
    db.prepare_cached(sql)?.execute(params![c, v, &o[..]])?;
    Ok(())
}

/// Stores one entry of the cached listing of `g`.
fn put_entry(db: &rusqlite::Connection, g: &GFid, e: &DirEntry) -> rusqlite::Result<()> {
    let (c, v, o) = key(g);
    db.prepare_cached("INSERT OR REPLACE INTO dirents (cell, volume, dir, name, entry) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![c, v, &o[..], e.name.as_str(), enc(e)])?;
    Ok(())
}

/// Moves listings kept whole in `dirs` (caches written by an older venus) to rows of their own.
/// One that cannot be read is forgotten (fetched again), never kept as an empty directory.
fn migrate_listings(db: &rusqlite::Connection) -> Result<()> {
    let whole: Vec<(GFid, Option<Vec<DirEntry>>)> = {
        let mut stmt = db.prepare("SELECT cell, volume, object, entries FROM dirs WHERE length(entries) > 1")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let Some(g) = gfid_of(r)? else { continue };
            out.push((g, postcard::from_bytes::<Vec<DirEntry>>(&r.get::<_, Vec<u8>>(3)?).ok()));
        }
        out
    };
    if whole.is_empty() {
        return Ok(());
    }
    let tx = db.unchecked_transaction()?;
    for (g, entries) in &whole {
        let Some(entries) = entries else {
            forget_listing(&tx, g)?;
            continue;
        };
        for e in entries {
            put_entry(&tx, g, e)?;
        }
        let (c, v, o) = key(g);
        tx.execute(
            "UPDATE dirs SET entries = x'' WHERE cell = ?1 AND volume = ?2 AND object = ?3",
            params![c, v, &o[..]],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, object: u128) -> DirEntry {
        DirEntry { name: proto::Name::new(name).unwrap(), object: ObjectId(object), kind: ObjectKind::File }
    }

    fn names(l: &Listing) -> Vec<String> {
        let mut v: Vec<String> = l.iter().map(|e| e.name.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn listing_edits_survive_a_restart_one_row_each() {
        let dir = tempfile::tempdir().unwrap();
        let g = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(1)));
        {
            let cache = Cache::open(dir.path(), 1 << 20).unwrap();
            cache.put_listing(g, vec![entry("a", 2), entry("b", 3)]).unwrap();
            cache.add_entry(&g, entry("c", 4)).unwrap();
            cache.add_entry(&g, entry("a", 5)).unwrap(); // replaces a
            cache.remove_entry(&g, &proto::Name::new("b").unwrap()).unwrap();
            assert_eq!(names(&cache.listing(&g).unwrap()), ["a", "c"]);
        }
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let l = cache.listing(&g).unwrap();
        assert_eq!(names(&l), ["a", "c"]);
        assert_eq!(l.iter().find(|e| e.name.as_str() == "a").unwrap().object, ObjectId(5));
        // An empty listing is still a cached listing; a dropped one is gone with its rows.
        let empty = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(9)));
        cache.put_listing(empty, Vec::new()).unwrap();
        cache.drop_listing(&g).unwrap();
        drop(cache);
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.listing(&empty).unwrap().is_empty());
        assert!(cache.listing(&g).is_none());
        let rows: i64 = cache.lock().db.query_row("SELECT COUNT(*) FROM dirents", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn a_batch_records_its_changes_together_and_a_second_venus_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parent = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(1)));
        let gone = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(2)));
        let attr = |g: GFid, size: u64| Attr {
            fid: g.fid,
            kind: ObjectKind::File,
            mode: 0o644,
            owner: 0,
            group: 0,
            size,
            nlink: 1,
            mtime: proto::Timestamp::now(),
            ctime: proto::Timestamp::now(),
            version: proto::VersionVector::new(),
            parent: Some(parent.fid.object),
            link: None,
        };
        {
            let cache = Cache::open(dir.path(), 1 << 20).unwrap();
            cache.put_listing(parent, vec![entry("gone", 2), entry("kept", 3)]).unwrap();
            cache.put_attr(CellId(1), attr(gone, 5)).unwrap();
            let err = Cache::open(dir.path(), 1 << 20).err().expect("the cache is this venus's alone");
            assert!(err.to_string().contains("in use by another venus"), "{err}");
            let mut b = cache.batch().unwrap();
            let state = VolState { name: Some("v".into()), ..VolState::default() };
            b.set_volume(CellId(1), VolumeId(7), state).unwrap();
            b.put_attr_with(CellId(1), attr(parent, 99), true).unwrap();
            b.remove(&gone).unwrap();
            b.remove_entry(&parent, &proto::Name::new("gone").unwrap()).unwrap();
            b.finish().unwrap();
        }
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.volume(CellId(1), VolumeId(7)).name.as_deref(), Some("v"));
        assert_eq!(cache.attr(&parent).map(|a| a.size), Some(99));
        assert!(cache.attr(&gone).is_none());
        assert_eq!(names(&cache.listing(&parent).unwrap()), ["kept"]);
    }

    #[test]
    fn an_own_change_keeps_the_listing_only_when_nobody_elses_came_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let g = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(1)));
        let at = |n: u64| {
            let mut version = proto::VersionVector::new();
            (0..n).for_each(|_| version.bump(proto::ServerId(1)));
            Attr {
                fid: g.fid,
                kind: ObjectKind::Directory,
                mode: 0o755,
                owner: 0,
                group: 0,
                size: 1,
                nlink: 2,
                mtime: proto::Timestamp::now(),
                ctime: proto::Timestamp::now(),
                version,
                parent: None,
                link: None,
            }
        };
        cache.put_attr(CellId(1), at(1)).unwrap();
        cache.put_listing(g, vec![entry("a", 2)]).unwrap();
        // Our create made version 2 out of 1: the caller edits the listing itself.
        cache.put_attr_with(CellId(1), at(2), true).unwrap();
        assert!(cache.listing(&g).is_some(), "our own change keeps the listing");
        // Version 4 out of 2: another client's change came in between ours.
        cache.put_attr_with(CellId(1), at(4), true).unwrap();
        assert!(cache.listing(&g).is_none(), "a listing that misses another client's entry is dropped");
    }

    #[test]
    fn a_listing_kept_whole_by_an_older_venus_is_moved_to_rows() {
        let dir = tempfile::tempdir().unwrap();
        let g = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(1)));
        let torn = GFid::new(CellId(1), Fid::new(VolumeId(7), ObjectId(2)));
        drop(Cache::open(dir.path(), 1 << 20).unwrap());
        {
            let db = Connection::open(dir.path().join("cache.sqlite")).unwrap();
            let (c, v, o) = key(&g);
            db.execute(
                "INSERT INTO dirs (cell, volume, object, entries) VALUES (?1, ?2, ?3, ?4)",
                params![c, v, &o[..], enc(&vec![entry("x", 2), entry("y", 3)])],
            )
            .unwrap();
            let (c, v, o) = key(&torn);
            db.execute(
                "INSERT INTO dirs (cell, volume, object, entries) VALUES (?1, ?2, ?3, x'05ff')",
                params![c, v, &o[..]],
            )
            .unwrap();
        }
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(names(&cache.listing(&g).unwrap()), ["x", "y"]);
        assert!(cache.listing(&torn).is_none(), "an unreadable listing is fetched again, not kept empty");
        cache.remove_entry(&g, &proto::Name::new("x").unwrap()).unwrap();
        drop(cache);
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(names(&cache.listing(&g).unwrap()), ["y"]);
    }
}
