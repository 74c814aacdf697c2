//! Finding the cell and connecting to its servers with the admin credential.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use proto::cell::{CellFile, CellServer};
use proto::client::{Connector, Session};
use proto::tls::{Identity, TransportTuning};
use proto::{ClientId, Request, Response};

const TIMEOUT: Duration = Duration::from_secs(30);

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
        let connector = Connector::new(Some(identity), TransportTuning::default())?;
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

pub fn unexpected(r: Response) -> anyhow::Error {
    anyhow!("unexpected answer from the server: {r:?}")
}
