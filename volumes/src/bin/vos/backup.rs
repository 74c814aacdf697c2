//! `vos backup NAME`: makes (or remakes) `NAME.backup` on the server holding the volume, a
//! read-only clone sharing every chunk with it.

use anyhow::Result;
use proto::msg::VolumeKind;
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let located = ctx.locate(&a.name).await?;
    let server = located.rw_server()?;
    let mut entry = located.entry.clone();
    let id = match entry.backup {
        Some(b) => b,
        None => match ctx.call(None, Request::AllocateVolumeId).await? {
            Response::VolumeIdAllocated { id } => id,
            other => return Err(unexpected(other)),
        },
    };
    let req =
        Request::CloneVolumeHere { source: entry.rw, id, name: format!("{}.backup", a.name), kind: VolumeKind::Backup };
    let info = match ctx.call_at(&server, req).await? {
        Response::Volume { info, .. } => info,
        other => return Err(unexpected(other)),
    };
    if entry.backup != Some(id) {
        entry.backup = Some(id);
        ctx.call(None, Request::VldbUpdate { old: located.entry, new: entry }).await?;
    }
    println!("Created backup volume {} (id {}): {} files, sharing their chunks", info.name, info.id, info.files);
    Ok(())
}
