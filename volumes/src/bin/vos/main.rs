//! `vos`: volume administration for a cell. Thin: parse arguments, make one or two RPCs with the
//! admin credential, print the answer.

mod create;
mod examine;
mod listvldb;
mod listvol;
mod remove;
mod session;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Administer the volumes of an AFS-style cell.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The cell file (from `vice init`).
    #[arg(long, env = "AFS_CELL_FILE", global = true)]
    cell_file: Option<PathBuf>,
    /// The admin credential (from `vice init`).
    #[arg(long, env = "AFS_ADMIN_CRED", global = true)]
    admin_cred: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a read-write volume.
    Create(create::Args),
    /// Remove a volume and everything in it.
    Remove(remove::Args),
    /// Show a volume: size, files, quota, version stamp, sites.
    Examine(examine::Args),
    /// List the volume location database.
    Listvldb(listvldb::Args),
    /// List the volumes one server holds.
    Listvol(listvol::Args),
}

fn main() -> std::process::ExitCode {
    // Like other Unix tools: writing into a closed pipe (`| head`) ends the program quietly.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vos: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = session::Context::load(cli.cell_file, cli.admin_cred)?;
    match cli.command {
        Command::Create(a) => create::run(&ctx, a).await,
        Command::Remove(a) => remove::run(&ctx, a).await,
        Command::Examine(a) => examine::run(&ctx, a).await,
        Command::Listvldb(a) => listvldb::run(&ctx, a).await,
        Command::Listvol(a) => listvol::run(&ctx, a).await,
    }
}
