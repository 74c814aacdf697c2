//! Request handlers, one module per service: decode (done), authorise, apply, encode.

mod acl;
mod admin;
mod fetch;
mod location;
pub mod locks;
mod mutate;
mod permit;
mod pts;
pub mod replica;
mod upload;
pub mod volume_ops;

use std::sync::Arc;

use proto::msg::{Call, PROTOCOL_VERSION, Request, Response};
use proto::{ChunkRef, RemoteError};
use volumes::{Caller, StoreError};

use crate::server::{Peer, Shared};

/// What a handler answers: a message, or a message followed by a file's bytes.
pub enum Reply {
    Message(Response),
    Data {
        response: Response,
        chunks: Vec<ChunkRef>,
    },
    /// A message followed by bytes produced as they come (a volume dump).
    Stream {
        response: Response,
        body: tokio::sync::mpsc::Receiver<Vec<u8>>,
    },
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Message(r)
    }
}

fn error(e: RemoteError) -> Reply {
    Reply::Message(Response::Error(e))
}

/// Runs a blocking database operation (the volume store's, the protection database's) off the
/// async threads.
pub async fn blocking<S: Send + Sync + 'static, T: Send + 'static>(
    db: &Arc<S>,
    f: impl FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RemoteError> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            match &e {
                StoreError::Refused(_) => {}
                StoreError::Unavailable(_) => tracing::warn!(error = %e, "cell database unavailable"),
                _ => tracing::error!(error = %e, "database failure"),
            }
            Err(e.to_remote())
        }
        Err(e) => {
            tracing::error!(error = %e, "database task panicked");
            Err(RemoteError::Internal("database task failed".into()))
        }
    }
}

pub async fn serve(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    call: Call,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    // Every request is measured here, once: its name, how long until its reply was written,
    // and the kind of error it was answered with.
    let (name, started) = (call.request.meta().name, std::time::Instant::now());
    let reply = match crate::identity::identify(shared, peer, call.token.as_ref()).await {
        Ok(caller) => dispatch(shared, peer, caller, call.request, recv).await,
        Err(e) => error(e),
    };
    let mut failed = match &reply {
        Reply::Message(Response::Error(e)) => Some(e.kind()),
        _ => None,
    };
    let result = match reply {
        Reply::Message(r) => proto::frame::write_frame(send, &r).await,
        Reply::Data { response, chunks } => fetch::stream_data(shared, send, response, chunks).await,
        Reply::Stream { response, mut body } => {
            let mut result = proto::frame::write_frame(send, &response).await;
            while let (Ok(()), Some(piece)) = (&result, body.recv().await) {
                result = tokio::io::AsyncWriteExt::write_all(send, &piece).await.map_err(Into::into);
            }
            result
        }
    };
    if let Err(e) = result {
        tracing::debug!(remote = %peer.remote, error = %e, "reply not delivered");
        failed = failed.or(Some(crate::metrics::NOT_DELIVERED));
    }
    shared.metrics.answered(name, failed, started.elapsed());
}

