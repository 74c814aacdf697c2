//! Read-only replicas: `vos addsite NAME SERVER`, `vos remsite NAME SERVER`, `vos release NAME`.
//!
//! A release dumps the read-write volume once and restores that one dump on every read-only
//! site, so every replica holds the same contents under the same version stamp (a client that
//! fails over from one to another keeps what it cached). A site whose restore fails is marked
//! not released, and clients skip it until a later release reaches it.

use anyhow::{Context as _, Result, bail};
use proto::msg::{Site, SiteRole, VolumeKind};
use proto::{Request, Response};

use volumes::admin::{Context, Held, Located, unexpected};

#[derive(clap::Args)]
pub struct SiteArgs {
    name: String,
    /// The server (address or id).
    server: String,
}

#[derive(clap::Args)]
pub struct ReleaseArgs {
    name: String,
}

pub async fn addsite(ctx: &Context, a: SiteArgs) -> Result<()> {
    ctx.under_lock(&a.name, "vos addsite", async |held, located| {
        let old = located.entry;
        let mut entry = old.clone();
        let server = ctx.resolve(Some(&a.server)).await?;
        if entry.sites.iter().any(|s| s.server == server.server_id() && s.role != SiteRole::ReadWrite) {
            bail!("{} already has a read-only site on {}", a.name, server.address);
        }
        if entry.ro.is_none() {
            match ctx.call(None, Request::AllocateVolumeId).await? {
                Response::VolumeIdAllocated { id } => entry.ro = Some(id),
                other => return Err(unexpected(other)),
            }
        }
        entry.sites.push(Site { server: server.server_id(), role: SiteRole::NewReadOnly });
        held.call(Request::VldbUpdate { old, new: entry }).await?;
        println!("Added a read-only site for {} on {}: `vos release {}` fills it", a.name, server.address, a.name);
        Ok(())
    })
    .await
}

pub async fn remsite(ctx: &Context, a: SiteArgs) -> Result<()> {
    ctx.under_lock(&a.name, "vos remsite", async |held, located| {
        let old = located.entry;
        let mut entry = old.clone();
        let server = ctx.resolve(Some(&a.server)).await?;
        let before = entry.sites.len();
        entry.sites.retain(|s| s.server != server.server_id() || s.role == SiteRole::ReadWrite);
        if entry.sites.len() == before {
            bail!("{} has no read-only site on {}", a.name, server.address);
        }
        // Clients stop choosing the site first, then its replica goes.
        held.call(Request::VldbUpdate { old, new: entry.clone() }).await?;
        if let Some(ro) = entry.ro {
            held.call_at(&server, Request::RemoveVolumeHere { id: ro })
                .await
                .with_context(|| format!("removing {}.readonly from {}", a.name, server.address))?;
        }
        println!("Removed the read-only site of {} on {}", a.name, server.address);
        Ok(())
    })
    .await
}

pub async fn release(ctx: &Context, a: ReleaseArgs) -> Result<()> {
    ctx.under_lock(&a.name, "vos release", async |held, located| release_locked(ctx, held, located, &a.name).await)
        .await
}

async fn release_locked(ctx: &Context, held: &Held, located: Located, name: &str) -> Result<()> {
    let sites: Vec<Site> = located.ro_sites().cloned().collect();
    let (Some(ro), false) = (located.entry.ro, sites.is_empty()) else {
        bail!("{name} has no read-only sites: add one with `vos addsite {name} SERVER`");
    };
    let source = located.rw_server()?;
    let tmp = tempfile::tempdir()?;
    let dump = tmp.path().join("release");
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")?);
    bar.set_message(format!("reading {name}"));
    crate::dump::dump_to_file(ctx, &source, name, None, &dump, |n| bar.inc(n)).await?;
    let size = std::fs::metadata(&dump)?.len();
    let ro_name = format!("{name}.readonly");
    let mut entry = located.entry.clone();
    let mut failed = Vec::new();
    for site in &sites {
        let server = located.server(site.server)?;
        bar.set_position(0);
        bar.set_message(format!("releasing to {}", server.address));
        let to = crate::restore::Target {
            id: ro,
            name: &ro_name,
            kind: VolumeKind::ReadOnly,
            overwrite: true,
            fence: Some(&held.fence),
        };
        let done = crate::restore::restore_file(ctx, &server, to, &dump, |n| bar.inc(n)).await;
        let role = match done {
            Ok(_) => SiteRole::ReadOnly,
            Err(e) => {
                failed.push(format!("{}: {e:#}", server.address));
                SiteRole::NewReadOnly
            }
        };
        for s in entry.sites.iter_mut().filter(|s| s.server == site.server && s.role != SiteRole::ReadWrite) {
            s.role = role;
        }
    }
    bar.finish_and_clear();
    held.call(Request::VldbUpdate { old: located.entry, new: entry }).await?;
    let released = sites.len() - failed.len();
    println!("Released {name} to {released} of {} read-only sites ({})", sites.len(), proto::units::show(size));
    if !failed.is_empty() {
        bail!("not released to {} (clients will not use those sites until a release reaches them)", failed.join("; "));
    }
    Ok(())
}
