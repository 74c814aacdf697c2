//! The `venus` command: mount the namespace, and talk to a running venus through its control
//! socket. Thin: argument parsing and printing over library calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use proto::cell::CellFile;
use venus::control::{self, ControlRequest};
use venus::fs::Config;
use venus::mount::{self, MountOptions};

/// The venus client cache manager of an AFS-style file system.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The cache directory of the venus to talk to (default: found from PATH, else $VENUS_CACHE,
    /// else the system cache directory).
    #[arg(long, env = "VENUS_CACHE", global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the namespace: MOUNTPOINT lists the cells, MOUNTPOINT/<cell> is the cell's root.cell.
    Mount {
        /// A cell file (from `vice init`); repeat for several cells. Default: $AFS_CELL_FILE.
        #[arg(long = "cell-file")]
        cell_files: Vec<PathBuf>,
        /// Bytes of file contents to keep cached, e.g. 500M or 10G.
        #[arg(long, default_value = "4G", value_parser = proto::units::parse)]
        cache_size: u64,
        /// Seconds a server may stay silent (no answer, not even to the connection's
        /// keep-alives) before venus works from the cache instead: no process waits longer on a
        /// dead server. A live server on a slow link is waited for as long as data moves.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// Detach and run in the background once mounted (logs go to CACHE/venus.log).
        #[arg(long)]
        background: bool,
        /// The directory of hoard profiles (`*.hoard`), watched for edits
        /// (default: ~/.config/venus/hoard).
        #[arg(long, env = "VENUS_HOARD_DIR")]
        hoard_dir: Option<PathBuf>,
        /// Minutes between periodic hoard walks while connected.
        #[arg(long, default_value_t = 10)]
        hoard_interval: u64,
        /// Files at least this large that are not cached open at once and are read while they
        /// arrive (reads past what has arrived wait for it); smaller files are fetched whole
        /// before open returns. 0 fetches every file whole first.
        #[arg(long, default_value = "64M", value_parser = proto::units::parse)]
        stream_threshold: u64,
        /// Write-back: where venus holds a volume's permit (no other client is using the
        /// volume), changes return once they are in the local log and go to the server in
        /// batches within this many milliseconds. 0 turns write-back off: every change waits
        /// for the server.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        write_back_window: u64,
        /// Answer Prometheus scrapes (`GET /metrics`, OpenMetrics text) on this TCP address,
        /// e.g. 127.0.0.1:9101. Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        mountpoint: PathBuf,
    },
    /// Unmount a venus mount and stop its venus.
    Unmount { mountpoint: PathBuf },
    /// Cells, servers, cache use, counters and pending changes.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Print the metrics of `venus mount --metrics` (OpenMetrics text), e.g. for
        /// node_exporter's textfile collector.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
    },
    /// Drop the cached copy of PATH; the next use fetches it again.
    Flush { path: PathBuf },
    /// The cell, volume and servers of PATH.
    Whereis { path: PathBuf },
    /// The file identifier of PATH.
    Fid { path: PathBuf },
    /// Create a mount point PATH for VOLUME (`volume` or `cell:volume`).
    Mkmount {
        path: PathBuf,
        volume: String,
        /// Always lead to the read-write volume, even through a read-only path.
        #[arg(long)]
        rw: bool,
    },
    /// Show the volume the mount point PATH names.
    Lsmount { path: PathBuf },
    /// Remove the mount point PATH.
    Rmmount { path: PathBuf },
    /// Work from the cache only (all cells, or one volume) until `venus reconnect`.
    Disconnect {
        /// Only this volume: `volume`, `cell:volume`, or a volume id.
        #[arg(long)]
        volume: Option<String>,
    },
    /// Undo `venus disconnect` and reintegrate what was changed meanwhile.
    Reconnect,
    /// Wait until every change is on a server; fails saying why if it cannot be.
    Sync {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// List conflicts found at reintegration.
    Conflicts {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict: keep the local version, the server's, or both.
    Repair {
        /// The file's path, or its `.conflict-…` copy.
        path: PathBuf,
        #[arg(long, value_parser = ["local", "server", "both"])]
        keep: String,
    },
    /// Get a token for USER (default: your login name) from a cell; the password is read from
    /// --password-file, from the terminal, or from standard input.
    Login {
        user: Option<String>,
        /// The cell (default: the first cell venus knows).
        #[arg(long)]
        cell: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Seconds the token should last (default: the cell's, 25 hours).
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
    },
    /// Your tokens.
    Tokens {
        #[arg(long)]
        json: bool,
    },
    /// Forget your tokens (all cells, or one).
    Logout {
        #[arg(long)]
        cell: Option<String>,
    },
    /// Set WHO's rights in the directory PATH: letters of "rlidwka", or all, read, write, none.
    Setacl {
        path: PathBuf,
        who: String,
        rights: String,
        /// A negative entry: takes the rights away, whatever else grants them.
        #[arg(long)]
        negative: bool,
    },
    /// The ACL of the directory PATH (of its directory, for a file).
    Listacl {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    // Like other Unix tools: writing into a closed pipe (`| head`) ends the program quietly.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    proto::logging::init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("venus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn default_cache() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/venus");
    }
    match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) => PathBuf::from(x).join("venus"),
        (None, Some(h)) => PathBuf::from(h).join(".cache/venus"),
        (None, None) => PathBuf::from("/tmp/venus-cache"),
    }
}

