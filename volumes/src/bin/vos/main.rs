//! `vos`: volume administration for a cell. Thin: parse arguments, make one or two RPCs with the
//! admin credential, print the answer.

mod create;
mod examine;
mod listvldb;
mod listvol;
mod remove;
mod session;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Administer the volumes of an AFS-style cell.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    cell: session::CellArgs,
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
    session::main_of("vos", run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = session::Context::load(cli.cell.cell_file, cli.cell.admin_cred)?;
    match cli.command {
        Command::Create(a) => create::run(&ctx, a).await,
        Command::Remove(a) => remove::run(&ctx, a).await,
        Command::Examine(a) => examine::run(&ctx, a).await,
        Command::Listvldb(a) => listvldb::run(&ctx, a).await,
        Command::Listvol(a) => listvol::run(&ctx, a).await,
    }
}
