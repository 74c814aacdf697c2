//! `vos rename OLD NEW`

use anyhow::Result;
use proto::{Request, Response};

use crate::session::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    new_name: String,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    match ctx.call(None, Request::RenameVolume { name: a.name.clone(), new_name: a.new_name }).await? {
        Response::Volume { info, .. } => {
            println!("Renamed volume {} to {} (mount points naming the old name must be remade)", a.name, info.name);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
