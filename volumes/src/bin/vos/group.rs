//! Replicated read-write volumes: `vos create NAME --replicas N | --servers A,B,C`,
//! `vos addreplica NAME SERVER`, `vos remreplica NAME SERVER`, and the group part of
//! `vos examine`.
//!
//! A replicated volume's location entry lists every member as a read-write site; which member
//! leads is asked of the members (`ExamineGroup`), since it changes without the database.

use anyhow::{Context as _, Result, bail};
use proto::cell::CellServer;
use proto::msg::{GroupStatus, Site, SiteRole};
use proto::{RemoteError, Request, Response, ServerId};

use volumes::admin::{Context, Located, unexpected};

/// The servers to hold a new replicated volume: those named, or the first `replicas` servers
/// of the cell that are running.
pub async fn choose(ctx: &Context, replicas: Option<usize>, servers: &[String]) -> Result<Vec<CellServer>> {
    if !servers.is_empty() {
        let mut out = Vec::new();
        for s in servers {
            out.push(ctx.resolve(Some(s)).await?);
        }
        return Ok(out);
    }
    let n = replicas.unwrap_or(3);
    let alive: Vec<ServerId> = match ctx.call(None, Request::ListServerStatus).await? {
        Response::ServerStatus { servers, .. } => servers.iter().filter(|s| s.alive).map(|s| s.info.id).collect(),
        other => return Err(unexpected(other)),
    };
    // Running servers first (a cell whose database is the first server's own knows only that
    // one is running; the others are tried all the same, and one that is down says so).
    let mut all = ctx.servers().await?;
    all.sort_by_key(|s| (!alive.contains(&s.server_id()), s.id));
    if all.len() < n {
        bail!("--replicas {n}: the cell has {} servers", all.len());
    }
    all.truncate(n);
    Ok(all)
}

/// Creates replicated volume `name` on `members` (the first founds the group).
pub async fn create(ctx: &Context, name: &str, quota: u64, members: &[CellServer]) -> Result<()> {
    proto::msg::validate_volume_name(name)?;
    if members.len() < 2 {
        bail!("a replicated volume needs at least 2 servers (3 survive the loss of one)");
    }
    let id = match ctx.call(None, Request::AllocateVolumeId).await? {
        Response::VolumeIdAllocated { id } => id,
        other => return Err(unexpected(other)),
    };
    let ids: Vec<ServerId> = members.iter().map(|s| s.server_id()).collect();
    let req = Request::CreateReplicated { id, name: name.to_string(), quota, members: ids.clone() };
    ctx.call_at(&members[0], req).await.with_context(|| format!("creating replicated volume {name}"))?;
    let entry = proto::msg::VldbEntry {
        name: name.to_string(),
        rw: id,
        ro: None,
        backup: None,
        sites: ids.iter().map(|&server| Site { server, role: SiteRole::ReadWrite }).collect(),
    };
    ctx.call(None, Request::VldbCreate { entry }).await.with_context(|| format!("recording volume {name}"))?;
    let list: Vec<String> = members.iter().map(|s| format!("{} ({})", s.id, s.address)).collect();
    println!("Volume {name} created with id {id}, replicated on servers {}", list.join(", "));
    Ok(())
}

/// The read-write sites of an entry: more than one means a replicated volume.
pub fn members(located: &Located) -> Vec<ServerId> {
    located.entry.sites.iter().filter(|s| s.role == SiteRole::ReadWrite).map(|s| s.server).collect()
}

/// Every member's view of the group, for those that answer.
pub async fn statuses(ctx: &Context, located: &Located) -> Vec<(ServerId, Result<GroupStatus>)> {
    let mut out = Vec::new();
    for m in members(located) {
        let status = async {
            let server = located.server(m)?;
            match ctx.call_at(&server, Request::ExamineGroup { volume: located.entry.rw }).await? {
                Response::Group { status } => Ok(status),
                other => Err(unexpected(other)),
            }
        }
        .await;
        out.push((m, status));
    }
    out
}

/// The member that leads, as the members say.
pub async fn leader(ctx: &Context, located: &Located) -> Result<CellServer> {
    for (_, status) in statuses(ctx, located).await {
        if let Ok(GroupStatus { leader: Some(l), .. }) = status {
            return located.server(l);
        }
    }
    bail!("no member of {}'s group knows a leader (a majority may be down)", located.entry.name)
}

#[derive(clap::Args)]
pub struct MemberArgs {
    name: String,
    /// The server (address or id).
    server: String,
}

