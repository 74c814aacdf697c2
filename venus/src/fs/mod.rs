//! The cache manager's core: the file system as venus serves it, independent of FUSE.
//!
//! Every operation is an async method taking inode numbers and names and returning plain data;
//! the FUSE adapter (`crate::fuse`) only unpacks arguments and replies. Reads are served from the
//! cache while a callback promise holds, and fetched whole otherwise; every mutation becomes a
//! record in the client modification log and is sent to the server at once while the system
//! call waits (`write.rs`); a dirty file is stored on close (`store.rs`); promise breaks from the
//! servers drop cached state and invalidate the kernel's caches (`breaks.rs`).

mod access;
pub mod acl;
mod breaks;
pub mod conflicts;
pub mod drain;
mod emulate;
mod handles;
pub mod hoarding;
pub mod modes;
mod namespace;
mod paths;
mod permits;
mod promises;
mod read;
mod reintegrate;
pub mod room;
mod sender;
pub mod status;
mod store;
mod streams;

mod volumes;
mod write;
mod write_back;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::cell::CellFile;
use proto::msg::Promise;
use proto::{Attr, ClientId, Fid, ObjectKind, Timestamp};

use crate::cache::Cache;
use crate::counters::Counters;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid, ROOT_INO};
use crate::kernel::Forget;
use crate::net::{CellConn, Events};
use crate::remote::Remote;

use crate::user;
pub use crate::user::Caller;
pub use handles::Handle;
pub use namespace::{Node, Stat};
pub use paths::WhereIs;
pub use write::SetAttrRequest;

/// How venus is started.
#[derive(Debug, Clone)]
pub struct Config {
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub cells: Vec<CellFile>,
    /// How long an RPC may take before the server counts as unreachable.
    pub rpc_timeout: Duration,
    /// Where the file system is mounted (hoard profiles name local paths under it).
    pub mountpoint: PathBuf,
    /// The directory of hoard profiles (`*.hoard`), watched for edits.
    pub hoard_dir: PathBuf,
    /// Files at least this large open for reading before they are whole (0: never).
    pub stream_from: u64,
    /// How long a change made under a write-back permit may wait before it is sent; `None`:
    /// venus asks for no permits, and every connected change waits for the server.
    pub write_back: Option<Duration>,
}

pub struct Venus {
    pub cache: Cache,
    pub cml: cml::Cml,
    pub counters: Arc<Counters>,
    pub client: ClientId,
    cells: HashMap<CellId, Arc<dyn Remote>>,
    /// Cells in the order their names are listed at the mount root.
    cell_names: Vec<(String, CellId)>,
    inodes: namespace::Inodes,
    /// Promises per object and per volume, and the breaks that ended them.
    promises: promises::Promises,
    /// Forced disconnections, volumes with logged changes (see `modes.rs`).
    links: modes::Links,
    handles: handles::Handles,
    /// Each volume's queue of changes on their way to the server.
    senders: sender::Senders,
    /// Write-back permits held, and what the write-back loop has to send (`write_back.rs`).
    permits: permits::Permits,
    /// How fast each volume's log went to the server lately (for `venus status`).
    drains: drain::Drains,
    /// This core, for the work it starts in the background.
    me: std::sync::Weak<Venus>,
    /// What `df` shows per volume.
    rooms: room::Rooms,
    /// Files being fetched while open, and the size from which that is done.
    streams: streams::Streams,
    stream_from: u64,
    /// One fetch per object at a time.
    fetching: Mutex<HashMap<GFid, Arc<tokio::sync::Mutex<()>>>>,
    /// Where invalidations for the kernel are queued (never delivered on the caller's thread).
    kernel: crate::kernel::Invalidator,
    pub started: Timestamp,
    pub mountpoint: PathBuf,
    pub hoarding: hoarding::Hoarding,
    pub tokens: Arc<user::Tokens>,
    /// One revalidation at a time: a second request (say, promises lost while one runs) waits
    /// and then finds the stamps it established.
    revalidating: tokio::sync::Mutex<()>,
}

struct EventSink(std::sync::Weak<Venus>);

impl Events for EventSink {
    fn push(&self, cell: CellId, push: proto::msg::Push) -> crate::kernel::Delivered {
        match self.0.upgrade() {
            Some(v) => v.on_push(cell, push),
            None => crate::kernel::Delivered::now(),
        }
    }

