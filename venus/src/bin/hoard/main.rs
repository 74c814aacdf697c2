//! The `hoard` command: say what must be cached before going offline, walk the hoard, and
//! check that it is complete. It talks to the running venus through its control socket.
//!
//! Exit status: 0 when done (for `verify`: the hoard is complete), 1 when `walk` or `verify`
//! found hoarded objects missing from the cache, 2 on any error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hoard::{DEFAULT_PRIORITY, Depth, HoardEntry, MAX_PRIORITY};
use venus::control::{self, ControlRequest};

/// Hoarding: what venus keeps cached for working offline.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The cache directory of the venus to talk to (default: found from the path, else
    /// $VENUS_CACHE).
    #[arg(long, env = "VENUS_CACHE", global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hoard PATH (replacing its entry if it has one).
    Add {
        path: PathBuf,
        /// 1 (lowest) to 1000 (highest).
        #[arg(long, default_value_t = DEFAULT_PRIORITY, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_PRIORITY)))]
        priority: u16,
        /// Also its children.
        #[arg(long, conflicts_with = "descendants")]
        children: bool,
        /// Also everything below it.
        #[arg(long)]
        descendants: bool,
        /// Also children/descendants created later (by anyone).
        #[arg(long)]
        future: bool,
    },
    /// Stop hoarding PATH (an entry added with `hoard add` or `hoard load`).
    Rm { path: PathBuf },
    /// The entries in force, from profiles and from this command.
    List,
    /// Apply a profile file's commands (`a PATH [PRIO][:c|:c+|:d|:d+]`, `d PATH`, `c`, `#`).
    Load { file: PathBuf },
    /// Fetch everything the hoard covers that is missing or stale, with a progress bar.
    Walk,
    /// Report what the hoard covers that is not in the cache, and why.
    Verify {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match run(Cli::parse()) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("hoard: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// An absolute, normalised path without following its last component.
fn absolute(path: &Path) -> Result<PathBuf, String> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

fn cache_for(cli: &Option<PathBuf>, path: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = path
        && let Some(m) = venus::mounts::mount_of(p)
    {
        return Ok(m.cache);
    }
    if let Some(c) = cli {
        return Ok(c.clone());
    }
    let cwd = std::env::current_dir().ok();
    if let Some(m) = cwd.as_deref().and_then(venus::mounts::mount_of) {
        return Ok(m.cache);
    }
    match venus::mounts::venus_mounts().as_slice() {
        [only] => Ok(only.cache.clone()),
        [] => Err("no venus is mounted here (pass --cache or set VENUS_CACHE)".into()),
        _ => Err("several venus mounts: pass --cache or give a path inside one".into()),
    }
}

fn print_report(v: &serde_json::Value) -> u8 {
    let missing = v["missing"].as_array().cloned().unwrap_or_default();
    for m in &missing {
        println!("  missing {}: {}", m[0].as_str().unwrap_or("?"), m[1].as_str().unwrap_or("?"));
    }
    println!(
        "{} entries cover {} objects; {} missing{}",
        v["entries"],
        v["objects"],
        missing.len(),
        if v["truncated"].as_bool() == Some(true) { " (the walk was cut at its size bound)" } else { "" }
    );
    u8::from(!missing.is_empty())
}

fn run(cli: Cli) -> Result<u8, String> {
    match cli.command {
        Command::Add { path, priority, children, descendants, future } => {
            let path = absolute(&path)?;
            let depth = match (children, descendants) {
                (true, _) => Depth::Children,
                (_, true) => Depth::Descendants,
                _ => Depth::Entry,
            };
            if future && depth == Depth::Entry {
                return Err("--future goes with --children or --descendants".into());
            }
            let text = path.to_str().ok_or("the path is not UTF-8")?;
            let entry = HoardEntry::new(text, priority, depth, future).map_err(|e| e.to_string())?;
            control::request(&cache_for(&cli.cache, Some(&path))?, &ControlRequest::HoardAdd { entry })?;
            Ok(0)
        }
        Command::Rm { path } => {
            let path = absolute(&path)?;
            let text = path.to_str().ok_or("the path is not UTF-8")?.to_string();
            control::request(&cache_for(&cli.cache, Some(&path))?, &ControlRequest::HoardRm { path: text })?;
            Ok(0)
        }
        Command::List => {
            let v = control::request(&cache_for(&cli.cache, None)?, &ControlRequest::HoardList)?;
            for e in v["entries"].as_array().into_iter().flatten() {
                println!("{}    # {}", e["line"].as_str().unwrap_or("?"), e["from"].as_str().unwrap_or("?"));
            }
            println!("# profiles: {}/*.hoard", v["profile_dir"].as_str().unwrap_or("?"));
            if let Some(err) = v["profile_error"].as_str() {
                println!("# profile NOT loaded (the previous hoard stays): {err}");
                return Ok(1);
            }
            Ok(0)
        }
        Command::Load { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let label = file.display().to_string();
            let v = control::request(&cache_for(&cli.cache, None)?, &ControlRequest::HoardLoad { text, label })?;
            println!("loaded {} commands from {}", v["commands"], file.display());
            Ok(0)
        }
        Command::Walk => {
            let cache = cache_for(&cli.cache, None)?;
            // Wait for a walk that started after this request, not one already under way.
            let request = control::request(&cache, &ControlRequest::HoardWalk)?["request"].as_u64().unwrap_or(0);
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} hoard walk [{bar:30}] {pos}/{len} objects, {msg}")
                    .map_err(|e| e.to_string())?
                    .progress_chars("=> "),
            );
            loop {
                let p = control::request(&cache, &ControlRequest::HoardProgress)?;
                bar.set_length(p["total"].as_u64().unwrap_or(0));
                bar.set_position(p["done"].as_u64().unwrap_or(0));
                bar.set_message(format!("{} fetched", proto::units::show(p["bytes"].as_u64().unwrap_or(0))));
                if p["completed"].as_u64().unwrap_or(0) >= request {
                    bar.finish_and_clear();
                    let last = &p["last"];
                    println!(
                        "hoard walk: {} files ({}) fetched in {:.1} s",
                        last["fetched_files"],
                        proto::units::show(last["fetched_bytes"].as_u64().unwrap_or(0)),
                        last["seconds"].as_f64().unwrap_or(0.0)
                    );
                    return Ok(print_report(last));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Command::Verify { json } => {
            let v = control::request(&cache_for(&cli.cache, None)?, &ControlRequest::HoardVerify)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
                return Ok(u8::from(v["missing"].as_array().is_some_and(|m| !m.is_empty())));
            }
            Ok(print_report(&v))
        }
    }
}
