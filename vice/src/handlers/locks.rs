//! Admin locks with fencing tokens (see `volumes::celldb::locks`): `vos` takes a volume's lock
//! through any server, renews it while it works, and sends each step of its operation
//! `Fenced`. A fenced step is done only while its lock is held; a frozen volume whose freezing
//! lock ran out unfreezes itself (see [`watch_frozen`]).

use std::sync::Arc;
use std::time::Duration;

use proto::msg::{Fence, Response, SiteRole, Unfinished, VolumeRef};
use proto::{RemoteError, VolumeId};
use tokio_util::sync::CancellationToken;

use super::{Reply, blocking, error};
use crate::server::Shared;

pub async fn take(shared: &Arc<Shared>, volume: String, purpose: String, ttl_secs: u32) -> Reply {
    let ttl = Duration::from_secs(u64::from(ttl_secs));
    let name = volume.clone();
    match blocking(&shared.locks, move |l| l.take(&name, &purpose, ttl)).await {
        Ok((fence, unfinished)) => {
            tracing::info!(volume = %volume, token = fence.token, ?unfinished, "admin lock taken");
            let ttl_secs = ttl.clamp(Duration::from_secs(1), volumes::celldb::locks::MAX_LOCK_TTL).as_secs() as u32;
            Response::Locked { fence, ttl_secs, unfinished }.into()
        }
        Err(e) => error(e),
    }
}

pub async fn renew(shared: &Arc<Shared>, fence: Fence) -> Reply {
    done(blocking(&shared.locks, move |l| l.renew(&fence)).await)
}

pub async fn release(shared: &Arc<Shared>, fence: Fence) -> Reply {
    done(blocking(&shared.locks, move |l| l.release(&fence)).await)
}

pub async fn note(shared: &Arc<Shared>, fence: Fence, unfinished: Option<Unfinished>) -> Reply {
    done(blocking(&shared.locks, move |l| l.note(&fence, unfinished.as_ref())).await)
}

fn done(r: Result<(), RemoteError>) -> Reply {
    match r {
        Ok(()) => Response::Done.into(),
        Err(e) => error(e),
    }
}

/// Whether a step fenced by `fence` may go ahead: its token is not older than one this server
/// has seen for the volume, and (where this server reaches the cell database) the lock is held.
pub async fn check(shared: &Arc<Shared>, fence: &Fence) -> Result<(), RemoteError> {
    {
        let mut seen = shared.fences.lock().unwrap_or_else(|p| p.into_inner());
        let newest = seen.entry(fence.volume.clone()).or_insert(fence.token);
        if fence.token < *newest {
            return Err(volumes::celldb::locks::stale(fence));
        }
        *newest = fence.token;
    }
    if shared.pts.is_none() {
        // A server that joined a cell whose database is the first server's SQLite cannot ask
        // it: the newest-token rule above is what it can enforce.
        return Ok(());
    }
    let f = fence.clone();
    blocking(&shared.locks, move |l| l.check(&f)).await
}

/// How often frozen volumes' locks are checked.
const FROZEN_CHECK: Duration = Duration::from_secs(1);

/// Unfreezes volumes whose freezing lock is gone (the `vos` that froze them died). If the
/// location entry already names another server, the move had switched: the volume is moved
/// away instead, as the `vos` would have done, so no client writes to a copy nobody reads.
pub async fn watch_frozen(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(FROZEN_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let fenced: Vec<(VolumeId, Fence)> = shared
            .frozen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(id, f)| f.clone().map(|f| (*id, f)))
            .collect();
        for (id, fence) in fenced {
            let f = fence.clone();
            // An unreachable database says nothing: the volume stays frozen until it answers.
            let Ok(false) = blocking(&shared.locks, move |l| l.holds(&f)).await else { continue };
            let entry = blocking(&shared.vldb, move |v| v.lookup(&VolumeRef::Id(id))).await;
            let Ok(entry) = entry else { continue };
            let here = entry
                .as_ref()
                .is_none_or(|e| e.sites.iter().any(|s| s.role == SiteRole::ReadWrite && s.server == shared.server_id));
            if here {
                let mut frozen = shared.frozen.lock().unwrap_or_else(|p| p.into_inner());
                if frozen.get(&id) == Some(&Some(fence.clone())) {
                    frozen.remove(&id);
                    tracing::warn!(volume = %id, token = fence.token, "the lock that froze this volume ran out; unfrozen");
                }
            } else {
                tracing::warn!(volume = %id, token = fence.token, "the lock that froze this volume ran out after its move switched; moving away");
                let _ = super::volume_ops::moved_away(&shared, id).await;
            }
        }
    }
}

/// Lets go of the read-write volumes this server holds that the location database places on
/// another server while no admin works on them: a move switched and its `vos` died before the
/// source let go (and this server restarted meanwhile, forgetting the freeze), or a move was
/// rolled back while this server, its target, was down. Nobody reads those copies, and a
/// client that remembers this server is sent to the right one (`VolumeMoved`). Run once at
/// start; a database it cannot ask leaves everything as it is.
pub async fn reconcile(shared: Arc<Shared>) {
    let Ok(held) = blocking(&shared.store, |s| s.list_volumes()).await else { return };
    for v in held.into_iter().filter(|v| v.kind == proto::msg::VolumeKind::ReadWrite) {
        let id = v.id;
        let Ok(Some(entry)) = blocking(&shared.vldb, move |l| l.lookup(&VolumeRef::Id(id))).await else { continue };
        let rw_site = entry.sites.iter().find(|s| s.role == SiteRole::ReadWrite).map(|s| s.server);
        if entry.rw != id || rw_site.is_none_or(|s| s == shared.server_id) {
            continue;
        }
        let name = entry.name.clone();
        if !matches!(blocking(&shared.locks, move |l| l.is_locked(&name)).await, Ok(false)) {
            continue;
        }
        tracing::warn!(volume = %id, name = %entry.name, "the location database places this volume elsewhere; letting go of this copy");
        let _ = super::volume_ops::moved_away(&shared, id).await;
    }
}