/// Asks the leader to change the group, following `NotLeader` if the leader just changed.
async fn change(ctx: &Context, located: &Located, add: Option<ServerId>, remove: Option<ServerId>) -> Result<()> {
    let mut at = leader(ctx, located).await?;
    for _ in 0..3 {
        let req = Request::ChangeReplicas { name: located.entry.name.clone(), add, remove };
        match ctx.call_at(&at, req).await {
            Ok(_) => return Ok(()),
            Err(e) => match e.downcast_ref::<RemoteError>() {
                Some(RemoteError::NotLeader(Some(l))) => at = located.server(*l)?,
                Some(RemoteError::NotLeader(None)) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    at = leader(ctx, located).await?;
                }
                _ => return Err(e),
            },
        }
    }
    bail!("the group of {} kept changing its leader", located.entry.name)
}

pub async fn add(ctx: &Context, a: MemberArgs) -> Result<()> {
    ctx.under_lock(&a.name, "vos addreplica", async |held, located| {
        let server = ctx.resolve(Some(&a.server)).await?;
        let sid = server.server_id();
        if members(&located).len() < 2 {
            bail!("{} is not replicated: create it with `vos create --replicas`", a.name);
        }
        if members(&located).contains(&sid) {
            bail!("{} is already replicated on server {}", a.name, server.address);
        }
        // Returns once the new member caught up and votes.
        change(ctx, &located, Some(sid), None).await?;
        let old = located.entry.clone();
        let mut entry = old.clone();
        entry.sites.push(Site { server: sid, role: SiteRole::ReadWrite });
        held.call(Request::VldbUpdate { old, new: entry }).await?;
        println!("Server {} ({}) is now a member of {}", server.id, server.address, a.name);
        Ok(())
    })
    .await
}

pub async fn remove(ctx: &Context, a: MemberArgs) -> Result<()> {
    ctx.under_lock(&a.name, "vos remreplica", async |held, located| {
        let server = ctx.resolve(Some(&a.server)).await?;
        let sid = server.server_id();
        let now = members(&located);
        if !now.contains(&sid) {
            bail!("{} has no replica on server {}", a.name, server.address);
        }
        if now.len() <= 2 {
            bail!("{} has {} members: a replicated volume keeps at least 2", a.name, now.len());
        }
        change(ctx, &located, None, Some(sid)).await?;
        let old = located.entry.clone();
        let mut entry = old.clone();
        entry.sites.retain(|s| !(s.server == sid && s.role == SiteRole::ReadWrite));
        held.call(Request::VldbUpdate { old, new: entry }).await?;
        println!("Server {} ({}) is no longer a member of {}", server.id, server.address, a.name);
        Ok(())
    })
    .await
}

/// Moves a replicated volume's replica from one server to another: a membership change (the
/// new member catches up while clients go on, then the old one leaves); nothing is frozen.
pub async fn move_member(ctx: &Context, located: &Located, from: &CellServer, to: &CellServer) -> Result<Located> {
    let (from_id, to_id) = (from.server_id(), to.server_id());
    if members(located).contains(&to_id) {
        bail!("{} is already replicated on server {}", located.entry.name, to.address);
    }
    change(ctx, located, Some(to_id), None).await?;
    change(ctx, located, None, Some(from_id)).await?;
    let mut entry = located.entry.clone();
    for s in entry.sites.iter_mut() {
        if s.server == from_id && s.role == SiteRole::ReadWrite {
            s.server = to_id;
        }
    }
    Ok(Located { entry, servers: located.servers.clone() })
}

/// The group part of `vos examine`.
pub fn print(statuses: &[(ServerId, Result<GroupStatus>)]) {
    let leader_view = statuses.iter().find_map(|(_, s)| s.as_ref().ok().filter(|s| s.leader == Some(s.server)));
    match leader_view {
        Some(l) => {
            println!("    group     leader server {}, term {}, last log index {:?}", l.server, l.term, l.last_log)
        }
        None => println!("    group     no leader known (a majority may be down)"),
    }
    let newest = leader_view.and_then(|l| l.last_log).unwrap_or(0);
    for (server, status) in statuses {
        match status {
            Ok(s) => {
                let voter = leader_view
                    .and_then(|l| l.members.iter().find(|m| m.server == *server))
                    .map_or("", |m| if m.voter { "" } else { " (learner)" });
                let lag = s.applied.map_or(newest, |a| newest.saturating_sub(a));
                let stopped = s.stopped.as_ref().map_or(String::new(), |e| format!(", stopped: {e}"));
                println!("    member    server {server}{voter}: applied {:?}, lag {lag}{stopped}", s.applied);
            }
            Err(e) => println!("    member    server {server}: not answering ({e:#})"),
        }
    }
}
