//! `vos remove NAME`: the volume, its backup and its read-only replicas leave every server that
//! holds them, then the location entry goes.

use anyhow::{Context as _, Result};
use proto::msg::SiteRole;
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let located = ctx.locate(&a.name).await?;
    let e = &located.entry;
    for site in &e.sites {
        let server = located.server(site.server)?;
        let ids = match site.role {
            SiteRole::ReadWrite => vec![Some(e.rw), e.backup],
            SiteRole::ReadOnly | SiteRole::NewReadOnly => vec![e.ro],
        };
        for id in ids.into_iter().flatten() {
            ctx.call_at(&server, Request::RemoveVolumeHere { id })
                .await
                .with_context(|| format!("removing {id} from {}", server.address))?;
        }
    }
    match ctx.call(None, Request::RemoveVolume { name: a.name.clone() }).await? {
        Response::Done => {
            println!("Volume {} removed", a.name);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