async fn dispatch(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    caller: Caller,
    req: Request,
    recv: &mut quinn::RecvStream,
) -> Reply {
    let meta = req.meta();
    if meta.admin && !peer.admin && !caller.is_admin() {
        return error(RemoteError::NotAdmin);
    }
    let client = match (&req, peer.client.get()) {
        (Request::Hello { client, protocol, host }, _) => {
            if *protocol != PROTOCOL_VERSION {
                return error(RemoteError::Protocol(format!(
                    "client speaks protocol {protocol}, this server {PROTOCOL_VERSION}"
                )));
            }
            if peer.client.set(*client).is_err() && peer.client.get() != Some(client) {
                return error(RemoteError::Protocol("a connection cannot change its client id".into()));
            }
            shared.callbacks.attach(*client, peer.conn.clone());
            shared.permits.hello(*client, &peer.conn);
            tracing::debug!(%client, host, "hello");
            return Response::Hello { server: shared.server_id, cell: shared.config.cell.clone() }.into();
        }
        (_, Some(c)) => *c,
        (_, None) => return error(RemoteError::Protocol("send Hello first".into())),
    };
    if shared.callbacks.take_lost(client) {
        return error(RemoteError::CallbacksLost);
    }
    if let Some(v) = meta.volume
        && peer.server.is_none()
        && let crate::replication::Route::Elsewhere(leader) = shared.groups.route(v).await
    {
        // A replicated volume is served by its group's leader only.
        return error(RemoteError::NotLeader(leader));
    }
    if let Some(v) = meta.volume {
        if shared.moved.lock().unwrap_or_else(|p| p.into_inner()).contains(&v) {
            return error(RemoteError::VolumeMoved);
        }
        if meta.mutates && shared.frozen.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&v) {
            return error(RemoteError::VolumeBusy);
        }
    }
    // Another client's write-back permit on what this touches is recalled first; the passes
    // keep a new one from being granted while this is served.
    let volumes = permit::touched(shared, &req).await;
    let _passes = shared.permits.enter(client, &volumes, &shared.callbacks, &shared.store).await;
    if let Request::Fenced { fence, request } = req {
        if matches!(*request, Request::Fenced { .. } | Request::Hello { .. }) {
            return error(RemoteError::Protocol("a fenced request carries one plain request".into()));
        }
        if let Err(e) = locks::check(shared, &fence).await {
            tracing::info!(volume = %fence.volume, token = fence.token, error = %e, "fenced request refused");
            return error(e);
        }
        return handle(shared, peer, caller, client, *request, recv, Some(fence)).await;
    }
    handle(shared, peer, caller, client, req, recv, None).await
}

