//! The `vice` command: thin argument parsing over the library.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The vice file server of an AFS-style cell.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new cell on this server: keys, the location database, root.afs and root.cell,
    /// DIR/cell.toml for clients and DIR/admin.cred for `vos`.
    Init {
        /// The cell's name, like a DNS domain (example.org).
        #[arg(long, required_unless_present = "join", conflicts_with = "join")]
        cell: Option<String>,
        /// Join the existing cell of this cell file instead (needs the admin credential).
        #[arg(long)]
        join: Option<PathBuf>,
        /// The admin credential, for --join.
        #[arg(long, env = "AFS_ADMIN_CRED")]
        admin_cred: Option<PathBuf>,
        /// Directory for the server's data (created if missing).
        #[arg(long)]
        data: PathBuf,
        /// Address to serve on, written into the cell file.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: String,
        /// The first administrator: a user in system:administrators whose password is written
        /// to DIR/admin.password.
        #[arg(long, default_value = "admin")]
        admin_user: String,
        /// Keep the cell database (locations, users, servers, locks) on etcd instead of in
        /// this server's data directory: etcd://HOST:PORT[,HOST:PORT...]. With --join, the
        /// server joins through etcd (no other server needs to be up, no admin credential).
        #[arg(long, value_name = "URL")]
        cell_db: Option<String>,
    },
    /// Move a stopped server's cell database to etcd: on the database server it copies the
    /// embedded database (checked key by key); on the others it switches them to it.
    MigrateCellDb {
        #[arg(long)]
        data: PathBuf,
        /// etcd://HOST:PORT[,HOST:PORT...]
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Serve the data directory in the foreground until SIGTERM or SIGINT.
    Serve {
        #[arg(long)]
        data: PathBuf,
        /// Serve on this address instead of the one in server.toml.
        #[arg(long)]
        listen: Option<String>,
        /// Answer Prometheus scrapes (`GET /metrics`, OpenMetrics text) on this TCP address,
        /// e.g. 127.0.0.1:9100. Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// How long a client's write-back permit lasts unrenewed, in seconds (0: grant none).
        /// A recalled permit that is not returned is taken back after this long, so it is
        /// also the longest another client waits for a partitioned holder. Default: the
        /// server.toml setting `permit_lease_secs`, else 15.
        #[arg(long, value_name = "SECS")]
        permit_lease: Option<u32>,
    },
}

fn main() -> std::process::ExitCode {
    proto::logging::init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { cell: None, join: Some(cell_file), data, listen, cell_db: Some(db), .. } => {
            let done = vice::init::join_cell_db(&cell_file, &data, &listen, &db)?;
            println!(
                "Joined the cell of {} through its cell database {db}, in {}",
                cell_file.display(),
                data.display()
            );
            println!("  cell file with every server: {}", done.cell_file.display());
            println!("Start the server with: vice serve --data {}", data.display());
            Ok(())
        }
        Command::Init { cell: None, join: Some(cell_file), admin_cred, data, listen, .. } => {
            let cred = admin_cred.ok_or_else(|| anyhow::anyhow!("--join needs --admin-cred (or AFS_ADMIN_CRED)"))?;
            let rt = tokio::runtime::Runtime::new()?;
            let done = rt.block_on(vice::init::join_cell(&cell_file, &data, &listen, &cred))?;
            println!("Joined the cell of {} as a new server in {}", cell_file.display(), data.display());
            println!("  cell file with every server: {}", done.cell_file.display());
            println!("Start the server with: vice serve --data {}", data.display());
            Ok(())
        }
        Command::Init { cell, data, listen, admin_user, cell_db, .. } => {
            let cell = cell.ok_or_else(|| anyhow::anyhow!("give --cell NAME for a new cell, or --join CELLFILE"))?;
            let done = vice::init::init_cell(&cell, &data, &listen, &admin_user, cell_db.as_deref())?;
            println!("Created cell {cell} in {}", data.display());
            println!("  cell file for clients: {}", done.cell_file.display());
            println!("  admin credential:      {} (keep it private)", done.admin_cred.display());
            println!(
                "  administrator:         {} (password in {}; `venus login {}`)",
                done.admin_user,
                done.admin_password.display(),
                done.admin_user
            );
            println!("Start the server with: vice serve --data {}", data.display());
            Ok(())
        }
        Command::MigrateCellDb { data, to } => {
            let copied = vice::init::migrate_cell_db(&data, &to)?;
            println!("This server's cell database is now {to} ({copied} keys copied)");
            println!("Start the server again with: vice serve --data {}", data.display());
            Ok(())
        }
        Command::Serve { data, listen, metrics, permit_lease } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                let signals = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    signals.cancel();
                });
                let options = vice::server::Options { listen, metrics, permit_lease };
                vice::server::run(&data, options, shutdown).await
            })
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the server still stops when killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
