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
use proto::msg::{Fence, SiteRole, Unfinished, VolumeKind};
use proto::{RemoteError, Request, Response, Timestamp, VolumeId};

use volumes::admin::{Context, Held};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// The server to move it to (address or id from the cell file).
    #[arg(required_unless_present = "resume")]
    server: Option<String>,
    /// Settle a move an earlier `vos` began and did not end (it died, or lost its lock): finish
    /// it if the location database had switched, roll it back if not. A new move of the volume
    /// does this first by itself.
    #[arg(long)]
    resume: bool,
    /// A replicated volume: the member to move away from (address or id).
    #[arg(long)]
    from: Option<String>,
    /// For tests: stop (until killed) once this stage is reached.
    #[arg(long, hide = true, value_enum)]
    stop_at: Option<Stage>,
}

/// The stages of a move a test can stop it at.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    /// The target has the volume; the source still serves it.
    Copied,
    /// The source is frozen; the location still names it.
    Frozen,
    /// The location names the target; the source still holds its frozen copy.
    Switched,
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
    fence: &Fence,
    server: &CellServer,
    id: VolumeId,
    name: &str,
    path: &std::path::Path,
) -> Result<()> {
    let to = crate::restore::Target { id, name, kind: VolumeKind::ReadWrite, overwrite: true, fence: Some(fence) };
    crate::restore::restore_file(ctx, server, to, path, |_| {}).await.map(|_| ())
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let held = ctx.lock(&a.name, "vos move").await?;
    let result = async {
        match held.unfinished.clone() {
            Some(u) => match settle(ctx, &held, &a.name, u).await? {
                Settled::Finished { on } => println!("Finished an unfinished move of {} to {}", a.name, on.address),
                Settled::RolledBack { on } => {
                    println!("Rolled back an unfinished move of {}: it stays on {}", a.name, on.address)
                }
            },
            None if a.server.is_none() => println!("{} has no unfinished move", a.name),
            None => {}
        }
        match &a.server {
            Some(server) => move_locked(ctx, &held, &a, server).await,
            None => Ok(()),
        }
    }
    .await;
    held.release().await;
    result
}

/// Settles a move that was begun and not ended, by what the location database says: if it
/// names the target, the switch happened and the source's copy goes; if not, the source is
/// unfrozen and the target's partial copy goes. Either way the volume is whole in one place.
async fn settle(ctx: &Context, held: &Held, name: &str, unfinished: Unfinished) -> Result<Settled> {
    let Unfinished::Move { id, from, to, backup } = unfinished;
    let located = ctx.locate(name).await?;
    let (source, target) = (located.server(from)?, located.server(to)?);
    let rw = located.entry.sites.iter().find(|s| s.role == SiteRole::ReadWrite).map(|s| s.server);
    if rw == Some(to) {
        gone_is_done(held.call_at(&source, Request::VolumeMovedAway { id }).await)?;
        if let Some(backup) = backup {
            gone_is_done(held.call_at(&source, Request::RemoveVolumeHere { id: backup }).await)?;
        }
        held.note(None).await?;
        Ok(Settled::Finished { on: target })
    } else {
        held.call_at(&source, Request::FreezeVolume { id, frozen: false }).await?;
        if let Err(e) = gone_is_done(held.call_at(&target, Request::RemoveVolumeHere { id }).await) {
            // Nobody reads that copy; its server drops it when it starts again (see vice's
            // `reconcile`).
            eprintln!("vos: the partial copy of {name} on {} stays there for now: {e:#}", target.address);
        }
        held.note(None).await?;
        Ok(Settled::RolledBack { on: source })
    }
}

/// How a move that was begun ended.
enum Settled {
    /// It had switched: the volume is on the target only.
    Finished { on: CellServer },
    /// It had not: the volume stays on the source, unfrozen.
    RolledBack { on: CellServer },
}

