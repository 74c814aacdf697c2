//! `vos restore FILE NAME [--server S] [--overwrite]`

use std::io::Read;

use anyhow::{Context as _, Result, bail};
use proto::cell::CellServer;
use proto::msg::{Site, SiteRole, VldbEntry, VolumeKind};
use proto::{Request, Response};

use volumes::admin::{Context, no_such_volume, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// A dump made by `vos dump`.
    file: std::path::PathBuf,
    /// The volume to restore into (made if missing).
    name: String,
    /// The server to hold a new volume (address or id); the cell's first server by default.
    #[arg(long)]
    server: Option<String>,
    /// Replace an existing volume's contents with a full dump.
    #[arg(long)]
    overwrite: bool,
}

/// What a restore made: the volume, and how many objects and new chunks the dump brought.
pub struct Restored {
    pub info: proto::msg::VolumeInfo,
    pub objects: u64,
    pub chunks: u64,
}

/// The volume a restore goes into on its server.
pub struct Target<'a> {
    pub id: proto::VolumeId,
    /// With the suffix of its kind (`NAME.readonly` for a replica).
    pub name: &'a str,
    pub kind: VolumeKind,
    /// A full dump may replace an existing volume's contents.
    pub overwrite: bool,
    /// The lock of the operation this restore is a step of.
    pub fence: Option<&'a proto::msg::Fence>,
}

/// Restores the dump in `path` into `to` on `server`.
pub async fn restore_file(
    ctx: &Context,
    server: &CellServer,
    to: Target<'_>,
    path: &std::path::Path,
    mut progress: impl FnMut(u64),
) -> Result<Restored> {
    let name = to.name;
    let mut req =
        Request::RestoreVolumeHere { id: to.id, name: name.to_string(), overwrite: to.overwrite, kind: to.kind };
    if let Some(fence) = to.fence {
        req = Request::Fenced { fence: fence.clone(), request: Box::new(req) };
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let session = ctx.connect(server).await?;
    let resp = session
        .upload(&req, |buf| {
            let n = file.read(buf)?;
            progress(n as u64);
            Ok(n)
        })
        .await;
    session.close();
    match resp.with_context(|| format!("restoring {name} on {}", server.address))? {
        Response::Restored { info, objects, chunks, .. } => Ok(Restored { info, objects, chunks }),
        other => Err(unexpected(other)),
    }
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    proto::msg::validate_volume_name(&a.name)?;
    let mut file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    // Check the whole dump here first: a damaged file is refused before anything is sent.
    volumes::dump::verify(&mut file).with_context(|| format!("{} is not a usable dump", a.file.display()))?;
    match ctx.locate(&a.name).await {
        // An existing volume is restored where it lives, under its lock.
        Ok(_) => {
            ctx.under_lock(&a.name, "vos restore", async |held, l| {
                let server = l.rw_server()?;
                if let Some(w) = &a.server
                    && ctx.resolve(Some(w)).await?.id != server.id
                {
                    bail!("{} lives on {}: restore it there, or `vos move` it first", a.name, server.address);
                }
                restore_reporting(ctx, &a, &server, l.entry.rw, Some(&held.fence)).await
            })
            .await
        }
        // A new one gets an id from the location database and is recorded there once its
        // server holds it.
        Err(e) if no_such_volume(&e) => {
            let server = ctx.resolve(a.server.as_deref()).await?;
            let id = match ctx.call(None, Request::AllocateVolumeId).await? {
                Response::VolumeIdAllocated { id } => id,
                other => return Err(unexpected(other)),
            };
            restore_reporting(ctx, &a, &server, id, None).await?;
            let entry = VldbEntry {
                name: a.name.clone(),
                rw: id,
                ro: None,
                backup: None,
                sites: vec![Site { server: server.server_id(), role: SiteRole::ReadWrite }],
            };
            if let Err(e) = ctx.call(None, Request::VldbCreate { entry }).await {
                // Keep the servers and the location database in agreement.
                let _ = ctx.call_at(&server, Request::RemoveVolumeHere { id }).await;
                return Err(e.context(format!("recording volume {}", a.name)));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Restores `a.file` into volume `id` on `server` with a progress bar, and says what it made.
async fn restore_reporting(
    ctx: &Context,
    a: &Args,
    server: &CellServer,
    id: proto::VolumeId,
    fence: Option<&proto::msg::Fence>,
) -> Result<()> {
    let bar = indicatif::ProgressBar::new(std::fs::metadata(&a.file)?.len());
    bar.set_style(indicatif::ProgressStyle::with_template(
        "restoring {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    )?);
    bar.set_message(a.name.clone());
    let target = Target { id, name: &a.name, kind: VolumeKind::ReadWrite, overwrite: a.overwrite, fence };
    let Restored { info, objects, chunks } = restore_file(ctx, server, target, &a.file, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    println!(
        "Restored {} (id {}) on {}: {objects} objects, {chunks} chunks sent; {} in {} files",
        info.name,
        info.id,
        server.address,
        proto::units::show(info.used),
        info.files
    );
    Ok(())
}
