//! `vos create NAME [--server S] [--quota SIZE]`

use anyhow::{Context as _, Result};
use proto::{Request, Response};

use crate::session::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// Volume name: letters, digits, '.', '_' and '-'.
    name: String,
    /// The server to hold it (address or id); the cell's first server by default.
    #[arg(long)]
    server: Option<String>,
    /// Maximum bytes of file data, e.g. 500M or 10G; none by default.
    #[arg(long, value_parser = proto::units::parse)]
    quota: Option<u64>,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let req = Request::CreateVolume { name: a.name.clone(), quota: a.quota.unwrap_or(0) };
    let resp = ctx.call(a.server.as_deref(), req).await.with_context(|| format!("creating volume {}", a.name))?;
    match resp {
        Response::Volume { info, .. } => {
            println!(
                "Volume {} created with id {} on server {}",
                info.name,
                info.id,
                ctx.server(a.server.as_deref())?.address
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
