//! `vos restore FILE NAME [--server S] [--overwrite]`

use std::io::Read;

use anyhow::{Context as _, Result};
use proto::{Request, Response};

use crate::session::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// A dump made by `vos dump`.
    file: std::path::PathBuf,
    /// The volume to restore into (made if missing).
    name: String,
    /// The server to hold a new volume (address or id); the cell's first server by default.
    #[arg(long)]
    server: Option<String>,
    /// Replace an existing volume's contents with a full dump.
    #[arg(long)]
    overwrite: bool,
}

/// Sends `req` followed by the whole of `file` to `server`; the server's answer.
pub async fn upload_file(
    ctx: &Context,
    server: Option<&str>,
    req: &Request,
    file: &mut std::fs::File,
    mut progress: impl FnMut(u64),
) -> Result<Response> {
    let session = ctx.connect(server).await?;
    let resp = session
        .upload(req, |buf| {
            let n = file.read(buf)?;
            progress(n as u64);
            Ok(n)
        })
        .await?;
    session.close();
    Ok(resp)
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let mut file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    // Check the whole dump here first: a damaged file is refused before anything is sent.
    volumes::dump::verify(&mut file).with_context(|| format!("{} is not a usable dump", a.file.display()))?;
    let mut file = std::fs::File::open(&a.file)?;
    let bar = indicatif::ProgressBar::new(file.metadata()?.len());
    bar.set_style(indicatif::ProgressStyle::with_template(
        "restoring {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    )?);
    bar.set_message(a.name.clone());
    let req = Request::RestoreVolume { name: a.name.clone(), overwrite: a.overwrite };
    let resp = upload_file(ctx, a.server.as_deref(), &req, &mut file, |n| bar.inc(n))
        .await
        .with_context(|| format!("restoring {}", a.name))?;
    bar.finish_and_clear();
    match resp {
        Response::Restored { info, objects, chunks, .. } => {
            println!(
                "Restored {} (id {}): {objects} objects, {chunks} chunks sent; {} in {} files",
                info.name,
                info.id,
                proto::units::show(info.used),
                info.files
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