fn default_hoard_dir() -> PathBuf {
    match (std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) => PathBuf::from(x).join("venus/hoard"),
        (None, Some(h)) => PathBuf::from(h).join(".config/venus/hoard"),
        (None, None) => PathBuf::from("/etc/venus/hoard"),
    }
}

/// An absolute path whose last component is not followed (so a mount point is named, not
/// crossed, and a path that does not exist yet can be named).
fn absolute(path: &Path) -> Result<PathBuf> {
    let path = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    let name = path.file_name().ok_or_else(|| anyhow!("{} has no final component", path.display()))?;
    let parent = path.parent().ok_or_else(|| anyhow!("{} has no parent", path.display()))?;
    let parent = std::fs::canonicalize(parent).with_context(|| format!("{}", parent.display()))?;
    Ok(parent.join(name))
}

/// The venus to talk to for PATH: the mount holding it, else --cache, else the only venus
/// mounted on this machine, else the default cache directory.
fn cache_for(cli_cache: &Option<PathBuf>, path: Option<&Path>) -> PathBuf {
    if let Some(p) = path
        && let Some(m) = venus::mounts::mount_of(p)
    {
        return m.cache;
    }
    if let Some(c) = cli_cache {
        return c.clone();
    }
    match venus::mounts::venus_mounts().as_slice() {
        [only] => only.cache.clone(),
        _ => default_cache(),
    }
}

/// The login name of the user running this command.
fn login_name() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).or_else(|| std::env::var("LOGNAME").ok())
}