/// One request, checked and identified; `fence` when it came `Fenced` with a lock still held.
async fn handle(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    caller: Caller,
    client: proto::ClientId,
    req: Request,
    recv: &mut quinn::RecvStream,
    fence: Option<proto::msg::Fence>,
) -> Reply {
    match req {
        Request::Hello { .. } => error(RemoteError::Protocol("duplicate Hello".into())),
        Request::Fenced { .. } => error(RemoteError::Protocol("a fenced request carries one plain request".into())),
        Request::FetchStatus { fid } => fetch::status(shared, caller, client, fid).await,
        Request::FetchData { fid } => fetch::data(shared, caller, client, fid).await,
        Request::FetchDir { fid } => fetch::dir(shared, caller, client, fid).await,
        Request::MissingChunks { volume: _, hashes } => mutate::missing(shared, hashes).await,
        Request::PutChunks { volume: _, chunks } => mutate::put_chunks(shared, chunks, recv).await,
        Request::Mutate { record } => mutate::mutate(shared, caller, client, record).await,
        Request::Reintegrate { volume, records } => mutate::reintegrate(shared, caller, client, volume, records).await,
        Request::ValidateVolumes { volumes } => location::validate(shared, client, volumes).await,
        Request::GiveUpCallBacks { fids } => {
            shared.callbacks.give_up(client, &fids);
            Response::Done.into()
        }
        Request::GetVolumeLocation { volume } => location::lookup(shared, volume).await,
        Request::ListServers => location::servers(shared).await,
        Request::CreateVolume { name, quota } => admin::create(shared, name, quota).await,
        Request::RemoveVolume { name } => admin::remove(shared, name).await,
        Request::ListVldb => admin::list_vldb(shared).await,
        Request::ExamineVolume { name } => admin::examine(shared, name).await,
        Request::ListVolumes => admin::list_volumes(shared).await,
        Request::Login { user, password, lifetime } => pts::login(shared, user, password, lifetime).await,
        Request::FetchAcl { fid } => acl::fetch(shared, caller, client, fid).await,
        Request::GetVolumeSpace { volume } => {
            match blocking(&shared.store, move |s| s.volume_space(&caller, volume)).await {
                Ok(space) => Response::VolumeSpace { space }.into(),
                Err(e) => error(e),
            }
        }
        Request::SetAclEntry { fid, who, rights, negative } => {
            acl::set_entry(shared, caller, client, fid, who, rights, negative).await
        }
        Request::PtsCreateUser { name, password, id } => {
            pts::change(shared, move |db| db.create_user_as(&name, &password, id)).await
        }
        Request::PtsCreateGroup { name } => pts::change(shared, move |db| db.create_group(&name)).await,
        Request::PtsAddUser { user, group } => {
            pts::change(shared, move |db| db.add_member(&user, &group).and_then(|()| db.membership(&group))).await
        }
        Request::PtsRemoveUser { user, group } => {
            pts::change(shared, move |db| db.remove_member(&user, &group).and_then(|()| db.membership(&group))).await
        }
        Request::PtsDelete { name } => pts::delete(shared, name).await,
        Request::PtsMembership { name } => pts::look(shared, move |db| db.membership(&name)).await,
        Request::PtsListEntries => pts::list(shared).await,
        Request::PtsSetPassword { user, password } => pts::set_password(shared, peer, caller, user, password).await,
        Request::DumpVolume { name, since } => volume_ops::dump(shared, name, since).await,
        Request::CloneVolumeHere { source, id, name, kind } => {
            volume_ops::clone_here(shared, source, id, name, kind).await
        }
        Request::SetQuota { name, quota } => volume_ops::set_quota(shared, name, quota).await,
        Request::VldbRename { name, new_name } => admin::vldb_rename(shared, name, new_name).await,
        Request::ValidateAttrs { objects } => location::validate_attrs(shared, caller, client, objects).await,
        Request::JoinCell { address, fingerprint } => admin::join(shared, address, fingerprint).await,
        Request::AllocateVolumeId => match blocking(&shared.vldb, |v| v.allocate_volume_id()).await {
            Ok(id) => Response::VolumeIdAllocated { id }.into(),
            Err(e) => error(e),
        },
        Request::VldbCreate { entry } => match blocking(&shared.vldb, move |v| v.create(&entry)).await {
            Ok(()) => Response::Done.into(),
            Err(e) => error(e),
        },
        Request::VldbUpdate { old, new } => {
            match blocking(&shared.vldb, move |v| v.update(&old, &new, fence.as_ref())).await {
                Ok(()) => Response::Done.into(),
                Err(e) => error(e),
            }
        }
        Request::CreateVolumeHere { id, name, quota } => admin::create_here(shared, id, name, quota).await,
        Request::RestoreVolumeHere { id, name, overwrite, kind } => {
            volume_ops::restore_here(shared, id, name, overwrite, kind, recv).await
        }
        Request::FreezeVolume { id, frozen } => volume_ops::freeze(shared, id, frozen, fence),
        Request::VolumeMovedAway { id } => volume_ops::moved_away(shared, id).await,
        Request::RemoveVolumeHere { id } => volume_ops::remove_here(shared, id).await,
        Request::RenameVolumeHere { id, name } => volume_ops::rename_here(shared, id, name).await,
        Request::PutChunksAndMutate { chunks, record } => {
            mutate::put_and_mutate(shared, caller, client, chunks, record, recv).await
        }
        Request::ListServerStatus => location::server_status(shared).await,
        Request::TakeLock { volume, purpose, ttl_secs } => locks::take(shared, volume, purpose, ttl_secs).await,
        Request::RenewLock { fence } => locks::renew(shared, fence).await,
        Request::ReleaseLock { fence } => locks::release(shared, fence).await,
        Request::NoteUnfinished { fence, unfinished } => locks::note(shared, fence, unfinished).await,
        Request::RequestPermit { volume } => permit::ask(shared, client, volume).await,
        Request::ReturnPermit { volume } => permit::give_back(shared, client, volume).await,
        Request::Raft { volume, call, len } => replica::raft(shared, peer, volume, call, len, recv).await,
        Request::ReadChunks { chunks } => replica::read_chunks(shared, peer, chunks).await,
        Request::JoinGroup { volume } => replica::join(shared, peer, volume).await,
        Request::LeaveGroup { volume } => replica::leave(shared, peer, volume).await,
        Request::CreateReplicated { id, name, quota, members } => {
            replica::create(shared, id, name, quota, members).await
        }
        Request::ChangeReplicas { name, add, remove } => replica::change(shared, name, add, remove).await,
        Request::ExamineGroup { volume } => replica::examine(shared, volume).await,
    }
}
