//! Replicated volumes on the wire: consensus messages between members, chunks between
//! members, and the admin's requests that make, grow, shrink and show a group. How a change
//! to a replicated volume is proposed is [`propose_batch`]; where requests go is
//! `crate::replication::Route`.

use std::sync::Arc;
use std::time::Duration;

use proto::msg::{RaftCall, Response};
use proto::{ChunkRef, ClientId, Record, RemoteError, ServerId, VolumeId};
use volumes::replicated::Birth;
use volumes::{BatchOutcome, Caller, SmallChunk};

use super::{Reply, blocking, error};
use crate::replication::types::{Change, Inline, Outcome};
use crate::replication::{Group, node};
use crate::server::{Peer, Shared};

/// The largest consensus message (a batch of entries, a snapshot piece).
const MAX_RAFT_BODY: u32 = 256 * 1024 * 1024;
/// How long the leader waits for a majority to hold a change's chunks.
const PUSH_WAIT: Duration = Duration::from_secs(30);

fn servers_only(peer: &Peer) -> Result<ServerId, RemoteError> {
    peer.server.ok_or(RemoteError::PermissionDenied)
}

fn encode<T: serde::Serialize>(v: &T) -> Reply {
    match postcard::to_stdvec(v) {
        Ok(body) => Response::Raft { body }.into(),
        Err(e) => error(RemoteError::Internal(format!("encoding a consensus reply: {e}"))),
    }
}

/// `Raft`: one consensus message for one of this server's groups.
pub async fn raft(
    shared: &Arc<Shared>,
    peer: &Peer,
    volume: VolumeId,
    call: RaftCall,
    len: u32,
    recv: &mut quinn::RecvStream,
) -> Reply {
    if let Err(e) = servers_only(peer) {
        return error(e);
    }
    if len > MAX_RAFT_BODY {
        return error(RemoteError::TooLarge);
    }
    let mut body = vec![0u8; len as usize];
    if recv.read_exact(&mut body).await.is_err() {
        return error(RemoteError::Protocol("consensus message cut short".into()));
    }
    let Some(group) = shared.groups.get(volume) else { return error(RemoteError::NoSuchVolume) };
    let bad = |e: postcard::Error| error(RemoteError::Protocol(format!("consensus message: {e}")));
    match call {
        RaftCall::Append => match postcard::from_bytes(&body) {
            Ok(req) => encode(&group.raft.append_entries(req).await),
            Err(e) => bad(e),
        },
        RaftCall::Vote => match postcard::from_bytes(&body) {
            Ok(req) => encode(&group.raft.vote(req).await),
            Err(e) => bad(e),
        },
        RaftCall::Snapshot => match postcard::from_bytes(&body) {
            Ok(req) => encode(&group.raft.install_snapshot(req).await),
            Err(e) => bad(e),
        },
    }
}

/// `ReadChunks`: a member lacks chunks an entry names.
pub async fn read_chunks(shared: &Arc<Shared>, peer: &Peer, chunks: Vec<ChunkRef>) -> Reply {
    if let Err(e) = servers_only(peer) {
        return error(e);
    }
    if chunks.len() > 1024 {
        return error(RemoteError::TooLarge);
    }
    let asked = chunks.clone();
    match blocking(&shared.store, move |s| s.lacking(&asked)).await {
        Ok(lacking) if lacking.is_empty() => Reply::Data { response: Response::ChunksFollow, chunks },
        Ok(_) => error(RemoteError::MissingChunks(chunks.len() as u32)),
        Err(e) => error(e),
    }
}

/// `JoinGroup`: from another member (or the admin).
pub async fn join(shared: &Arc<Shared>, peer: &Peer, volume: VolumeId) -> Reply {
    if peer.server.is_none() && !peer.admin {
        return error(RemoteError::PermissionDenied);
    }
    // The other members must be reachable from here even while the cell database is not:
    // the servers are read now, while whoever asked to join is up.
    if let Err(e) = shared.groups.peers().servers(true).await {
        tracing::warn!(%volume, error = %e, "the cell's servers could not be read before joining");
    }
    match shared.groups.join(volume).await {
        Ok(_) => {
            // A member that left and joins again serves the volume again.
            shared.moved.lock().unwrap_or_else(|p| p.into_inner()).remove(&volume);
            Response::Done.into()
        }
        Err(e) => error(RemoteError::Internal(e.to_string())),
    }
}

/// `LeaveGroup`: this server was removed from the group (or its volume is removed).
pub async fn leave(shared: &Arc<Shared>, peer: &Peer, volume: VolumeId) -> Reply {
    if peer.server.is_none() && !peer.admin {
        return error(RemoteError::PermissionDenied);
    }
    match leave_group(shared, volume).await {
        Ok(()) => Response::Done.into(),
        Err(e) => error(e),
    }
}

/// This server leaves `volume`'s group: promises broken, the log forgotten, the copy dropped.
/// Clients that still ask here (their location entry lists it, a move being under way) are
/// told the volume moved, so they look for it among the other members; without that, their
/// changes would meet a store that lacks the volume and be refused one by one.
pub async fn leave_group(shared: &Arc<Shared>, volume: VolumeId) -> Result<(), RemoteError> {
    shared.moved.lock().unwrap_or_else(|p| p.into_inner()).insert(volume);
    shared.callbacks.break_volume(volume).await;
    shared.groups.leave(volume).await
}

