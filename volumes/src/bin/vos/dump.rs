//! `vos dump NAME [--since TIME] --file F`

use std::io::Write;

use anyhow::{Context as _, Result, bail};
use proto::cell::CellServer;
use proto::{Request, Response};

use volumes::admin::{Context, unexpected};

#[derive(clap::Args)]
pub struct Args {
    /// The volume (`NAME` or `NAME.backup`).
    name: String,
    /// Only what changed since TIME (seconds since 1970, or a UTC time like
    /// 2026-11-22T07:30:00Z, such as a previous dump printed): an incremental dump.
    #[arg(long, value_parser = proto::units::parse_time)]
    since: Option<proto::Timestamp>,
    /// Where to write the dump (written to F.partial, renamed when complete).
    #[arg(long)]
    file: std::path::PathBuf,
    /// Dump the copy this server holds (address or id): one member of a replicated volume's
    /// group, to compare with the others by the digest printed.
    #[arg(long)]
    server: Option<String>,
}

/// Dumps `name` from `server` (the database server when `None`) into `path`, synced;
/// `progress` hears every piece's size. Returns the dump's header and the volume stamp.
pub async fn dump_to_file(
    ctx: &Context,
    server: &CellServer,
    name: &str,
    since: Option<proto::Timestamp>,
    path: &std::path::Path,
    mut progress: impl FnMut(u64),
) -> Result<(volumes::dump::DumpHeader, proto::VolumeStamp)> {
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let mut head = Vec::new();
    let session = ctx.connect(server).await?;
    let req = Request::DumpVolume { name: name.to_string(), since };
    let resp = session
        .download(&req, |bytes| {
            if head.len() < 4096 {
                head.extend_from_slice(&bytes[..bytes.len().min(4096 - head.len())]);
            }
            progress(bytes.len() as u64);
            out.write_all(bytes)
        })
        .await
        .with_context(|| format!("dumping {name}"))?;
    session.close();
    let Response::Dumping { stamp } = resp else { return Err(unexpected(resp)) };
    out.flush()?;
    out.get_ref().sync_all()?;
    // Its header says when it was taken (by the server's clock).
    let Some(header) = volumes::dump::header_of(&head) else { bail!("the server sent no dump header") };
    Ok((header, stamp))
}

pub async fn run(ctx: &Context, a: Args) -> Result<()> {
    let partial = a.file.with_extension("partial");
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} dumping {msg}: {bytes} ({bytes_per_sec})")?);
    bar.set_message(a.name.clone());
    let site = match &a.server {
        Some(s) => ctx.resolve(Some(s)).await?,
        None => ctx.site_of(&a.name).await?,
    };
    let (h, stamp) = dump_to_file(ctx, &site, &a.name, a.since, &partial, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    // The dump must be whole before it takes the name.
    let len = std::fs::metadata(&partial)?.len();
    let mut check = std::fs::File::open(&partial)?;
    volumes::dump::verify(&mut check).with_context(|| format!("the dump of {} arrived damaged or cut", a.name))?;
    std::fs::rename(&partial, &a.file)?;
    println!(
        "Dumped {} ({}, stamp {stamp}) to {}: {}",
        a.name,
        if h.since.is_some() { "incremental" } else { "full" },
        a.file.display(),
        proto::units::show(len)
    );
    if h.since.is_none() {
        let digest = volumes::dump::contents_digest(&mut std::io::BufReader::new(std::fs::File::open(&a.file)?))?;
        println!("Contents digest {digest}");
    }
    // Last, as scripts read it: the time to pass to the next incremental dump.
    let at = format!("{}.{:09}", h.dumped_at.secs, h.dumped_at.nanos);
    println!("Taken at {at}: pass --since {at} for the next incremental dump");
    Ok(())
}
