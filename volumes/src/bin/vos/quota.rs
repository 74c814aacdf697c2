//! `vos setquota NAME SIZE` and `vos listquota NAME [--json]`

use anyhow::Result;
use proto::units::show;
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct SetArgs {
    name: String,
    /// Maximum bytes of file data, e.g. 500M or 10G; 0 for none.
    #[arg(value_parser = proto::units::parse)]
    quota: u64,
}

#[derive(clap::Args)]
pub struct ListArgs {
    name: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn set(ctx: &Context, a: SetArgs) -> Result<()> {
    match ctx.call_at(&ctx.site_of(&a.name).await?, Request::SetQuota { name: a.name, quota: a.quota }).await? {
        Response::Volume { info, .. } => {
            let quota = if info.quota == 0 { "none".to_string() } else { show(info.quota) };
            println!("Quota of {} is now {quota} ({} used)", info.name, show(info.used));
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

pub async fn list(ctx: &Context, a: ListArgs) -> Result<()> {
    let info = match ctx.call_at(&ctx.site_of(&a.name).await?, Request::ExamineVolume { name: a.name }).await? {
        Response::Volume { info, .. } => info,
        other => return Err(unexpected(other)),
    };
    if a.json {
        let v = serde_json::json!({ "name": info.name, "quota": info.quota, "used": info.used, "files": info.files });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<24} {:>12} {:>12} {:>6}", "Volume", "Quota", "Used", "%Used");
    let (quota, pct) = match info.quota {
        0 => ("none".to_string(), "-".to_string()),
        q => (show(q), format!("{}%", info.used.saturating_mul(100) / q)),
    };
    println!("{:<24} {:>12} {:>12} {:>6}", info.name, quota, show(info.used), pct);
    Ok(())
}