/// A password from a file (first line), the terminal (not echoed), or standard input.
fn read_password(file: Option<&Path>, user: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("Password for {user}: ");
        std::io::stderr().flush()?;
        // SAFETY: termios calls on standard input with a zeroed struct filled in by tcgetattr.
        let mut term: libc::termios = unsafe { std::mem::zeroed() };
        let got = unsafe { libc::tcgetattr(0, &mut term) } == 0;
        if got {
            let mut quiet = term;
            quiet.c_lflag &= !libc::ECHO;
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
        }
        let read = stdin.lock().read_line(&mut line);
        if got {
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &term) };
        }
        eprintln!();
        read?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn ask(cache: &Path, req: &ControlRequest) -> Result<serde_json::Value> {
    control::request(cache, req).map_err(|e| anyhow!(e))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mount {
            cell_files,
            cache_size,
            timeout,
            background,
            hoard_dir,
            hoard_interval,
            stream_threshold,
            write_back_window,
            metrics,
            mountpoint,
        } => {
            let mut files = cell_files;
            if files.is_empty() {
                files.extend(std::env::var_os("AFS_CELL_FILE").map(PathBuf::from));
            }
            if files.is_empty() {
                bail!("no cell file: pass --cell-file FILE (from `vice init`) or set AFS_CELL_FILE");
            }
            let cells = files.iter().map(|f| CellFile::load(f)).collect::<Result<Vec<_>, _>>()?;
            let cache_dir = cli.cache.unwrap_or_else(default_cache);
            std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
            let cache_dir = std::fs::canonicalize(&cache_dir)?;
            if background && std::env::var_os("VENUS_DETACHED").is_none() {
                return detach(&cache_dir, &mountpoint);
            }
            let hoard_dir = hoard_dir.unwrap_or_else(default_hoard_dir);
            let config = Config {
                cache_dir,
                cache_size,
                cells,
                rpc_timeout: Duration::from_secs(timeout),
                mountpoint: mountpoint.clone(),
                hoard_dir,
                stream_from: stream_threshold,
                write_back: (write_back_window > 0).then(|| Duration::from_millis(write_back_window)),
            };
            let hoard_interval = Duration::from_secs(hoard_interval * 60);
            mount::run(MountOptions { config, mountpoint, hoard_interval, metrics })
        }
        Command::Unmount { mountpoint } => {
            let mp = std::fs::canonicalize(&mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
            let m = venus::mounts::venus_mounts()
                .into_iter()
                .find(|m| m.mountpoint == mp)
                .ok_or_else(|| anyhow!("{} is not a venus mount", mp.display()))?;
            ask(&m.cache, &ControlRequest::Unmount)?;
            // Wait until it is gone, so scripts can rely on it.
            for _ in 0..200 {
                if !venus::mounts::venus_mounts().iter().any(|x| x.mountpoint == mp) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            bail!("{} is still mounted after 10 s (files open?)", mp.display())
        }
        Command::Status { json, prometheus } => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let v = ask(&cache, &ControlRequest::Status)?;
            if prometheus {
                let status: venus::fs::status::Status = serde_json::from_value(v).context("the status venus sent")?;
                print!("{}", venus::metrics::render(&status));
            } else if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Command::Flush { path } => {
            let path = absolute(&path)?;
            let v = ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::Flush { path })?;
            println!("{}", if v["dropped"].as_bool() == Some(true) { "flushed" } else { "nothing cached to flush" });
            Ok(())
        }
        Command::Whereis { path } => {
            let path = absolute(&path)?;
            let v = ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::Whereis { path: path.clone() })?;
            let servers: Vec<&str> =
                v["servers"].as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default();
            println!(
                "{} is in volume {} of cell {} on {}",
                path.display(),
                v["volume"],
                v["cell"].as_str().unwrap_or("?"),
                servers.join(", ")
            );
            Ok(())
        }
        Command::Fid { path } => {
            let path = absolute(&path)?;
            let v = ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::Fid { path: path.clone() })?;
            println!(
                "{} is fid {} in cell {}",
                path.display(),
                v["fid"].as_str().unwrap_or("?"),
                v["cell"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        Command::Mkmount { path, volume, rw } => {
            let path = absolute(&path)?;
            ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::Mkmount { path, volume, rw })?;
            Ok(())
        }
        Command::Lsmount { path } => {
            let path = absolute(&path)?;
            let v = ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::Lsmount { path: path.clone() })?;
            println!("'{}' is a mount point for volume '{}'", path.display(), v["target"].as_str().unwrap_or("?"));
            Ok(())
        }
        Command::Rmmount { path } => {
            let path = absolute(&path)?;
            ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::Rmmount { path })?;
            Ok(())
        }
        Command::Disconnect { volume } => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let v = ask(&cache, &ControlRequest::Disconnect { volume })?;
            let names: Vec<&str> = v.as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
            println!("disconnected: {}", names.join(", "));
            Ok(())
        }
        Command::Reconnect => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            ask(&cache, &ControlRequest::Reconnect)?;
            println!("reconnecting; `venus sync` waits until everything is on the servers");
            Ok(())
        }
        Command::Sync { timeout } => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
            let mut shown = None;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now()).as_secs();
                let step = ask(&cache, &ControlRequest::Sync { timeout_secs: left.clamp(1, 2) })?;
                let p: venus::fs::modes::SyncProgress = serde_json::from_value(step)?;
                if p.done {
                    println!("everything is on the servers");
                    return Ok(());
                }
                // Progress on stderr, once per change of it: scripts read stdout and the status.
                if shown != Some((p.records, p.sent)) {
                    eprintln!(
                        "syncing: {} changes ({}) still to send; {} sent",
                        p.records,
                        proto::units::show(p.bytes),
                        proto::units::show(p.sent)
                    );
                    shown = Some((p.records, p.sent));
                }
                if std::time::Instant::now() >= deadline {
                    bail!("timed out after {timeout} s with {} changes still to send", p.records);
                }
            }
        }
        Command::Conflicts { json } => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let v = ask(&cache, &ControlRequest::Conflicts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            for c in &list {
                println!(
                    "{} in {} volume {}: {} — {}{}",
                    c["name"].as_str().unwrap_or("?"),
                    c["cell"].as_str().unwrap_or("?"),
                    c["volume"],
                    c["kind"].as_str().unwrap_or("?"),
                    c["detail"].as_str().unwrap_or(""),
                    c["copy_name"]
                        .as_str()
                        .map(|n| format!("; local version kept as {n}"))
                        .or_else(|| c["local_copy"].as_str().map(|p| format!("; local version kept in {p}")))
                        .unwrap_or_default()
                );
            }
            println!("{} conflicts", list.len());
            Ok(())
        }
        Command::Repair { path, keep } => {
            let path = absolute(&path)?;
            ask(
                &cache_for(&cli.cache, Some(&path)),
                &ControlRequest::Repair { path: path.clone(), keep: keep.clone() },
            )?;
            println!("repaired {} (kept {keep})", path.display());
            Ok(())
        }
        Command::Login { user, cell, password_file, lifetime } => {
            let user = user.or_else(login_name).ok_or_else(|| anyhow!("name the user: venus login USER"))?;
            let password = read_password(password_file.as_deref(), &user)?;
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let v = ask(&cache, &ControlRequest::Login { cell, user, password, lifetime })?;
            println!(
                "logged in to {} as {} (id {}), token expires {}",
                v["cell"].as_str().unwrap_or("?"),
                v["user"].as_str().unwrap_or("?"),
                v["id"],
                show_time(v["expires"].as_i64().unwrap_or(0))
            );
            Ok(())
        }
        Command::Tokens { json } => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let v = ask(&cache, &ControlRequest::Tokens)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            for t in &list {
                println!(
                    "{}: {} (id {}), expires {}",
                    t["cell"].as_str().unwrap_or("?"),
                    t["user"].as_str().unwrap_or("?"),
                    t["id"],
                    show_time(t["expires"].as_i64().unwrap_or(0))
                );
            }
            if list.is_empty() {
                println!("no tokens: you are anonymous (system:anyuser)");
            }
            Ok(())
        }
        Command::Logout { cell } => {
            let cache = cache_for(&cli.cache, std::env::current_dir().ok().as_deref());
            let v = ask(&cache, &ControlRequest::Logout { cell })?;
            println!("{} tokens discarded", v["removed"]);
            Ok(())
        }
        Command::Setacl { path, who, rights, negative } => {
            let path = absolute(&path)?;
            let req = ControlRequest::SetAcl { path: path.clone(), who, rights, negative };
            let v = ask(&cache_for(&cli.cache, Some(&path)), &req)?;
            print_acl(&path, &v);
            Ok(())
        }
        Command::Listacl { path, json } => {
            let path = absolute(&path)?;
            let v = ask(&cache_for(&cli.cache, Some(&path)), &ControlRequest::ListAcl { path: path.clone() })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_acl(&path, &v);
            }
            Ok(())
        }
    }
}

