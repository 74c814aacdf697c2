//! `vos remove NAME`

use anyhow::{Context as _, Result};
use proto::{Request, Response};

use crate::session::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let resp = ctx.call(None, Request::RemoveVolume { name: a.name.clone() }).await;
    match resp.with_context(|| format!("removing volume {}", a.name))? {
        Response::Done => {
            println!("Volume {} removed", a.name);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
