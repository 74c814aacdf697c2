//! `vos listvldb [--json]`

use anyhow::Result;
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let entries = match ctx.call(None, Request::ListVldb).await? {
        Response::Vldb { entries } => entries,
        other => return Err(unexpected(other)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for e in &entries {
        let sites: Vec<String> = e.sites.iter().map(|s| format!("{}:{:?}", s.server, s.role)).collect();
        println!("{:<32} rw {:<8} sites {}", e.name, e.rw.to_string(), sites.join(" "));
    }
    println!("{} volumes", entries.len());
    Ok(())
}
