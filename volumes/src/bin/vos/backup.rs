//! `vos backup NAME`

use anyhow::Result;
use proto::{Request, Response};

use crate::session::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    match ctx.call(None, Request::BackupVolume { name: a.name }).await? {
        Response::Volume { info, .. } => {
            println!(
                "Created backup volume {} (id {}): {} files, sharing their chunks",
                info.name, info.id, info.files
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
