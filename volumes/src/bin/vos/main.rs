//! `vos`: volume administration for a cell. Thin: parse arguments, make one or two RPCs with the
//! admin credential, print the answer.

mod backup;
mod cellfile;
mod create;
mod dump;
mod examine;
mod group;
mod listaddrs;
mod listvldb;
mod listvol;
mod moving;
mod quota;
mod remove;
mod rename;
mod replicas;
mod restore;

use anyhow::Result;
use clap::{Parser, Subcommand};
use volumes::admin;

/// Administer the volumes of an AFS-style cell.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    cell: admin::CellArgs,
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
    /// Write a volume (or what changed since a time) to a file.
    Dump(dump::Args),
    /// Make or replace a volume from a dump file.
    Restore(restore::Args),
    /// Make NAME.backup, a read-only snapshot sharing the volume's chunks.
    Backup(backup::Args),
    /// Set a volume's quota.
    Setquota(quota::SetArgs),
    /// A volume's quota and use.
    Listquota(quota::ListArgs),
    /// Rename a volume.
    Rename(rename::Args),
    /// Move a volume to another server while it stays in use.
    Move(moving::Args),
    /// Add a read-only site for a volume (filled by the next release).
    Addsite(replicas::SiteArgs),
    /// Remove a read-only site and its replica.
    Remsite(replicas::SiteArgs),
    /// Copy the read-write volume to every read-only site (NAME.readonly).
    Release(replicas::ReleaseArgs),
    /// Add a member to a replicated volume's group (it catches up, then votes).
    Addreplica(group::MemberArgs),
    /// Remove a member from a replicated volume's group and drop its copy.
    Remreplica(group::MemberArgs),
    /// List the cell's servers and which are alive.
    Listaddrs(listaddrs::Args),
    /// Print the cell file with every server of the cell (for clients and admins).
    Cellfile(cellfile::Args),
}

fn main() -> std::process::ExitCode {
    admin::main_of("vos", run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<()> {
    let mut ctx = admin::Context::load(cli.cell.cell_file, cli.cell.admin_cred)?;
    ctx.lock_ttl = std::time::Duration::from_secs(cli.cell.lock_ttl);
    match cli.command {
        Command::Create(a) => create::run(&ctx, a).await,
        Command::Remove(a) => remove::run(&ctx, a).await,
        Command::Examine(a) => examine::run(&ctx, a).await,
        Command::Listvldb(a) => listvldb::run(&ctx, a).await,
        Command::Listvol(a) => listvol::run(&ctx, a).await,
        Command::Dump(a) => dump::run(&ctx, a).await,
        Command::Restore(a) => restore::run(&ctx, a).await,
        Command::Backup(a) => backup::run(&ctx, a).await,
        Command::Setquota(a) => quota::set(&ctx, a).await,
        Command::Listquota(a) => quota::list(&ctx, a).await,
        Command::Rename(a) => rename::run(&ctx, a).await,
        Command::Cellfile(a) => cellfile::run(&ctx, a).await,
        Command::Listaddrs(a) => listaddrs::run(&ctx, a).await,
        Command::Move(a) => moving::run(&ctx, a).await,
        Command::Addsite(a) => replicas::addsite(&ctx, a).await,
        Command::Remsite(a) => replicas::remsite(&ctx, a).await,
        Command::Release(a) => replicas::release(&ctx, a).await,
        Command::Addreplica(a) => group::add(&ctx, a).await,
        Command::Remreplica(a) => group::remove(&ctx, a).await,
    }
}