/// A step whose object is gone already has nothing left to do.
fn gone_is_done(r: Result<Response>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.downcast_ref::<RemoteError>(), Some(RemoteError::NoSuchVolume)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn stop_if(at: Option<Stage>, stage: Stage) {
    if at == Some(stage) {
        eprintln!("vos: stopped before going on from this stage");
        std::future::pending::<()>().await;
    }
}

async fn move_locked(ctx: &Context, held: &Held, a: &Args, to: &str) -> Result<()> {
    let name = a.name.as_str();
    let located = ctx.locate(name).await?;
    if crate::group::members(&located).len() > 1 {
        let Some(from) = &a.from else {
            bail!("{name} is replicated: say which member moves with --from SERVER");
        };
        let (source, target) = (ctx.resolve(Some(from)).await?, ctx.resolve(Some(to)).await?);
        let moved = crate::group::move_member(ctx, &located, &source, &target).await?;
        held.call(Request::VldbUpdate { old: located.entry, new: moved.entry }).await?;
        println!("Moved {name}'s replica from {} to {} (no freeze)", source.address, target.address);
        return Ok(());
    }
    let entry = located.entry.clone();
    let source = located.rw_server()?;
    let target = ctx.resolve(Some(to)).await?;
    if target.id == source.id {
        if a.resume {
            return Ok(());
        }
        bail!("{name} is already on {}", target.address);
    }
    let id = entry.rw;
    let unfinished = Unfinished::Move { id, from: source.server_id(), to: target.server_id(), backup: entry.backup };
    // Written before anything changes, so whoever comes next knows what to settle.
    held.note(Some(unfinished.clone())).await?;
    let tmp = tempfile::tempdir()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let step = |m: String| bar.set_message(m);
    let fence = &held.fence;

    let copy = async {
        step(format!("copying {name} to {}", target.address));
        let (mut since, bytes) = dump_to(ctx, &source, name, None, &tmp.path().join("full")).await?;
        restore_to(ctx, fence, &target, id, name, &tmp.path().join("full")).await?;
        let mut moved = bytes;
        for round in 1..=CATCH_UP_ROUNDS {
            step(format!("catching up (round {round})"));
            let file = tmp.path().join(format!("inc{round}"));
            let (at, size) = dump_to(ctx, &source, name, Some(since), &file).await?;
            restore_to(ctx, fence, &target, id, name, &file).await?;
            (since, moved) = (at, moved + size);
            if size < SMALL_ENOUGH {
                break;
            }
        }
        stop_if(a.stop_at, Stage::Copied).await;
        anyhow::Ok((since, moved))
    };
    let switch = async {
        let (since, moved) = copy.await?;
        step("final increment (changes wait briefly)".into());
        // Frozen while this lock lives: if this vos dies, the source unfreezes itself.
        held.call_at(&source, Request::FreezeVolume { id, frozen: true }).await?;
        stop_if(a.stop_at, Stage::Frozen).await;
        let last = tmp.path().join("last");
        let (_, size) = dump_to(ctx, &source, name, Some(since), &last).await?;
        restore_to(ctx, fence, &target, id, name, &last).await?;
        // The read-write site changes; read-only sites stay as they are.
        let mut new_entry = entry.clone();
        for site in new_entry.sites.iter_mut().filter(|s| s.role == SiteRole::ReadWrite) {
            site.server = target.server_id();
        }
        new_entry.backup = None; // a backup stays behind and is removed, as in AFS
        held.call(Request::VldbUpdate { old: entry.clone(), new: new_entry }).await?;
        anyhow::Ok(moved + size)
    };
    let moved = match switch.await {
        Ok(m) => m,
        Err(e) => {
            bar.finish_and_clear();
            // The location database says whether the switch happened (its answer may be what
            // was lost); settling by it keeps the volume whole in one place.
            let outcome = match settle(ctx, held, name, unfinished).await {
                Ok(Settled::RolledBack { on }) => format!("the volume stays on {}", on.address),
                // Only the answer was lost: the move is done.
                Ok(Settled::Finished { on }) => {
                    println!("Moved {name} from {} to {} (settled after: {e:#})", source.address, on.address);
                    return Ok(());
                }
                Err(s) => format!("it could not be settled now ({s:#}): `vos move {name} --resume` will"),
            };
            return Err(e.context(format!("moving {name}: {outcome}")));
        }
    };
    stop_if(a.stop_at, Stage::Switched).await;
    held.call_at(&source, Request::VolumeMovedAway { id }).await?;
    if let Some(backup) = entry.backup {
        gone_is_done(held.call_at(&source, Request::RemoveVolumeHere { id: backup }).await)?;
    }
    held.note(None).await?;
    bar.finish_and_clear();
    println!("Moved {name} from {} to {} ({} sent)", source.address, target.address, proto::units::show(moved));
    Ok(())
}
