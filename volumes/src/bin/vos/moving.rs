//! `vos move NAME SERVER`: moves a volume to another server while clients keep using it.
//!
//! A full dump goes to the target; incremental dumps catch it up while the source keeps
//! serving; then the source freezes the volume (clients' changes wait: `VolumeBusy`), the last
//! increment goes over, the location database switches to the target, and the source drops the
//! volume and answers `VolumeMoved`, so clients look it up again and carry on there. The
//! volume keeps its id and version stamp, so clients keep what they cached. If anything fails
//! before the switch, the source is unfrozen and the target's copy removed: the volume stays
//! whole where it was.

use anyhow::{Context as _, Result, bail};
use proto::msg::{Site, SiteRole, VolumeRef};
use proto::{Request, Response, Timestamp, VolumeId};

use crate::session::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// The server to move it to (address or id from the cell file).
    server: String,
}

/// Increments smaller than this end the catch-up: the freeze will be short.
const SMALL_ENOUGH: u64 = 1 << 20;
const CATCH_UP_ROUNDS: usize = 4;

async fn dump_to(
    ctx: &Context,
    server: &str,
    name: &str,
    since: Option<Timestamp>,
    path: &std::path::Path,
) -> Result<(Timestamp, u64)> {
    let (header, _) = crate::dump::dump_to_file(ctx, Some(server), name, since, path, |_| {}).await?;
    Ok((header.dumped_at, std::fs::metadata(path)?.len()))
}

async fn restore_to(ctx: &Context, server: &str, id: VolumeId, name: &str, path: &std::path::Path) -> Result<()> {
    let req = Request::RestoreVolumeHere { id, name: name.to_string(), overwrite: true };
    let mut file = std::fs::File::open(path)?;
    let resp = crate::restore::upload_file(ctx, Some(server), &req, &mut file, |_| {})
        .await
        .with_context(|| format!("restoring {name} on {server}"))?;
    match resp {
        Response::Restored { .. } => Ok(()),
        other => Err(unexpected(other)),
    }
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let entry = match ctx.call(None, Request::GetVolumeLocation { volume: VolumeRef::Name(a.name.clone()) }).await? {
        Response::Location { entry, .. } if entry.name == a.name => entry,
        Response::Location { .. } => bail!("move the read-write volume by its own name"),
        other => return Err(unexpected(other)),
    };
    let source_id =
        entry.sites.iter().find(|s| s.role == SiteRole::ReadWrite).map(|s| s.server).context("no read-write site")?;
    let source = ctx.server(Some(&source_id.0.to_string()))?.address.clone();
    let target = ctx.server(Some(&a.server))?.clone();
    if target.server_id() == source_id {
        bail!("{} is already on {}", a.name, target.address);
    }
    let tmp = tempfile::tempdir()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let step = |m: String| bar.set_message(m);

    let id = entry.rw;
    let copy = async {
        step(format!("copying {} to {}", a.name, target.address));
        let (mut since, bytes) = dump_to(ctx, &source, &a.name, None, &tmp.path().join("full")).await?;
        restore_to(ctx, &target.address, id, &a.name, &tmp.path().join("full")).await?;
        let mut moved = bytes;
        for round in 1..=CATCH_UP_ROUNDS {
            step(format!("catching up (round {round})"));
            let file = tmp.path().join(format!("inc{round}"));
            let (at, size) = dump_to(ctx, &source, &a.name, Some(since), &file).await?;
            restore_to(ctx, &target.address, id, &a.name, &file).await?;
            (since, moved) = (at, moved + size);
            if size < SMALL_ENOUGH {
                break;
            }
        }
        anyhow::Ok((since, moved))
    };
    let switch = async {
        let (since, moved) = copy.await?;
        step("final increment (changes wait briefly)".into());
        ctx.call(Some(&source), Request::FreezeVolume { id, frozen: true }).await?;
        let last = tmp.path().join("last");
        let (_, size) = dump_to(ctx, &source, &a.name, Some(since), &last).await?;
        restore_to(ctx, &target.address, id, &a.name, &last).await?;
        let mut new_entry = entry.clone();
        new_entry.sites = vec![Site { server: target.server_id(), role: SiteRole::ReadWrite }];
        new_entry.backup = None; // a backup stays behind and is removed, as in AFS
        ctx.call(None, Request::VldbUpdate { entry: new_entry }).await?;
        anyhow::Ok(moved + size)
    };
    let moved = match switch.await {
        Ok(m) => m,
        Err(e) => {
            bar.finish_and_clear();
            // The volume stays whole and in use where it was.
            let _ = ctx.call(Some(&source), Request::FreezeVolume { id, frozen: false }).await;
            let _ = ctx.call(Some(&target.address), Request::RemoveVolumeHere { id }).await;
            return Err(e.context(format!("moving {}: the volume stays on {source}", a.name)));
        }
    };
    ctx.call(Some(&source), Request::VolumeMovedAway { id }).await?;
    if let Some(backup) = entry.backup {
        let _ = ctx.call(Some(&source), Request::RemoveVolumeHere { id: backup }).await;
    }
    bar.finish_and_clear();
    println!("Moved {} from {source} to {} ({} sent)", a.name, target.address, proto::units::show(moved));
    Ok(())
}
