//! `vos cellfile`: the cell file with every server the location database knows.

use anyhow::Result;
use proto::cell::{CellFile, CellServer};
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(ctx: &Context, _: Args) -> Result<()> {
    let servers = match ctx.call(None, Request::ListServers).await? {
        Response::Servers { servers } => servers,
        other => return Err(unexpected(other)),
    };
    let file = CellFile {
        cell: ctx.cell.cell.clone(),
        servers: servers
            .into_iter()
            .map(|s| CellServer { id: s.id.0, address: s.address, fingerprint: s.fingerprint })
            .collect(),
    };
    print!("{}", file.to_toml());
    Ok(())
}
