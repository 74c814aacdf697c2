//! MissingChunks, PutChunks, Mutate, Reintegrate: how changes arrive.
//!
//! Data first, then metadata: chunks are uploaded (only those the server lacks) and made durable;
//! then a record naming them commits in one transaction. The writer's reply waits until every
//! other client holding a promise on what changed has acked its break.
//!
//! An upload the disk has no room for is refused by its declared size before its bytes are
//! read: the stream is stopped (the client's writes fail at once) and the refusal, `NoSpace`,
//! is still sent as the reply, so the client can read why.

use std::sync::Arc;

use proto::chunk::{MAX_CHUNK, total_len};
use proto::msg::{Promise, Response};
use proto::{ChunkHash, ChunkRef, ClientId, Record, RemoteError, VolumeId};
use tokio::io::AsyncReadExt;
use volumes::chunks::INLINE_MAX;
use volumes::{BatchOutcome, Caller, SmallChunk};

use super::upload::{self, Received, STOP_REFUSED};
use super::{Reply, blocking, error};
use crate::server::Shared;

/// Chunks per PutChunks request (16 GiB at the largest chunk size).
const MAX_PUT_CHUNKS: usize = 16 * 1024;
/// Chunks a `PutChunksAndMutate` may carry in memory into its transaction (1 MiB at most).
const MAX_INLINE_PUT: usize = 16;
/// Records per Reintegrate request.
const MAX_BATCH: usize = 10_000;

pub async fn missing(shared: &Arc<Shared>, hashes: Vec<ChunkHash>) -> Reply {
    if hashes.len() > MAX_PUT_CHUNKS * 8 {
        return error(RemoteError::TooLarge);
    }
    match blocking(&shared.store, move |s| s.missing_chunks(&hashes)).await {
        Ok(indices) => Response::Missing { indices }.into(),
        Err(e) => error(e),
    }
}

pub async fn put_chunks(shared: &Arc<Shared>, chunks: Vec<ChunkRef>, recv: &mut quinn::RecvStream) -> Reply {
    if chunks.len() > MAX_PUT_CHUNKS {
        return error(RemoteError::TooLarge);
    }
    if let Some(bad) = chunks.iter().find(|c| c.len == 0 || c.len > MAX_CHUNK) {
        return error(RemoteError::Invalid(format!("chunk of {} bytes (limit {MAX_CHUNK})", bad.len)));
    }
    match upload::receive(shared.store.clone(), chunks, recv).await {
        Received::All { stored } => Response::ChunksStored { stored }.into(),
        Received::CutShort { kept } => {
            tracing::debug!(kept, "upload cut short; the chunks that arrived are kept");
            error(RemoteError::Protocol("upload ended before all chunks arrived".into()))
        }
        Received::Refused(e) => refuse_upload(recv, e),
    }
}

/// Refuses an upload whose bytes are still coming: no point in reading them.
fn refuse_upload(recv: &mut quinn::RecvStream, e: RemoteError) -> Reply {
    let _ = recv.stop(STOP_REFUSED);
    error(e)
}

