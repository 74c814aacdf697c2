//! RequestPermit, ReturnPermit, and which volumes a request must have clear of other clients'
//! permits before it is served (`crate::permits`).

use std::sync::Arc;

use proto::msg::{Request, Response, VolumeKind};
use proto::{ClientId, VolumeId};

use super::{Reply, blocking, volume_ops};
use crate::permits::Ask;
use crate::server::Shared;

/// The volumes whose state `req` reads, changes, validates or copies: each must be clear of
/// another client's write-back permit first. `GetVolumeSpace` is left out (a `df` figure is an
/// estimate anyway), and so are requests about the permits themselves.
pub async fn touched(shared: &Arc<Shared>, req: &Request) -> Vec<VolumeId> {
    let mut volumes = match req {
        Request::Fenced { request, .. } => return Box::pin(touched(shared, request)).await,
        Request::RequestPermit { .. } | Request::ReturnPermit { .. } | Request::GetVolumeSpace { .. } => Vec::new(),
        Request::ValidateAttrs { objects } => objects.iter().map(|(fid, _)| fid.volume).collect(),
        Request::ValidateVolumes { volumes } => volumes.iter().map(|(v, _)| *v).collect(),
        // What admins copy or take away: the copy must hold everything the holder returned.
        Request::DumpVolume { name, .. } => volume_ops::volume_named(shared, name).await.into_iter().collect(),
        Request::CloneVolumeHere { source, .. } => vec![*source],
        Request::FreezeVolume { id, frozen: true }
        | Request::RemoveVolumeHere { id }
        | Request::VolumeMovedAway { id }
        | Request::RestoreVolumeHere { id, overwrite: true, .. } => vec![*id],
        other => other.meta().volume.into_iter().collect(),
    };
    volumes.sort_unstable();
    volumes.dedup();
    volumes
}

/// How long a client waits before asking again for a permit on a replicated volume.
const REPLICATED_RETRY_SECS: u32 = 3600;

pub async fn ask(shared: &Arc<Shared>, client: ClientId, volume: VolumeId) -> Reply {
    if shared.groups.get(volume).is_some() {
        // A permit lives in one server's memory and would not survive a change of leader:
        // replicated volumes are written through (every change committed before its reply).
        return Response::PermitRefused { retry_secs: REPLICATED_RETRY_SECS }.into();
    }
    let info = blocking(&shared.store, move |s| s.volume(volume)).await;
    let frozen = shared.frozen.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&volume);
    let moved = shared.moved.lock().unwrap_or_else(|p| p.into_inner()).contains(&volume);
    let writable = info.is_ok_and(|i| i.kind == VolumeKind::ReadWrite) && !frozen && !moved;
    match shared.permits.ask(client, volume, writable, &shared.callbacks, &shared.store).await {
        Ask::Granted(lease) => Response::Permit { lease_secs: secs(lease) }.into(),
        Ask::Refused(wait) => Response::PermitRefused { retry_secs: secs(wait).max(1) }.into(),
    }
}

pub async fn give_back(shared: &Arc<Shared>, client: ClientId, volume: VolumeId) -> Reply {
    shared.permits.give_back(client, volume, &shared.store).await;
    Response::Done.into()
}

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}
