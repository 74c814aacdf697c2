//! `vos examine NAME [--json]`

use anyhow::Result;
use proto::msg::SiteRole;
use proto::{Request, Response};

use crate::session::{Context, unexpected};
use proto::units::show;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let (info, entry) =
        match ctx.call(ctx.site_of(&a.name).await?.as_deref(), Request::ExamineVolume { name: a.name }).await? {
            Response::Volume { info, entry } => (info, entry),
            other => return Err(unexpected(other)),
        };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "volume": info, "vldb": entry }))?);
        return Ok(());
    }
    println!("{} (id {}, {:?})", info.name, info.id, info.kind);
    println!("    used      {} in {} files, {} directories", show(info.used), info.files, info.directories);
    let quota = if info.quota == 0 { "none".to_string() } else { show(info.quota) };
    println!("    quota     {quota}");
    println!("    stamp     {}", info.stamp);
    if let Some(e) = entry {
        for s in e.sites {
            let addr = ctx.cell.server(s.server).map_or("?", |c| c.address.as_str());
            let role = if s.role == SiteRole::ReadWrite { "RW" } else { "RO" };
            println!("    site      server {} ({addr}) {role}", s.server);
        }
    }
    Ok(())
}
