//! Whole-volume operations for `vos` on this server's store: dump, restore, clone, quota,
//! rename, freeze, removal. Admin only; `vos` keeps the location database in step.

use std::io::{Read, Write};
use std::sync::Arc;

use proto::msg::{Response, VldbEntry, VolumeKind, VolumeRef, validate_volume_name_of};
use proto::{RemoteError, Timestamp, VolumeId};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{Reply, blocking, error};
use crate::replication::types::Change;
use crate::server::Shared;

/// Bytes handed between the blocking store and the network at a time.
const PIECE: usize = 256 * 1024;

/// The read-write entry named exactly `name` (not a `.backup` or `.readonly` name).
async fn entry_of(shared: &Shared, name: &str) -> Result<VldbEntry, RemoteError> {
    let n = name.to_string();
    match blocking(&shared.vldb, move |v| v.lookup(&VolumeRef::Name(n))).await? {
        Some(e) if e.name == name => Ok(e),
        _ => Err(RemoteError::NoSuchVolume),
    }
}

/// The volume a name means on this server: `NAME` or `NAME.backup`, as this server's store
/// names it (servers without the location database know their own volumes).
pub(super) async fn volume_named(shared: &Shared, name: &str) -> Result<VolumeId, RemoteError> {
    if let Ok(Some(info)) = shared.store.volume_by_name(name) {
        return Ok(info.id);
    }
    if let Some(base) = name.strip_suffix(".backup") {
        return entry_of(shared, base).await?.backup.ok_or(RemoteError::NoSuchVolume);
    }
    Ok(entry_of(shared, name).await?.rw)
}

/// A `Write` that hands bytes to the async side in pieces.
struct ToNetwork {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ToNetwork {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
            self.tx.blocking_send(piece).map_err(|_| std::io::Error::other("the client went away"))?;
        }
        Ok(())
    }
}