/// The address of a registered server.
async fn address_of(shared: &Arc<Shared>, server: ServerId) -> Result<String, RemoteError> {
    let servers =
        shared.groups.peers().servers(true).await.map_err(|e| RemoteError::CellDbUnavailable(e.to_string()))?;
    servers
        .into_iter()
        .find(|s| s.id == server.0)
        .map(|s| s.address)
        .ok_or_else(|| RemoteError::Invalid(format!("server {server} is not in the cell")))
}

/// `CreateReplicated`: this server and the others named become the volume's group.
pub async fn create(shared: &Arc<Shared>, id: VolumeId, name: String, quota: u64, members: Vec<ServerId>) -> Reply {
    if let Err(e) = proto::msg::validate_volume_name(&name) {
        return error(e);
    }
    let mut unique = members.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != members.len() || !members.contains(&shared.server_id) || members.len() > 7 {
        return error(RemoteError::Invalid("a group names up to 7 distinct servers, this one among them".into()));
    }
    let mut named = Vec::new();
    for m in &members {
        match address_of(shared, *m).await {
            Ok(a) => named.push((*m, a)),
            Err(e) => return error(e),
        }
    }
    for m in members.iter().filter(|m| **m != shared.server_id) {
        match shared.groups.peers().call(*m, &proto::Request::JoinGroup { volume: id }).await {
            Ok(Response::Done) => {}
            Ok(other) => return error(RemoteError::Internal(format!("server {m} would not join: {other:?}"))),
            Err(e) => return error(RemoteError::Internal(format!("server {m} would not join: {e}"))),
        }
    }
    let create = Change::Create { name, quota, acl: proto::Acl::volume_default(), birth: Birth::new_replicated() };
    match shared.groups.found(id, &named, create).await {
        Ok(Outcome::Created(info)) => {
            tracing::info!(volume = %info.name, %id, members = ?members, "replicated volume created");
            Response::Volume { info, entry: None }.into()
        }
        Ok(Outcome::Refused(e)) | Err(e) => error(e),
        Ok(other) => error(RemoteError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `ChangeReplicas`: at the leader, one member in and/or one out.
pub async fn change(shared: &Arc<Shared>, name: String, add: Option<ServerId>, remove: Option<ServerId>) -> Reply {
    let id = match super::volume_ops::volume_named(shared, &name).await {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let Some(group) = shared.groups.get(id) else {
        return error(RemoteError::Invalid(format!(
            "{name} is not a replicated volume of server {}",
            shared.server_id
        )));
    };
    if let Err(e) = group.current(shared.server_id).await {
        return error(e);
    }
    if let Some(add) = add {
        let address = match address_of(shared, add).await {
            Ok(a) => a,
            Err(e) => return error(e),
        };
        let (voters, learners) = group.members();
        if !voters.contains(&node(add)) {
            if !learners.contains(&node(add)) {
                match shared.groups.peers().call(add, &proto::Request::JoinGroup { volume: id }).await {
                    Ok(Response::Done) => {}
                    Ok(other) => {
                        return error(RemoteError::Internal(format!("server {add} would not join: {other:?}")));
                    }
                    Err(e) => return error(RemoteError::Internal(format!("server {add} would not join: {e}"))),
                }
            }
            // Blocks until the new member caught up (the log, or a snapshot and the log).
            if let Err(e) = shared.groups.add_member(&group, add, address).await {
                return error(e);
            }
            tracing::info!(volume = %name, server = %add, "member added");
        }
    }
    if let Some(remove) = remove {
        let (voters, _) = group.members();
        if voters.contains(&node(remove)) {
            if voters.len() == 1 {
                return error(RemoteError::Invalid("a group keeps at least one member".into()));
            }
            if let Err(e) = shared.groups.remove_member(&group, remove).await {
                return error(e);
            }
            tracing::info!(volume = %name, server = %remove, "member removed");
        }
        if remove == shared.server_id {
            // The group goes on without this server; the new leader is elected meanwhile.
            let _ = leave_group(shared, id).await;
        } else {
            tokio::spawn(tell_to_leave(shared.clone(), group.clone(), remove));
        }
    }
    match shared.groups.get(id) {
        Some(g) => Response::Group { status: g.status(shared.server_id) }.into(),
        None => Response::Done.into(),
    }
}

/// `ExamineGroup`: the group as this member sees it.
pub async fn examine(shared: &Arc<Shared>, volume: VolumeId) -> Reply {
    match shared.groups.get(volume) {
        Some(g) => Response::Group { status: g.status(shared.server_id) }.into(),
        None => error(RemoteError::NoSuchVolume),
    }
}

/// Makes sure a majority of the group (this leader included) holds `chunks` before an entry
/// naming them is proposed; the other members get them in the background, or pull them.
async fn spread_chunks(shared: &Arc<Shared>, group: &Group, chunks: Vec<ChunkRef>) -> Result<(), RemoteError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let (voters, learners) = group.members();
    let me = node(shared.server_id);
    let need = (voters.len() / 2 + 1).saturating_sub(usize::from(voters.contains(&me)));
    let others: Vec<u64> = voters.iter().chain(&learners).copied().filter(|n| *n != me).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(others.len().max(1));
    for n in others.iter().copied() {
        let (tx, peers, store, chunks) =
            (tx.clone(), shared.groups.peers().clone(), shared.store.clone(), chunks.clone());
        let (volume, voter) = (group.volume, voters.contains(&n));
        tokio::spawn(async move {
            let r = peers.push_chunks(ServerId(n as u32), volume, &store, &chunks).await;
            if let Err(e) = &r {
                tracing::debug!(%volume, member = n, error = %e, "chunks not pushed");
            }
            let _ = tx.send(r.is_ok() && voter).await;
        });
    }
    drop(tx);
    let mut have = 0;
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    while have < need {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(true)) => have += 1,
            Ok(Some(false)) => {}
            Ok(None) | Err(_) => return Err(RemoteError::NotLeader(None)),
        }
    }
    Ok(())
}

/// A batch of records to a replicated volume this server leads: decided here, its chunks on
/// a majority, then proposed, committed and applied.
pub async fn propose_batch(
    shared: &Arc<Shared>,
    group: &Group,
    caller: Caller,
    client: ClientId,
    only: Option<VolumeId>,
    chunks: Vec<SmallChunk>,
    records: Vec<Record>,
) -> Result<BatchOutcome, RemoteError> {
    let inline: Vec<Inline> = chunks.iter().map(|c| Inline { chunk: c.chunk(), data: c.data().to_vec() }).collect();
    let refs: Vec<ChunkRef> = inline.iter().map(|i| i.chunk).collect();
    let decide = records.clone();
    let decided = blocking(&shared.store, move |s| s.decide(&refs, &decide)).await?;
    let change = Change::Batch { caller, client, only, inline, records, decided };
    spread_chunks(shared, group, change.named_chunks()).await?;
    match group.propose(change, shared.server_id).await? {
        Outcome::Batch { results, changed, volumes } => Ok(BatchOutcome { results, changed, volumes }),
        Outcome::Refused(e) => Err(e),
        other => Err(RemoteError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Any other change to a replicated volume this server leads.
pub async fn propose(shared: &Arc<Shared>, group: &Group, change: Change) -> Result<Outcome, RemoteError> {
    match group.propose(change, shared.server_id).await? {
        Outcome::Refused(e) => Err(e),
        other => Ok(other),
    }
}

/// How long a removed member is given to answer `LeaveGroup` at each try.
const LEAVE_TRY: Duration = Duration::from_secs(5);
/// Tries at telling a removed member to leave, and the pause between them: an hour in all.
const LEAVE_TRIES: u32 = 120;
const LEAVE_PAUSE: Duration = Duration::from_secs(30);

/// Tells a member removed from `group` to stop and drop its copy. It is out of the group
/// either way; this only frees its disk, so it runs apart from the change: a member that is
/// down (its disk lost, say) does not hold up `vos remreplica`, and one that comes back within
/// the hour still drops its copy. Given up once the server is a member again.
async fn tell_to_leave(shared: Arc<Shared>, group: Arc<Group>, server: ServerId) {
    let volume = group.volume;
    for _ in 0..LEAVE_TRIES {
        let (voters, learners) = group.members();
        if voters.contains(&node(server)) || learners.contains(&node(server)) || shared.groups.get(volume).is_none() {
            return;
        }
        let leave = proto::Request::LeaveGroup { volume };
        match tokio::time::timeout(LEAVE_TRY, shared.groups.peers().call(server, &leave)).await {
            Ok(Ok(_)) => {
                tracing::info!(%volume, %server, "removed member left the group");
                return;
            }
            Ok(Err(e)) => tracing::info!(%volume, %server, error = %e, "removed member not reached; trying again"),
            Err(_) => tracing::info!(%volume, %server, "removed member does not answer; trying again"),
        }
        tokio::time::sleep(LEAVE_PAUSE).await;
    }
    tracing::warn!(%volume, %server, "removed member never answered: its copy stays until `vos remreplica` or a reinstall");
}

/// Breaks every promise on a volume this server stops leading (or stops being sure it leads):
/// its clients must ask the new leader. Runs until shutdown.
pub async fn watch_leadership(shared: Arc<Shared>, shutdown: tokio_util::sync::CancellationToken) {
    let mut leading = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(300) && !shared.groups.volumes().is_empty() {
            // Servers that joined the cell since are learned (and remembered) while it answers.
            let _ = shared.groups.peers().servers(true).await;
        }
        for v in shared.groups.volumes() {
            let Some(g) = shared.groups.get(v) else { continue };
            let now = g.leads_now();
            if now {
                leading.insert(v);
            } else if leading.remove(&v) {
                tracing::info!(volume = %v, leader = ?g.leader(), "no longer leading: promises broken");
                shared.callbacks.break_volume(v).await;
            }
        }
    }
}
