//! `vos listvol SERVER [--json]`

use anyhow::Result;
use proto::{Request, Response};

use proto::units::show;
use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// The server: its address or id in the cell file.
    server: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let volumes = match ctx.call(Some(&a.server), Request::ListVolumes).await? {
        Response::Volumes { volumes } => volumes,
        other => return Err(unexpected(other)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&volumes)?);
        return Ok(());
    }
    for v in &volumes {
        println!("{:<32} {:>10} {:?} {:>12} {:>8} files", v.name, v.id.to_string(), v.kind, show(v.used), v.files);
    }
    println!("{} volumes on {}", volumes.len(), a.server);
    Ok(())
}
