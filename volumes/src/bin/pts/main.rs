//! `pts`: the cell's protection database: users, groups, memberships and passwords. Changes
//! need the admin credential (or an administrator's connection); looking needs nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use proto::msg::{PtsEntry, Request, Response};
use volumes::admin;

/// Manage the users and groups of an AFS-style cell.
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
    /// Create a user. The password comes from --password-file or the first line of stdin.
    Createuser {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The user's id (match the site's Unix uid, so files show the same owner on every
        /// machine); the next free one if left out. Ids are never reused.
        #[arg(long)]
        id: Option<i32>,
    },
    /// Create a group, named owner:name.
    Creategroup { name: String },
    /// Add a user to a group.
    Adduser { user: String, group: String },
    /// Remove a user from a group.
    Removeuser { user: String, group: String },
    /// Delete a user or group (ACL entries naming it stop matching anyone).
    Delete { name: String },
    /// A group's members, or the groups a user belongs to.
    Membership {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Every user and group.
    Listentries {
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password (from --password-file or the first line of stdin).
    Setpassword {
        user: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    admin::main_of("pts", run(Cli::parse()))
}

fn password(file: Option<&Path>) -> Result<String> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line
        }
    };
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn entry(r: Response) -> Result<PtsEntry> {
    match r {
        Response::PtsEntry { entry } => Ok(entry),
        other => Err(admin::unexpected(other)),
    }
}

fn show(e: &PtsEntry) {
    let kind = if e.id.is_group() { "group" } else { "user" };
    println!("{kind} {} (id {})", e.name, e.id);
    for m in &e.members {
        println!("  {m}");
    }
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = admin::Context::load(cli.cell.cell_file, cli.cell.admin_cred)?;
    match cli.command {
        Command::Createuser { name, password_file, id } => {
            let password = password(password_file.as_deref())?;
            let id = id.map(proto::PtsId);
            let e = entry(ctx.call(None, Request::PtsCreateUser { name, password, id }).await?)?;
            println!("user {} has id {}", e.name, e.id);
        }
        Command::Creategroup { name } => {
            let e = entry(ctx.call(None, Request::PtsCreateGroup { name }).await?)?;
            println!("group {} has id {}", e.name, e.id);
        }
        Command::Adduser { user, group } => show(&entry(ctx.call(None, Request::PtsAddUser { user, group }).await?)?),
        Command::Removeuser { user, group } => {
            show(&entry(ctx.call(None, Request::PtsRemoveUser { user, group }).await?)?)
        }
        Command::Delete { name } => {
            ctx.call(None, Request::PtsDelete { name: name.clone() }).await?;
            println!("deleted {name}");
        }
        Command::Membership { name, json } => {
            let e = entry(ctx.call(None, Request::PtsMembership { name }).await?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entry_json(&e))?);
            } else {
                show(&e);
            }
        }
        Command::Listentries { json } => {
            let Response::PtsEntries { entries } = ctx.call(None, Request::PtsListEntries).await? else {
                anyhow::bail!("unexpected answer to PtsListEntries");
            };
            if json {
                let list: Vec<_> = entries.iter().map(entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:>8}  members/groups", "name", "id");
                for e in &entries {
                    println!("{:<32} {:>8}  {}", e.name, e.id, e.members.len());
                }
            }
        }
        Command::Setpassword { user, password_file } => {
            let password = password(password_file.as_deref())?;
            ctx.call(None, Request::PtsSetPassword { user: user.clone(), password }).await?;
            println!("password of {user} set");
        }
    }
    Ok(())
}

fn entry_json(e: &PtsEntry) -> serde_json::Value {
    serde_json::json!({ "name": e.name, "id": e.id.0, "group": e.id.is_group(), "members": e.members })
}
