//! `vos listaddrs [--json]`: the cell's servers and which of them are alive (their lease in
//! the cell database is being kept).

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
    let (servers, cell_db) = match ctx.call(None, Request::ListServerStatus).await? {
        Response::ServerStatus { servers, cell_db } => (servers, cell_db),
        other => return Err(unexpected(other)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&servers)?);
        return Ok(());
    }
    let now = proto::auth::unix_now();
    for s in &servers {
        let state = match s.alive {
            true => format!("alive, up {}", show_age(now - s.since)),
            false => "down (its lease ran out)".to_string(),
        };
        println!("server {:<4} {:<24} {state}", s.info.id.0, s.info.address);
    }
    let alive = servers.iter().filter(|s| s.alive).count();
    println!("{alive} of {} servers alive; cell database: {cell_db}", servers.len());
    Ok(())
}

fn show_age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
