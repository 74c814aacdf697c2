//! The admin commands' side of a cell (`vos`, `pts`): finding the cell and connecting to its
//! servers with the admin credential, locating volumes, and the `main` they share. Client code,
//! kept out of the store: nothing else in this crate uses it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use proto::cell::{CellFile, CellServer};
use proto::client::{Connector, Session};
use proto::msg::{Fence, ServerInfo, Site, SiteRole, Unfinished, VldbEntry, VolumeRef};
use proto::tls::{Identity, TransportTuning};
use proto::{ClientId, RemoteError, Request, Response, ServerId};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a lock outlives a `vos` that stopped renewing it (killed, cut off).
/// How long to try one server before trying the next.
const FAILOVER_AFTER: Duration = Duration::from_secs(5);
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);

/// Where the cell and its admin credential are, for every admin command.
#[derive(clap::Args)]
pub struct CellArgs {
    /// The cell file (from `vice init`).
    #[arg(long, env = "AFS_CELL_FILE", global = true)]
    pub cell_file: Option<PathBuf>,
    /// The admin credential (from `vice init`).
    #[arg(long, env = "AFS_ADMIN_CRED", global = true)]
    pub admin_cred: Option<PathBuf>,
    /// Seconds a volume's lock outlives this command if it dies without giving it up.
    #[arg(long, global = true, default_value_t = DEFAULT_LOCK_TTL.as_secs(), value_name = "SECS", hide = true)]
    pub lock_ttl: u64,
}

#[derive(Clone)]
pub struct Context {
    pub cell: CellFile,
    connector: std::sync::Arc<Connector>,
    /// The lease of the locks this command takes (`--lock-ttl`).
    pub lock_ttl: Duration,
    /// Servers this command found unreachable: tried last by [`Context::call_any`], so one
    /// dead server costs one command one timeout, not one per call.
    unreachable: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<ServerId>>>,
}

impl Context {
    pub fn load(cell_file: Option<PathBuf>, admin_cred: Option<PathBuf>) -> Result<Self> {
        let cell_file = cell_file.ok_or_else(|| anyhow!("no cell file: pass --cell-file or set AFS_CELL_FILE"))?;
        let cell = CellFile::load(&cell_file)?;
        let admin_cred =
            admin_cred.ok_or_else(|| anyhow!("no admin credential: pass --admin-cred or set AFS_ADMIN_CRED"))?;
        let identity = Identity::load(&admin_cred)?;
        // Keep-alives every 2 s and a 10 s idle timeout: a server that dies under a long
        // operation (a move, a restore) is noticed in seconds, not minutes.
        let tuning = TransportTuning {
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            ..TransportTuning::default()
        };
        let connector = std::sync::Arc::new(Connector::new(Some(identity), tuning)?);
        Ok(Context { cell, connector, lock_ttl: DEFAULT_LOCK_TTL, unreachable: Default::default() })
    }

    /// A server of the cell file by address or id; the cell's first (database) server when
    /// none is named.
    pub fn server(&self, which: Option<&str>) -> Result<CellServer> {
        match which {
            None => self.cell.servers.first().cloned().ok_or_else(|| anyhow!("the cell file lists no servers")),
            Some(w) => self
                .cell
                .servers
                .iter()
                .find(|s| s.address == w || s.id.to_string() == w)
                .cloned()
                .ok_or_else(|| anyhow!("no server {w:?} in the cell file (give its address or id)")),
        }
    }

    /// A server by address or id: from the cell file, or else from the database server's list
    /// (servers that joined after the cell file was written; the pinned database server vouches
    /// for their fingerprints).
    pub async fn resolve(&self, which: Option<&str>) -> Result<CellServer> {
        if let Ok(s) = self.server(which) {
            return Ok(s);
        }
        let w = which.unwrap_or_default();
        self.servers()
            .await?
            .into_iter()
            .find(|s| s.address == w || s.id.to_string() == w)
            .ok_or_else(|| anyhow!("no server {w:?} in the cell (give its address or id; `vos cellfile` lists them)"))
    }

