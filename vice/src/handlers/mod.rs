//! Request handlers, one module per service: decode (done), authorise, apply, encode.

mod admin;
mod fetch;
mod location;
mod mutate;

use std::sync::Arc;

use proto::msg::{PROTOCOL_VERSION, Request, Response};
use proto::{ChunkRef, RemoteError};
use volumes::{Store, StoreError};

use crate::server::{Peer, Shared};

/// What a handler answers: a message, or a message followed by a file's bytes.
pub enum Reply {
    Message(Response),
    Data { response: Response, chunks: Vec<ChunkRef> },
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Message(r)
    }
}

fn error(e: RemoteError) -> Reply {
    Reply::Message(Response::Error(e))
}

/// Runs a blocking store operation off the async threads.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RemoteError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if !matches!(e, StoreError::Refused(_)) {
                tracing::error!(error = %e, "store failure");
            }
            Err(e.to_remote())
        }
        Err(e) => {
            tracing::error!(error = %e, "store task panicked");
            Err(RemoteError::Internal("store task failed".into()))
        }
    }
}

pub async fn serve(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    req: Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    let reply = dispatch(shared, peer, req, recv).await;
    let result = match reply {
        Reply::Message(r) => proto::frame::write_frame(send, &r).await,
        Reply::Data { response, chunks } => fetch::stream_data(shared, send, response, chunks).await,
    };
    if let Err(e) = result {
        tracing::debug!(remote = %peer.remote, error = %e, "reply not delivered");
    }
}

async fn dispatch(shared: &Arc<Shared>, peer: &Arc<Peer>, req: Request, recv: &mut quinn::RecvStream) -> Reply {
    let meta = req.meta();
    if meta.admin && !peer.admin {
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
            tracing::debug!(%client, host, "hello");
            return Response::Hello { server: shared.server_id, cell: shared.config.cell.clone() }.into();
        }
        (_, Some(c)) => *c,
        (_, None) => return error(RemoteError::Protocol("send Hello first".into())),
    };
    if shared.callbacks.take_lost(client) {
        return error(RemoteError::CallbacksLost);
    }
    match req {
        Request::Hello { .. } => error(RemoteError::Protocol("duplicate Hello".into())),
        Request::FetchStatus { fid } => fetch::status(shared, client, fid).await,
        Request::FetchData { fid } => fetch::data(shared, client, fid).await,
        Request::FetchDir { fid } => fetch::dir(shared, client, fid).await,
        Request::MissingChunks { volume: _, hashes } => mutate::missing(shared, hashes).await,
        Request::PutChunks { volume: _, chunks } => mutate::put_chunks(shared, chunks, recv).await,
        Request::Mutate { record } => mutate::mutate(shared, client, record).await,
        Request::Reintegrate { volume, records } => mutate::reintegrate(shared, client, volume, records).await,
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
    }
}
