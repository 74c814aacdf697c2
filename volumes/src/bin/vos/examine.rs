//! `vos examine NAME [--json]`

use anyhow::Result;
use proto::msg::SiteRole;
use proto::{Request, Response};

use proto::units::show;
use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let located = ctx.locate_any(&a.name).await?;
    let replicated = crate::group::members(&located).len() > 1 && !a.name.ends_with(".readonly");
    let (site, statuses) = match replicated {
        true => (crate::group::leader(ctx, &located).await?, crate::group::statuses(ctx, &located).await),
        false => (located.site_for(&a.name)?, Vec::new()),
    };
    let info = match ctx.call_at(&site, Request::ExamineVolume { name: a.name }).await? {
        Response::Volume { info, .. } => info,
        other => return Err(unexpected(other)),
    };
    if a.json {
        let group: Vec<_> = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
        let v = serde_json::json!({ "volume": info, "vldb": located.entry, "group": group });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{} (id {}, {:?})", info.name, info.id, info.kind);
    println!("    used      {} in {} files, {} directories", show(info.used), info.files, info.directories);
    let quota = if info.quota == 0 { "none".to_string() } else { show(info.quota) };
    println!("    quota     {quota}");
    println!("    stamp     {}", info.stamp);
    let e = &located.entry;
    let ids = [("RW", Some(e.rw)), ("RO", e.ro), ("BK", e.backup)];
    let ids: Vec<String> = ids.iter().filter_map(|(k, v)| v.map(|v| format!("{k} {v}"))).collect();
    println!("    ids       {}", ids.join(", "));
    for s in &e.sites {
        let addr = located.server(s.server).map_or_else(|_| "?".to_string(), |c| c.address);
        let role = match s.role {
            SiteRole::ReadWrite => "RW",
            SiteRole::ReadOnly => "RO",
            SiteRole::NewReadOnly => "RO (not released)",
        };
        println!("    site      server {} ({addr}) {role}", s.server);
    }
    if replicated {
        crate::group::print(&statuses);
    }
    Ok(())
}
