//! `vos create NAME [--server S | --replicas N | --servers A,B,C] [--quota SIZE]`

use anyhow::{Context as _, Result};
use proto::cell::CellServer;
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// Volume name: letters, digits, '.', '_' and '-'.
    name: String,
    /// The server to hold it (address or id); the cell's first server by default.
    #[arg(long, conflicts_with_all = ["replicas", "servers"])]
    server: Option<String>,
    /// Replicate it on this many running servers (a consensus group; 3 survive one loss).
    #[arg(long, conflicts_with = "servers")]
    replicas: Option<usize>,
    /// Replicate it on these servers (addresses or ids, comma-separated).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Maximum bytes of file data, e.g. 500M or 10G; none by default.
    #[arg(long, value_parser = proto::units::parse)]
    quota: Option<u64>,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    if a.replicas.is_some_and(|n| n > 1) || a.servers.len() > 1 {
        let members = crate::group::choose(ctx, a.replicas, &a.servers).await?;
        return crate::group::create(ctx, &a.name, a.quota.unwrap_or(0), &members).await;
    }
    let target = ctx.resolve(a.server.as_deref()).await?;
    let db = ctx.server(None)?;
    if target.id != db.id {
        return create_elsewhere(ctx, &a, &target).await;
    }
    let req = Request::CreateVolume { name: a.name.clone(), quota: a.quota.unwrap_or(0) };
    let resp = ctx.call_at(&target, req).await.with_context(|| format!("creating volume {}", a.name))?;
    match resp {
        Response::Volume { info, .. } => {
            println!("Volume {} created with id {} on server {}", info.name, info.id, target.address);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// On a server that does not hold the location database: the database allocates the id, the
/// server makes the volume, the database records where it is.
async fn create_elsewhere(ctx: &Context, a: &Args, server: &CellServer) -> Result<()> {
    proto::msg::validate_volume_name(&a.name)?;
    let id = match ctx.call(None, Request::AllocateVolumeId).await? {
        Response::VolumeIdAllocated { id } => id,
        other => return Err(unexpected(other)),
    };
    let here = Request::CreateVolumeHere { id, name: a.name.clone(), quota: a.quota.unwrap_or(0) };
    ctx.call_at(server, here).await.with_context(|| format!("creating volume {}", a.name))?;
    let entry = proto::msg::VldbEntry {
        name: a.name.clone(),
        rw: id,
        ro: None,
        backup: None,
        sites: vec![proto::msg::Site { server: server.server_id(), role: proto::msg::SiteRole::ReadWrite }],
    };
    ctx.call(None, Request::VldbCreate { entry }).await.with_context(|| format!("recording volume {}", a.name))?;
    println!("Volume {} created with id {id} on server {}", a.name, server.address);
    Ok(())
}
