//! `vos move NAME SERVER`: moves a volume to another server while clients keep using it.
//!
//! A full dump goes to the target; incremental dumps catch it up while the source keeps
//! serving; then the source freezes the volume (clients' changes wait: `VolumeBusy`), the last
//! increment goes over, the location database switches to the target, and the source drops the
//! volume and answers `VolumeMoved`, so clients look it up again and carry on there. The
//! volume keeps its id and version stamp, so clients keep what they cached. If anything fails
//! before the switch, the source is unfrozen and the target's copy removed: the volume stays
//! whole where it was.

use anyhow::{Result, bail};
use proto::cell::CellServer;
use proto::msg::{SiteRole, VolumeKind};
use proto::{Request, Timestamp, VolumeId};

use volumes::admin::Context;

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
    server: &CellServer,
    name: &str,
    since: Option<Timestamp>,
    path: &std::path::Path,
) -> Result<(Timestamp, u64)> {
    let (header, _) = crate::dump::dump_to_file(ctx, server, name, since, path, |_| {}).await?;
    Ok((header.dumped_at, std::fs::metadata(path)?.len()))
}

async fn restore_to(
    ctx: &Context,
    server: &CellServer,
    id: VolumeId,
    name: &str,
    path: &std::path::Path,
) -> Result<()> {
    let to = crate::restore::Target { id, name, kind: VolumeKind::ReadWrite, overwrite: true };
    crate::restore::restore_file(ctx, server, to, path, |_| {}).await.map(|_| ())
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let located = ctx.locate(&a.name).await?;
    let entry = located.entry.clone();
    let source = located.rw_server()?;
    let target = ctx.resolve(Some(&a.server)).await?;
    if target.id == source.id {
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
        restore_to(ctx, &target, id, &a.name, &tmp.path().join("full")).await?;
        let mut moved = bytes;
        for round in 1..=CATCH_UP_ROUNDS {
            step(format!("catching up (round {round})"));
            let file = tmp.path().join(format!("inc{round}"));
            let (at, size) = dump_to(ctx, &source, &a.name, Some(since), &file).await?;
            restore_to(ctx, &target, id, &a.name, &file).await?;
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
        ctx.call_at(&source, Request::FreezeVolume { id, frozen: true }).await?;
        let last = tmp.path().join("last");
        let (_, size) = dump_to(ctx, &source, &a.name, Some(since), &last).await?;
        restore_to(ctx, &target, id, &a.name, &last).await?;
        // The read-write site changes; read-only sites stay as they are.
        let mut new_entry = entry.clone();
        for site in new_entry.sites.iter_mut().filter(|s| s.role == SiteRole::ReadWrite) {
            site.server = target.server_id();
        }
        new_entry.backup = None; // a backup stays behind and is removed, as in AFS
        // Fails if another vos changed the entry meanwhile: the move is then undone.
        ctx.call(None, Request::VldbUpdate { old: entry.clone(), new: new_entry }).await?;
        anyhow::Ok(moved + size)
    };
    let moved = match switch.await {
        Ok(m) => m,
        Err(e) => {
            bar.finish_and_clear();
            // The volume stays whole and in use where it was.
            let _ = ctx.call_at(&source, Request::FreezeVolume { id, frozen: false }).await;
            let _ = ctx.call_at(&target, Request::RemoveVolumeHere { id }).await;
            return Err(e.context(format!("moving {}: the volume stays on {}", a.name, source.address)));
        }
    };
    ctx.call_at(&source, Request::VolumeMovedAway { id }).await?;
    if let Some(backup) = entry.backup {
        let _ = ctx.call_at(&source, Request::RemoveVolumeHere { id: backup }).await;
    }
    bar.finish_and_clear();
    println!("Moved {} from {} to {} ({} sent)", a.name, source.address, target.address, proto::units::show(moved));
    Ok(())
}