    /// Every server of the cell, as the database server lists them.
    pub async fn servers(&self) -> Result<Vec<CellServer>> {
        match self.call_any(Request::ListServers).await? {
            Response::Servers { servers } => Ok(servers.into_iter().map(cell_server).collect()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn connect(&self, server: &CellServer) -> Result<Session> {
        self.connector
            .connect(server, ClientId::random(), TIMEOUT)
            .await
            .with_context(|| format!("connecting to server {} at {}", server.id, server.address))
    }

    /// One call to a server (the database server when none is named); the server's refusal
    /// becomes the error.
    pub async fn call(&self, which: Option<&str>, req: Request) -> Result<Response> {
        if which.is_none() {
            return self.call_any(req).await;
        }
        let server = self.resolve(which).await?;
        self.call_at(&server, req).await
    }

    /// One call to the cell's database: the first server of the cell file that answers. With
    /// the cell database on etcd every server answers, so one server down stops nothing; with
    /// the embedded one only the first does (the others refuse, and that refusal is returned).
    pub async fn call_any(&self, req: Request) -> Result<Response> {
        let mut unreachable = Vec::new();
        let mut unavailable = None;
        let mut servers = self.cell.servers.clone();
        let dead = self.dead().clone();
        servers.sort_by_key(|s| dead.contains(&s.server_id()));
        for server in &servers {
            let connecting = self.connector.connect(server, ClientId::random(), FAILOVER_AFTER);
            let session = match connecting.await {
                Ok(s) => {
                    self.dead().remove(&server.server_id());
                    s
                }
                Err(e) => {
                    self.dead().insert(server.server_id());
                    unreachable.push(format!("{e:#}"));
                    continue;
                }
            };
            let resp = session.call(&req).await;
            session.close();
            match resp {
                // This server cannot reach the cell database; another may.
                Ok(Response::Error(e @ RemoteError::CellDbUnavailable(_))) => {
                    unreachable.push(format!("server {}: {e}", server.id));
                    unavailable = Some(e);
                }
                Ok(Response::Error(e)) => return Err(anyhow::Error::new(e)),
                Ok(other) => return Ok(other),
                Err(e) if e.is_unreachable() => unreachable.push(format!("server {}: {e}", server.id)),
                Err(e) => return Err(e.into()),
            }
        }
        match unavailable {
            Some(e) => {
                Err(anyhow::Error::new(e)
                    .context(format!("no server of the cell could act: {}", unreachable.join("; "))))
            }
            None => bail!("no server of the cell answered: {}", unreachable.join("; ")),
        }
    }

    fn dead(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ServerId>> {
        self.unreachable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn call_at(&self, server: &CellServer, req: Request) -> Result<Response> {
        let session = self.connect(server).await?;
        let resp = session.call(&req).await?;
        session.close();
        match resp {
            // Kept typed, so callers can tell e.g. a missing volume from a failure.
            Response::Error(e) => Err(anyhow::Error::new(e)),
            other => Ok(other),
        }
    }
}

/// A volume's lock, held while a `vos` command works on it, renewed in the background. Every
/// step that changes something goes through it, fenced with the lock's token, so a server
/// refuses it once the lock is lost.
pub struct Held {
    ctx: Context,
    pub fence: Fence,
    /// What an earlier holder began and did not finish.
    pub unfinished: Option<Unfinished>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Context {
    /// Takes volume `volume`'s lock for `purpose`; refused while another admin holds it.
    pub async fn lock(&self, volume: &str, purpose: &str) -> Result<Held> {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let purpose = format!("{purpose} from {} pid {}", host.trim(), std::process::id());
        let ttl_secs = self.lock_ttl.as_secs().max(1) as u32;
        let req = Request::TakeLock { volume: volume.to_string(), purpose, ttl_secs };
        let (fence, ttl_secs, unfinished) = match self.call_any(req).await? {
            Response::Locked { fence, ttl_secs, unfinished } => (fence, ttl_secs, unfinished),
            other => return Err(unexpected(other)),
        };
        let (ctx, f) = (self.clone(), fence.clone());
        let renewing = tokio::spawn(async move {
            let every = Duration::from_millis(u64::from(ttl_secs) * 1000 / 3);
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = ctx.call_any(Request::RenewLock { fence: f.clone() }).await
                    && matches!(e.downcast_ref::<RemoteError>(), Some(RemoteError::StaleFence(_)))
                {
                    eprintln!("vos: the lock on {} was lost: {e:#}", f.volume);
                    return;
                }
            }
        });
        Ok(Held { ctx: self.clone(), fence, unfinished, renewing })
    }
}

impl Context {
    /// Runs `work` under volume `name`'s lock (taken for `purpose`), with the volume's location
    /// read under it, and gives the lock up however `work` ends. Refused while an earlier
    /// holder's operation is unfinished (`vos move NAME --resume` settles it).
    pub async fn under_lock<T>(
        &self,
        name: &str,
        purpose: &str,
        work: impl AsyncFnOnce(&Held, Located) -> Result<T>,
    ) -> Result<T> {
        let held = self.lock(name, purpose).await?;
        let result = async {
            if let Some(u) = &held.unfinished {
                bail!("{name} has an unfinished operation ({u:?}): settle it with `vos move {name} --resume` first");
            }
            let located = self.locate(name).await?;
            work(&held, located).await
        }
        .await;
        held.release().await;
        result
    }
}

impl Held {
    /// `req` wrapped in this lock's fence.
    pub fn fenced(&self, req: Request) -> Request {
        Request::Fenced { fence: self.fence.clone(), request: Box::new(req) }
    }

    /// A fenced call to one server.
    pub async fn call_at(&self, server: &CellServer, req: Request) -> Result<Response> {
        self.ctx.call_at(server, self.fenced(req)).await
    }

    /// A fenced call to the cell database.
    pub async fn call(&self, req: Request) -> Result<Response> {
        self.ctx.call_any(self.fenced(req)).await
    }

    /// Records what this holder has begun (`None`: it is done).
    pub async fn note(&self, unfinished: Option<Unfinished>) -> Result<()> {
        self.ctx.call_any(Request::NoteUnfinished { fence: self.fence.clone(), unfinished }).await.map(|_| ())
    }

    /// Gives the lock up. (A `vos` that dies instead frees it when its lease runs out.)
    pub async fn release(self) {
        self.renewing.abort();
        let _ = self.ctx.call_any(Request::ReleaseLock { fence: self.fence.clone() }).await;
    }
}

/// A volume's location entry and the servers of the cell.
pub struct Located {
    pub entry: VldbEntry,
    pub servers: Vec<CellServer>,
}

impl Located {
    pub fn server(&self, id: ServerId) -> Result<CellServer> {
        self.servers
            .iter()
            .find(|s| s.id == id.0)
            .cloned()
            .ok_or_else(|| anyhow!("server {id} of volume {} is not in the cell", self.entry.name))
    }

    /// The server holding the read-write volume.
    pub fn rw_server(&self) -> Result<CellServer> {
        let site = self.entry.sites.iter().find(|s| s.role == SiteRole::ReadWrite).map(|s| s.server);
        self.server(site.ok_or_else(|| anyhow!("volume {} has no read-write site", self.entry.name))?)
    }

    /// The server holding `name` as that name means it: the read-write volume and its
    /// `.backup` on the read-write site, a `.readonly` on its first released read-only site.
    pub fn site_for(&self, name: &str) -> Result<CellServer> {
        if name.ends_with(".readonly") {
            let site = self.entry.sites.iter().find(|s| s.role == SiteRole::ReadOnly);
            let site = site.ok_or_else(|| anyhow!("{} has no released read-only site", self.entry.name))?;
            return self.server(site.server);
        }
        self.rw_server()
    }

    /// The servers listed as read-only sites (released or not).
    pub fn ro_sites(&self) -> impl Iterator<Item = &Site> {
        self.entry.sites.iter().filter(|s| s.role != SiteRole::ReadWrite)
    }
}

/// Whether an error is the server saying this volume does not exist.
pub fn no_such_volume(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<RemoteError>(), Some(RemoteError::NoSuchVolume))
}

impl Context {
    /// The location entry of the read-write volume `name` (not a `.readonly` or `.backup` name).
    pub async fn locate(&self, name: &str) -> Result<Located> {
        let req = Request::GetVolumeLocation { volume: VolumeRef::Name(name.to_string()) };
        match self.call(None, req).await? {
            Response::Location { entry, servers } if entry.name == name => {
                Ok(Located { entry, servers: servers.into_iter().map(cell_server).collect() })
            }
            Response::Location { entry, .. } => bail!("name the read-write volume {}, not {name}", entry.name),
            other => Err(unexpected(other)),
        }
    }

    /// The location entry of the volume `name` belongs to (`NAME`, `NAME.readonly` or
    /// `NAME.backup`).
    pub async fn locate_any(&self, name: &str) -> Result<Located> {
        self.locate(name.trim_end_matches(".backup").trim_end_matches(".readonly")).await
    }

    /// The server holding volume `name` (see `Located::site_for`).
    pub async fn site_of(&self, name: &str) -> Result<CellServer> {
        self.locate_any(name).await?.site_for(name)
    }
}

fn cell_server(s: ServerInfo) -> CellServer {
    CellServer { id: s.id.0, address: s.address, fingerprint: s.fingerprint }
}

pub fn unexpected(r: Response) -> anyhow::Error {
    anyhow!("unexpected answer from the server: {r:?}")
}

/// The `main` of an admin command: a small runtime, one line on stderr and a non-zero exit on
/// failure, and a quiet end when writing into a closed pipe (`| head`).
pub fn main_of<F: Future<Output = Result<()>>>(name: &str, run: F) -> std::process::ExitCode {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
