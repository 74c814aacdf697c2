//! `vos rename OLD NEW`: the location entry first (it refuses a name in use), then every
//! server's copy: the read-write volume, its backup and its read-only replicas.

use anyhow::{Context as _, Result};
use proto::msg::SiteRole;
use proto::{Request, VolumeId};

use volumes::admin::Context;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    new_name: String,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    proto::msg::validate_volume_name(&a.new_name)?;
    let located = ctx.locate(&a.name).await?;
    ctx.call(None, Request::VldbRename { name: a.name.clone(), new_name: a.new_name.clone() }).await?;
    let e = &located.entry;
    for site in &e.sites {
        let server = located.server(site.server)?;
        let here: Vec<(VolumeId, String)> = match site.role {
            SiteRole::ReadWrite => std::iter::once((e.rw, a.new_name.clone()))
                .chain(e.backup.map(|b| (b, format!("{}.backup", a.new_name))))
                .collect(),
            SiteRole::ReadOnly => e.ro.map(|ro| (ro, format!("{}.readonly", a.new_name))).into_iter().collect(),
            // Not released: nothing there yet.
            SiteRole::NewReadOnly => Vec::new(),
        };
        for (id, name) in here {
            ctx.call_at(&server, Request::RenameVolumeHere { id, name }).await.with_context(|| {
                format!("renaming {id} on {} (the location entry is already renamed)", server.address)
            })?;
        }
    }
    println!("Renamed volume {} to {} (mount points naming the old name must be remade)", a.name, a.new_name);
    Ok(())
}