    fn volume_lost(&self, cell: CellId, volume: proto::VolumeId) {
        if let Some(v) = self.0.upgrade() {
            v.on_volume_lost(cell, volume);
        }
    }

    fn callbacks_lost(&self, cell: CellId) {
        if let Some(v) = self.0.upgrade() {
            v.on_callbacks_lost(cell);
            // Revalidate in the background: one request when the volume stamps still hold.
            tokio::spawn(async move {
                if let Err(e) = v.revalidate_cell(cell).await {
                    tracing::info!(cell = cell.0, error = %e, "revalidation postponed");
                }
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The client id is kept in the cache directory, so the servers see the same client after a
/// restart.
fn client_id(dir: &std::path::Path) -> Result<ClientId> {
    let path = dir.join("client-id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(n) = u128::from_str_radix(text.trim(), 16)
    {
        return Ok(ClientId(n));
    }
    let id = ClientId::random();
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

impl Venus {
    /// A core talking to the cells' servers over the network.
    pub fn new(config: Config) -> Result<Arc<Venus>> {
        let cache_dir = config.cache_dir.clone();
        Venus::with_remotes(config, move |id, file, with| {
            let known = cache_dir.join(format!("servers-{}", file.cell));
            Ok(Arc::new(CellConn::new(id, file.clone(), with, Some(known))?))
        })
    }

    /// A core whose cells' servers are reached through `connect` (a test's in-memory servers,
    /// or the network's `CellConn`).
    pub fn with_remotes(
        config: Config,
        connect: impl Fn(CellId, &CellFile, crate::net::Context) -> Result<Arc<dyn Remote>>,
    ) -> Result<Arc<Venus>> {
        let cache = Cache::open(&config.cache_dir, config.cache_size)?;
        let (cml, salvaged) = cml::Cml::open_or_salvage(&config.cache_dir.join("cml.sqlite"))?;
        if let Some(s) = &salvaged {
            tracing::error!(
                reason = %s.reason,
                saved = %s.saved_as.display(),
                kept = s.kept,
                cut_short = s.cut_short,
                "the modification log was damaged: it was put aside and the changes that could be read \
                 were logged again; files changed and not yet stored are logged from their cached contents"
            );
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(config.cache_dir.join("cml.sqlite"), std::fs::Permissions::from_mode(0o600))?;
        }
        let tokens = Arc::new(user::Tokens::load(config.cache_dir.join("tokens")));
        let client = client_id(&config.cache_dir)?;
        let counters = Arc::new(Counters::default());
        let mut ids = Vec::new();
        for cell in &config.cells {
            ids.push(cache.cell_id(&cell.cell)?);
        }
        // Changes logged before a restart wait for reintegration.
        let pending = cml
            .summary()?
            .into_iter()
            .filter_map(|log| {
                let i = config.cells.iter().position(|c| c.cell == log.cell)?;
                Some((ids[i], log.volume))
            })
            .collect();
        let venus = Arc::new_cyclic(|weak| {
            let events: Arc<dyn Events> = Arc::new(EventSink(weak.clone()));
            let mut cells = HashMap::new();
            let mut cell_names = Vec::new();
            for (file, id) in config.cells.iter().zip(ids) {
                let with = crate::net::Context {
                    client,
                    timeout: config.rpc_timeout,
                    counters: counters.clone(),
                    events: events.clone(),
                    tokens: tokens.clone(),
                };
                match connect(id, file, with) {
                    Ok(conn) => {
                        cell_names.push((file.cell.clone(), id));
                        cells.insert(id, conn);
                    }
                    Err(e) => tracing::error!(cell = %file.cell, error = %e, "cannot set up the cell"),
                }
            }
            Venus {
                cache,
                cml,
                counters,
                client,
                cells,
                cell_names,
                inodes: namespace::Inodes::default(),
                promises: promises::Promises::default(),
                links: modes::Links::new(pending),
                handles: handles::Handles::default(),
                senders: sender::Senders::default(),
                permits: permits::Permits::new(config.write_back),
                drains: drain::Drains::default(),
                me: weak.clone(),
                rooms: room::Rooms::default(),
                streams: streams::Streams::default(),
                stream_from: config.stream_from,
                fetching: Mutex::new(HashMap::new()),
                kernel: crate::kernel::Invalidator::default(),
                started: Timestamp::now(),
                mountpoint: config.mountpoint.clone(),
                hoarding: hoarding::Hoarding::new(config.hoard_dir.clone(), &config.cache_dir),
                tokens,
                revalidating: tokio::sync::Mutex::new(()),
            }
        });
        venus.adopt_logged_containers()?;
        venus.log_unstored_files()?;
        Ok(venus)
    }

    pub fn cell(&self, id: CellId) -> Result<&Arc<dyn Remote>> {
        self.cells.get(&id).ok_or(VenusError::NotFound)
    }

    pub fn cells(&self) -> impl Iterator<Item = (&str, &Arc<dyn Remote>)> {
        self.cell_names.iter().filter_map(|(n, id)| self.cells.get(id).map(|c| (n.as_str(), c)))
    }

    pub fn cell_by_name(&self, name: &str) -> Option<CellId> {
        self.cell_names.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    pub fn node(&self, ino: u64) -> Result<Node> {
        self.inodes.node(ino)
    }

    pub fn object(&self, ino: u64) -> Result<GFid> {
        match self.node(ino)? {
            Node::Object(g) => Ok(g),
            Node::Root => Err(VenusError::ReadOnly("the mount root lists cells; it cannot be changed")),
        }
    }

    pub(crate) fn register(&self, g: GFid) -> u64 {
        self.inodes.register(g)
    }

    // ----- promises -----

    /// Whether the cached state of `g` may be used without asking: its own promise holds, or
    /// its volume is known current.
    pub(crate) fn valid(&self, g: &GFid) -> bool {
        self.promises.holds(g) || self.volume_valid(g.cell, g.fid.volume)
    }

    /// Taken before a request that may bring promises is sent.
    pub(crate) fn ticket(&self) -> promises::Ticket {
        self.promises.ticket()
    }

    /// Takes a promise on `g` from a request sent with `ticket` (see `promises.rs`).
    pub(crate) fn promised(&self, g: GFid, p: Promise, ticket: promises::Ticket) {
        self.promises.promise(g, p, ticket);
    }

    /// Takes attributes a server sent in reply to a request sent with `ticket` into the
    /// cache, unless a change of ours to the object was answered since (the reply may predate
    /// it, see `promises.rs`); returns what the cache holds for the object now.
    pub(crate) fn take_fetched_attr(&self, cell: CellId, attr: Attr, ticket: promises::Ticket) -> Result<Attr> {
        let g = GFid::new(cell, attr.fid);
        if self.promises.take_fetched(&g, ticket, || self.cache.put_attr(cell, attr.clone()))? {
            return Ok(attr);
        }
        Ok(self.cache.attr(&g).unwrap_or(attr))
    }

    pub(crate) fn unpromise(&self, g: &GFid) {
        self.promises.drop_object(g);
    }

    /// Number of objects holding an unexpired promise.
    pub fn promise_count(&self) -> usize {
        self.promises.count()
    }

    // ----- handles -----

    pub(crate) fn add_handle(&self, h: Handle) -> (u64, Arc<Handle>) {
        self.handles.add(h)
    }

    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles.get(fh)
    }

    pub(crate) fn take_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.take(fh)
    }

    pub(crate) fn fetch_lock(&self, g: GFid) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.fetching).entry(g).or_default().clone()
    }

    /// Connects the kernel (set once the mount exists).
    pub fn set_kernel(&self, kernel: Arc<dyn crate::kernel::Kernel>) -> std::io::Result<()> {
        self.kernel.connect(kernel)
    }

    /// Tells the kernel to forget something. Returns at once, whoever calls it (a FUSE handler
    /// included): the invalidation is delivered by a thread of its own (`crate::kernel`), and
    /// only a callback break waits for the delivery, before its ack.
    pub(crate) fn forget(&self, forget: Forget) -> crate::kernel::Delivered {
        self.kernel.forget(forget)
    }

    /// Runs `f`; when it failed because the cache disk is full, makes room (the disk's reserve,
    /// clean files: `Cache::make_room`) and runs it once more. What still does not fit fails
    /// with `ENOSPC`.
    pub(crate) fn with_room<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(e) if e.is_disk_full() && self.cache.make_room() => f(),
            other => other,
        }
    }

    // ----- attributes -----

    /// What the kernel sees of an object. While a file is open or has local changes, size and
    /// mtime come from its container: writes through kernel passthrough never pass venus.
    pub(crate) fn stat_of(&self, g: GFid, attr: &Attr) -> Stat {
        let ino = self.register(g);
        let mut st = Stat {
            ino,
            kind: if crate::cache::shows_as_dir(attr.kind) { ObjectKind::Directory } else { attr.kind },
            size: attr.size,
            mode: attr.mode,
            nlink: attr.nlink,
            uid: self.local_owner(g.cell, attr.owner),
            gid: attr.group,
            mtime: attr.mtime,
            ctime: attr.ctime,
            public: self.public(g, attr),
        };
        if attr.kind == ObjectKind::File
            && let Some(c) = self.cache.get(&g)
            && c.has_data
            && (c.dirty || c.open > 0)
            && let Ok(m) = std::fs::metadata(self.cache.container(&g))
        {
            st.size = m.len();
            if let Ok(t) = m.modified() {
                st.mtime = Timestamp::from_system(t);
            }
        }
        st
    }

    pub fn root_stat(&self) -> Stat {
        Stat {
            ino: ROOT_INO,
            kind: ObjectKind::Directory,
            size: self.cell_names.len() as u64,
            mode: 0o755,
            nlink: 2 + self.cell_names.len() as u32,
            uid: 0,
            gid: 0,
            mtime: self.started,
            ctime: self.started,
            public: true,
        }
    }

    /// The root of a cell: its `root.cell` volume, read-only if released (the top of the
    /// tree is a read-only path, as in AFS), or read-write when `writable` (`/afs/.<cell>`).
    pub async fn cell_root(&self, cell: CellId, writable: bool) -> Result<GFid> {
        let volume = self.volume_id(cell, "root.cell", !writable).await?;
        Ok(GFid::new(cell, Fid::root(volume)))
    }

    /// A volume's id by name (see `CellConn::resolve_volume` for `prefer_ro`): from the
    /// location service, remembered in the cache index so the namespace can be walked with no
    /// server at all (a laptop started on a train).
    pub async fn volume_id(&self, cell: CellId, name: &str, prefer_ro: bool) -> Result<proto::VolumeId> {
        let conn = self.cell(cell)?;
        let cell_forced = self.links.cell_forced(cell);
        if !conn.is_down() && !cell_forced {
            match conn.resolve_volume(name, prefer_ro).await {
                Ok((id, known_as)) => {
                    let mut state = self.cache.volume(cell, id);
                    if state.name.as_deref() != Some(known_as.as_str()) {
                        state.name = Some(known_as);
                        self.cache.set_volume(cell, id, state)?;
                    }
                    return Ok(id);
                }
                // No location server, or none that reaches the cell database: what the cache
                // remembers still leads to the volume.
                Err(VenusError::Unreachable(_) | VenusError::Remote(proto::RemoteError::CellDbUnavailable(_))) => {}
                Err(e) => return Err(e),
            }
        }
        self.cached_volume_id(cell, name, prefer_ro).ok_or(VenusError::NotCached)
    }

    /// As `volume_id`, from the cache index alone.
    pub(crate) fn cached_volume_id(&self, cell: CellId, name: &str, prefer_ro: bool) -> Option<proto::VolumeId> {
        let replica = (prefer_ro && crate::net::split_volume_name(name).1.is_none())
            .then(|| self.cache.volume_named(cell, &format!("{name}.readonly")))
            .flatten();
        replica.or_else(|| self.cache.volume_named(cell, name))
    }

    /// Whether mount points in `volume` lead to read-only replicas where there are some: the
    /// volume is itself a replica (AFS's rule; a backup's mount points lead to read-write).
    pub(crate) fn in_replica(&self, cell: CellId, volume: proto::VolumeId) -> bool {
        self.cache.volume(cell, volume).name.is_some_and(|n| n.ends_with(".readonly"))
    }

    /// Closes the connections to every cell (venus is exiting).
    pub async fn close_connections(&self) {
        for (_, conn) in self.cells() {
            conn.close_all().await;
        }
        // Let the close frames go out.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Whether a volume is a read-only replica or a backup (known from the name it was
    /// reached by): changes to it fail at once with `EROFS`, before anything is written
    /// locally.
    pub(crate) fn read_only(&self, cell: CellId, volume: proto::VolumeId) -> bool {
        self.cache.volume(cell, volume).name.is_some_and(|n| n.ends_with(".backup") || n.ends_with(".readonly"))
    }

    pub(crate) fn writable(&self, g: GFid) -> Result<()> {
        if self.read_only(g.cell, g.fid.volume) {
            return Err(VenusError::Remote(proto::RemoteError::ReadOnly));
        }
        Ok(())
    }
}