/// A `Read` fed by the async side; ends when the client ends its stream.
struct FromNetwork {
    rx: mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl Read for FromNetwork {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.blocking_recv() {
                Some(p) => (self.piece, self.at) = (p, 0),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.piece.len() - self.at);
        out[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

pub async fn dump(shared: &Arc<Shared>, name: String, since: Option<Timestamp>) -> Reply {
    let id = match volume_named(shared, &name).await {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let stamp = match blocking(&shared.store, move |s| s.volume(id)).await {
        Ok(info) => info.stamp,
        Err(e) => return error(e),
    };
    let (tx, rx) = mpsc::channel(4);
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ToNetwork { tx, buf: Vec::with_capacity(PIECE) };
        match store.dump(id, since, &mut out).and_then(|s| out.flush().map(|()| s).map_err(Into::into)) {
            Ok(s) => tracing::info!(volume = %name, objects = s.objects, chunks = s.chunks, bytes = s.bytes, "dumped"),
            // The stream ends early; the reader sees a dump without its end and refuses it.
            Err(e) => tracing::warn!(volume = %name, error = %e, "dump failed"),
        }
    });
    Reply::Stream { response: Response::Dumping { stamp }, body: rx }
}

/// Restores into volume `id` of this store (`vos restore`, a move's target, a release's
/// replica); the location database is kept by `vos`. Every promise on the volume is broken:
/// what clients cached of it may be gone or different now.
pub async fn restore_here(
    shared: &Arc<Shared>,
    id: VolumeId,
    name: String,
    overwrite: bool,
    kind: VolumeKind,
    recv: &mut quinn::RecvStream,
) -> Reply {
    if let Err(e) = validate_volume_name_of(kind, &name) {
        return error(e);
    }
    match restore_into(shared, id, &name, kind, overwrite, recv).await {
        Ok((info, summary)) => {
            // A volume moved away and now back is served here again.
            shared.moved.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            shared.callbacks.break_volume(id).await;
            tracing::info!(volume = %name, objects = summary.objects, chunks = summary.chunks, "restored");
            Response::Restored { info, objects: summary.objects, chunks: summary.chunks, bytes: summary.bytes }.into()
        }
        Err(e) => error(e),
    }
}

/// Streams the dump on `recv` into the store's restore (on a blocking thread).
async fn restore_into(
    shared: &Arc<Shared>,
    id: VolumeId,
    name: &str,
    kind: VolumeKind,
    overwrite: bool,
    recv: &mut quinn::RecvStream,
) -> Result<(proto::msg::VolumeInfo, volumes::dump::DumpSummary), RemoteError> {
    let (tx, rx) = mpsc::channel(4);
    let target = name.to_string();
    let restoring = tokio::task::spawn_blocking({
        let store = shared.store.clone();
        move || {
            let mut input = FromNetwork { rx, piece: Vec::new(), at: 0 };
            let result = store.restore(&mut input, id, &target, kind, overwrite);
            // Drain what the client still sends, so it hears the answer rather than a reset.
            while input.read(&mut [0u8; 4096]).map(|n| n > 0).unwrap_or(false) {}
            result
        }
    });
    let mut buf = vec![0u8; PIECE];
    loop {
        match AsyncReadExt::read(recv, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    match restoring.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_remote()),
        Err(_) => Err(RemoteError::Internal("restore task failed".into())),
    }
}

/// Makes (or remakes) a clone of a volume in this store (`vos backup`).
pub async fn clone_here(shared: &Arc<Shared>, source: VolumeId, id: VolumeId, name: String, kind: VolumeKind) -> Reply {
    if kind == VolumeKind::ReadWrite {
        return error(RemoteError::Invalid("a clone is read-only or a backup".into()));
    }
    if let Err(e) = validate_volume_name_of(kind, &name) {
        return error(e);
    }
    match blocking(&shared.store, move |s| s.clone_volume(source, id, &name, kind)).await {
        Ok(info) => {
            // Clients that cached the previous clone must look again.
            shared.callbacks.break_volume(id).await;
            Response::Volume { info, entry: None }.into()
        }
        Err(e) => error(e),
    }
}

pub async fn set_quota(shared: &Arc<Shared>, name: String, quota: u64) -> Reply {
    let id = match volume_named(shared, &name).await {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let entry = blocking(&shared.vldb, move |v| v.lookup(&VolumeRef::Name(name))).await.ok().flatten();
    if let Some(group) = shared.groups.get(id) {
        if let Err(e) = group.current(shared.server_id).await {
            return error(e);
        }
        if let Err(e) = super::replica::propose(shared, &group, Change::SetQuota { quota }).await {
            return error(e);
        }
    }
    let replicated = shared.groups.get(id).is_some();
    match blocking(&shared.store, move |s| {
        if !replicated {
            s.set_quota(id, quota)?;
        }
        s.volume(id)
    })
    .await
    {
        Ok(info) => Response::Volume { info, entry }.into(),
        Err(e) => error(e),
    }
}

pub async fn rename_here(shared: &Arc<Shared>, id: VolumeId, name: String) -> Reply {
    let kind = match blocking(&shared.store, move |s| s.volume(id)).await {
        Ok(info) => info.kind,
        Err(e) => return error(e),
    };
    if let Err(e) = validate_volume_name_of(kind, &name) {
        return error(e);
    }
    if let Some(group) = shared.groups.get(id) {
        // Every member renames its copy when it applies the entry.
        if let Err(e) = group.current(shared.server_id).await {
            return error(e);
        }
        return match super::replica::propose(shared, &group, Change::Rename { name }).await {
            Ok(_) => match blocking(&shared.store, move |s| s.volume(id)).await {
                Ok(info) => Response::Volume { info, entry: None }.into(),
                Err(e) => error(e),
            },
            Err(e) => error(e),
        };
    }
    match blocking(&shared.store, move |s| s.rename_volume(id, &name).and_then(|()| s.volume(id))).await {
        Ok(info) => {
            tracing::info!(volume = %id, to = %info.name, "volume renamed");
            Response::Volume { info, entry: None }.into()
        }
        Err(e) => error(e),
    }
}

/// Drops a volume from this store (a failed move's target, a removed replica or backup).
pub async fn remove_here(shared: &Arc<Shared>, id: VolumeId) -> Reply {
    if shared.groups.get(id).is_some() {
        // A replicated volume being removed (`vos remove` asks every member): this member
        // leaves its group, forgetting the log, and drops its copy.
        return match super::replica::leave_group(shared, id).await {
            Ok(()) => Response::Done.into(),
            Err(e) => error(e),
        };
    }
    match blocking(&shared.store, move |s| s.remove_volume(id)).await {
        Ok(()) | Err(RemoteError::NoSuchVolume) => {
            shared.callbacks.break_volume(id).await;
            Response::Done.into()
        }
        Err(e) => error(e),
    }
}

/// With `fence`, the freeze lasts while that lock is held (see `locks::watch_frozen`).
pub fn freeze(shared: &Arc<Shared>, id: VolumeId, frozen: bool, fence: Option<proto::msg::Fence>) -> Reply {
    let mut set = shared.frozen.lock().unwrap_or_else(|p| p.into_inner());
    let token = fence.as_ref().map(|f| f.token);
    if frozen {
        set.insert(id, fence);
    } else {
        set.remove(&id);
    }
    tracing::info!(volume = %id, frozen, ?token, "volume freeze");
    Response::Done.into()
}

/// The move is done: the volume leaves this store, and requests about it are told it moved.
pub async fn moved_away(shared: &Arc<Shared>, id: VolumeId) -> Reply {
    shared.moved.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    shared.frozen.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    shared.callbacks.break_volume(id).await;
    match blocking(&shared.store, move |s| s.remove_volume(id)).await {
        Ok(()) | Err(RemoteError::NoSuchVolume) => {
            tracing::info!(volume = %id, "volume moved away");
            Response::Done.into()
        }
        Err(e) => error(e),
    }
}
