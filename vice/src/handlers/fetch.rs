//! FetchStatus, FetchData, FetchDir: reads that come with a callback promise.

use std::sync::Arc;

use proto::msg::Response;
use proto::{ChunkRef, ClientId, Fid, ProtoError};
use volumes::Caller;

use super::{Reply, blocking, error};
use crate::server::Shared;

/// Chunks read ahead of the network while a file streams out.
const READ_AHEAD: usize = 4;

pub async fn status(shared: &Arc<Shared>, caller: Caller, client: ClientId, fid: Fid) -> Reply {
    match blocking(&shared.store, move |s| s.fetch_status(&caller, fid)).await {
        Ok((attr, access)) => Response::Status { attr, promise: shared.callbacks.grant(client, fid), access }.into(),
        Err(e) => error(e),
    }
}

pub async fn dir(shared: &Arc<Shared>, caller: Caller, client: ClientId, fid: Fid) -> Reply {
    match blocking(&shared.store, move |s| s.fetch_dir(&caller, fid)).await {
        Ok((attr, entries, access)) => {
            Response::Dir { attr, entries, promise: shared.callbacks.grant(client, fid), access }.into()
        }
        Err(e) => error(e),
    }
}

pub async fn data(shared: &Arc<Shared>, caller: Caller, client: ClientId, fid: Fid) -> Reply {
    match blocking(&shared.store, move |s| s.fetch_data(&caller, fid)).await {
        Ok((attr, chunks, access)) => {
            // The promise is granted before the bytes leave: a change committed after this point
            // breaks it, so the client never keeps contents older than its promise says.
            let promise = shared.callbacks.grant(client, fid);
            Reply::Data { response: Response::Data { attr, chunks: chunks.clone(), promise, access }, chunks }
        }
        Err(e) => error(e),
    }
}

/// Sends the `Data` header and then every chunk's bytes, reading chunks from disk on a blocking
/// thread a few chunks ahead of the network.
pub async fn stream_data(
    shared: &Arc<Shared>,
    send: &mut quinn::SendStream,
    response: Response,
    chunks: Vec<ChunkRef>,
) -> Result<(), ProtoError> {
    proto::frame::write_frame(send, &response).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(READ_AHEAD);
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        for c in &chunks {
            let item = store.read_chunk(c).map_err(|e| e.to_string());
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    while let Some(item) = rx.recv().await {
        match item {
            // Handed over, not copied: quinn sends from the buffer itself.
            Ok(bytes) => send.write_chunk(bytes.into()).await.map_err(|e| ProtoError::Io(e.into()))?,
            Err(e) => {
                // The header is out; the only honest signal left is to abort the stream.
                tracing::error!(error = %e, "cannot read a chunk while sending a file");
                let _ = send.reset(1u32.into());
                return Err(ProtoError::Io(std::io::Error::other(e)));
            }
        }
    }
    Ok(())
}
