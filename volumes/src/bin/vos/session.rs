//! Finding the cell and connecting to its servers with the admin credential.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use proto::cell::{CellFile, CellServer};
use proto::client::{Connector, Session};
use proto::tls::{Identity, TransportTuning};
use proto::{ClientId, Request, Response};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the cell and its admin credential are, for every admin command.
#[derive(clap::Args)]
pub struct CellArgs {
    /// The cell file (from `vice init`).
    #[arg(long, env = "AFS_CELL_FILE", global = true)]
    pub cell_file: Option<PathBuf>,
    /// The admin credential (from `vice init`).
    #[arg(long, env = "AFS_ADMIN_CRED", global = true)]
    pub admin_cred: Option<PathBuf>,
}

pub struct Context {
    pub cell: CellFile,
    connector: Connector,
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
        let connector = Connector::new(Some(identity), tuning)?;
        Ok(Context { cell, connector })
    }

    /// A server by address or id; the cell's first server when none is named.
    pub fn server(&self, which: Option<&str>) -> Result<&CellServer> {
        match which {
            None => self.cell.servers.first().ok_or_else(|| anyhow!("the cell file lists no servers")),
            Some(w) => self
                .cell
                .servers
                .iter()
                .find(|s| s.address == w || s.id.to_string() == w)
                .ok_or_else(|| anyhow!("no server {w:?} in the cell file (give its address or id)")),
        }
    }

    pub async fn connect(&self, which: Option<&str>) -> Result<Session> {
        let server = self.server(which)?;
        self.connector
            .connect(server, ClientId::random(), TIMEOUT)
            .await
            .with_context(|| format!("connecting to server {} at {}", server.id, server.address))
    }

    /// One call to the cell's location server; the server's refusal becomes the error.
    pub async fn call(&self, which: Option<&str>, req: Request) -> Result<Response> {
        let session = self.connect(which).await?;
        let resp = session.call(&req).await?;
        session.close();
        match resp {
            Response::Error(e) => bail!("{e}"),
            other => Ok(other),
        }
    }
}

impl Context {
    /// The address of the server holding `name`'s read-write site (asked of the location
    /// database), or `None` to use the database server.
    pub async fn site_of(&self, name: &str) -> Result<Option<String>> {
        let base = name.trim_end_matches(".backup");
        let req = Request::GetVolumeLocation { volume: proto::msg::VolumeRef::Name(base.to_string()) };
        match self.call(None, req).await? {
            Response::Location { entry, servers } => {
                let site = entry.sites.iter().find(|s| s.role == proto::msg::SiteRole::ReadWrite).map(|s| s.server);
                Ok(site.and_then(|id| servers.into_iter().find(|s| s.id == id)).map(|s| s.address))
            }
            other => Err(unexpected(other)),
        }
    }
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