async fn apply(
    shared: &Arc<Shared>,
    caller: Caller,
    client: ClientId,
    volume: Option<VolumeId>,
    chunks: Vec<SmallChunk>,
    records: Vec<Record>,
) -> Result<(BatchOutcome, Promise), RemoteError> {
    let summary: Vec<(String, &'static str)> = records.iter().map(|r| (r.op.to_string(), r.mutation.verb())).collect();
    let target = volume.or_else(|| records.first().map(|r| r.mutation.volume()));
    let outcome = match target.and_then(|v| shared.groups.get(v)) {
        // A replicated volume: through its group's log (dispatch made sure this server leads).
        Some(group) => super::replica::propose_batch(shared, &group, caller, client, volume, chunks, records).await?,
        None => {
            blocking(&shared.store, move |s| s.apply_with_chunks(&caller, client, volume, &chunks, &records)).await?
        }
    };
    for ((op, verb), result) in summary.iter().zip(&outcome.results) {
        match result {
            Ok(a) => {
                tracing::debug!(%client, op = %op, verb, stamp = %a.stamp, versions = ?a.attrs.iter().map(|x| (x.fid.to_string(), x.version.to_string())).collect::<Vec<_>>(), "applied")
            }
            Err(e) => tracing::debug!(%client, op = %op, verb, error = %e, "refused"),
        }
    }
    // The writer gets promises on everything it changed or created: it now holds their state.
    let mut promise = Promise { secs: u32::MAX };
    for result in outcome.results.iter().flatten() {
        for attr in &result.attrs {
            let p = shared.callbacks.grant(client, attr.fid);
            promise.secs = promise.secs.min(p.secs);
        }
    }
    if promise.secs == u32::MAX {
        promise.secs = 0;
    }
    if !outcome.changed.is_empty() {
        let fids: Vec<_> = outcome.changed.iter().copied().collect();
        let volumes: Vec<_> = outcome.volumes.iter().copied().collect();
        let report = shared.callbacks.break_promises(Some(client), &fids, &volumes).await;
        if report.acked + report.lost > 0 {
            tracing::debug!(acked = report.acked, lost = report.lost, "callbacks broken");
        }
    }
    Ok((outcome, promise))
}

/// `PutChunksAndMutate`: the chunks are stored (and durable) before the record is applied, as
/// if the two requests had come one after the other. Small chunks (a small file's whole data)
/// are recorded in the record's own transaction: one commit, one sync.
pub async fn put_and_mutate(
    shared: &Arc<Shared>,
    caller: Caller,
    client: ClientId,
    chunks: Vec<ChunkRef>,
    record: Record,
    recv: &mut quinn::RecvStream,
) -> Reply {
    let small = chunks.len() <= MAX_INLINE_PUT && chunks.iter().all(|c| c.len > 0 && c.len <= INLINE_MAX);
    if !small {
        return match put_chunks(shared, chunks, recv).await {
            Reply::Message(Response::ChunksStored { .. }) => {
                mutate_with(shared, caller, client, Vec::new(), record).await
            }
            refused => refused,
        };
    }
    // At most 1 MiB, recorded in the record's own transaction (which checks the space again).
    let declared = total_len(&chunks);
    if !shared.store.space().measure().allows(declared) {
        // Blocking: below the mark, the store may first sweep what removals freed.
        let room = blocking(&shared.store, move |s| Ok(s.room_for(declared))).await;
        if !matches!(room, Ok(true)) {
            return refuse_upload(recv, RemoteError::NoSpace);
        }
    }
    let mut received = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let mut buf = vec![0u8; chunk.len as usize];
        if AsyncReadExt::read_exact(recv, &mut buf).await.is_err() {
            return error(RemoteError::Protocol("upload ended before all chunks arrived".into()));
        }
        match SmallChunk::new(chunk, buf) {
            Ok(c) => received.push(c),
            Err(e) => return error(e.to_remote()),
        }
    }
    mutate_with(shared, caller, client, received, record).await
}

pub async fn mutate(shared: &Arc<Shared>, caller: Caller, client: ClientId, record: Record) -> Reply {
    mutate_with(shared, caller, client, Vec::new(), record).await
}

async fn mutate_with(
    shared: &Arc<Shared>,
    caller: Caller,
    client: ClientId,
    chunks: Vec<SmallChunk>,
    record: Record,
) -> Reply {
    match apply(shared, caller, client, None, chunks, vec![record]).await {
        Ok((mut outcome, promise)) => match outcome.results.pop() {
            Some(result) => Response::Applied { result, promise }.into(),
            None => error(RemoteError::Internal("no result".into())),
        },
        Err(e) => error(e),
    }
}

pub async fn reintegrate(
    shared: &Arc<Shared>,
    caller: Caller,
    client: ClientId,
    volume: VolumeId,
    records: Vec<Record>,
) -> Reply {
    if records.len() > MAX_BATCH {
        return error(RemoteError::TooLarge);
    }
    match apply(shared, caller, client, Some(volume), Vec::new(), records).await {
        Ok((outcome, promise)) => Response::Reintegrated { results: outcome.results, promise }.into(),
        Err(e) => error(e),
    }
}