/// An ACL in the layout of AFS's `fs listacl`.
fn print_acl(path: &Path, v: &serde_json::Value) {
    println!("Access list for {} is", path.display());
    for (title, key) in [("Normal rights:", "positive"), ("Negative rights:", "negative")] {
        let entries = v[key].as_array().cloned().unwrap_or_default();
        if entries.is_empty() && key == "negative" {
            continue;
        }
        println!("{title}");
        for e in entries {
            println!("  {} {}", e["who"].as_str().unwrap_or("?"), e["rights"].as_str().unwrap_or(""));
        }
    }
    println!("Your rights: {}", v["yours"].as_str().filter(|s| !s.is_empty()).unwrap_or("none"));
}

/// Seconds since the epoch as a UTC date and time.
fn show_time(secs: i64) -> String {
    format!("{}Z", venus::fs::conflicts::compact_utc(proto::Timestamp { secs, nanos: 0 }))
}

/// `--background`: start a detached copy of this command and wait until its mount answers.
fn detach(cache: &Path, mountpoint: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(cache.join("venus.log"))?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env("VENUS_DETACHED", "1")
        // Readiness in the background is this process exiting once mounted (a forking service),
        // so the detached venus must not also claim a service manager's notify socket.
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid() is async-signal-safe and only detaches the child from our session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting venus in the background")?;
    let mp = std::fs::canonicalize(mountpoint)?;
    for _ in 0..600 {
        if let Some(status) = child.try_wait()? {
            bail!("venus exited ({status}) before mounting; see {}", cache.join("venus.log").display());
        }
        if venus::mounts::venus_mounts().iter().any(|m| m.mountpoint == mp)
            && ask(cache, &ControlRequest::Status).is_ok()
        {
            println!(
                "venus mounted at {} (pid {}; log {})",
                mp.display(),
                child.id(),
                cache.join("venus.log").display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("venus did not mount within 30 s; see {}", cache.join("venus.log").display())
}

fn print_status(v: &serde_json::Value) {
    println!("venus at {} (client {})", v["mountpoint"].as_str().unwrap_or("?"), v["client"].as_str().unwrap_or("?"));
    for cell in v["cells"].as_array().into_iter().flatten() {
        println!("cell {}", cell["name"].as_str().unwrap_or("?"));
        for s in cell["servers"].as_array().into_iter().flatten() {
            let state = if s["connected"].as_bool() == Some(true) { "connected" } else { "not connected" };
            println!("  server {} {}: {state}", s["id"], s["address"].as_str().unwrap_or("?"));
        }
    }
    let c = &v["cache"];
    println!(
        "cache: {} of {} used, {} files cached ({} open), {} objects known, {} promises held",
        proto::units::show(c["used"].as_u64().unwrap_or(0)),
        proto::units::show(c["limit"].as_u64().unwrap_or(0)),
        c["files_cached"],
        c["files_open"].as_u64().unwrap_or(0),
        c["objects"],
        v["promises"]
    );
    let k = &v["counters"];
    println!(
        "fetched {} stored {}; cache hits {} misses {}; callback breaks {}",
        proto::units::show(k["bytes_fetched"].as_u64().unwrap_or(0)),
        proto::units::show(k["bytes_stored"].as_u64().unwrap_or(0)),
        k["cache_hits"],
        k["cache_misses"],
        k["callback_breaks"]
    );
    let rpcs: Vec<String> = k["rpcs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!("rpcs: {}", if rpcs.is_empty() { "none".to_string() } else { rpcs.join(", ") });
    println!("pending changes: {} records", v["pending_records"]);
    for vol in v["volumes"].as_array().into_iter().flatten() {
        let name = vol["name"].as_str().map_or_else(|| vol["volume"].to_string(), str::to_string);
        let mut line = format!(
            "  volume {name} of {}: {}",
            vol["cell"].as_str().unwrap_or("?"),
            vol["state"].as_str().unwrap_or("?")
        );
        if let Some(why) = vol["reason"].as_str() {
            line.push_str(&format!(" ({why})"));
        }
        let records = vol["pending_records"].as_u64().unwrap_or(0);
        if records > 0 {
            line.push_str(&format!(
                "; {records} changes pending ({})",
                proto::units::show(vol["pending_bytes"].as_u64().unwrap_or(0))
            ));
        }
        line.push_str(&drain_line(&vol["drain"], vol["drain_eta_secs"].as_f64(), records));
        println!("{line}");
    }
}

/// How fast a volume's log went to the server in the last minute, and how long the rest takes.
fn drain_line(drain: &serde_json::Value, eta: Option<f64>, pending: u64) -> String {
    let (Some(records), Some(bytes)) = (drain["records_per_sec"].as_f64(), drain["bytes_per_sec"].as_f64()) else {
        return String::new();
    };
    let mut out = format!("; sent {records:.0} changes/s");
    if bytes >= 1.0 {
        out.push_str(&format!(", {}/s", proto::units::show(bytes as u64)));
    }
    match eta {
        Some(secs) if pending > 0 => out.push_str(&format!(", about {secs:.0} s to go")),
        _ => out.push_str(&format!(" (last batch {:.0} s ago)", drain["last_sent_secs_ago"].as_f64().unwrap_or(0.0))),
    }
    out
}
