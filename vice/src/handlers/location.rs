//! ValidateVolumes and the location service.

use std::sync::Arc;

use proto::msg::{AttrCheck, Promise, Response, VolumeRef, VolumeValidation};
use proto::{ClientId, RemoteError, VolumeId, VolumeStamp};

use super::{Reply, blocking, error};
use crate::server::Shared;

const MAX_VALIDATE: usize = 100_000;

/// One comparison per volume: a client whose stamp is current keeps everything it cached from
/// that volume, and gets a volume promise that the next change anywhere in it will break.
pub async fn validate(shared: &Arc<Shared>, client: ClientId, volumes: Vec<(VolumeId, VolumeStamp)>) -> Reply {
    if volumes.len() > MAX_VALIDATE {
        return error(RemoteError::TooLarge);
    }
    // A replicated volume this server does not lead is not vouched for here: its clients
    // revalidate what they cached with its leader (`ValidateAttrs` follows `NotLeader`).
    let mut led_elsewhere = std::collections::HashSet::new();
    for (v, _) in &volumes {
        if let crate::replication::Route::Elsewhere(_) = shared.groups.route(*v).await {
            led_elsewhere.insert(*v);
        }
    }
    let ids: Vec<VolumeId> = volumes.iter().map(|(v, _)| *v).collect();
    let current = match blocking(&shared.store, move |s| {
        Ok(ids.into_iter().map(|v| s.volume(v).ok().map(|i| i.stamp)).collect::<Vec<_>>())
    })
    .await
    {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let answers = volumes
        .into_iter()
        .zip(current)
        .map(|((volume, known), stamp)| {
            let valid = stamp == Some(known) && !led_elsewhere.contains(&volume);
            let promise = valid.then(|| shared.callbacks.grant_volume(client, volume));
            VolumeValidation { volume, stamp, valid, promise }
        })
        .collect();
    Response::Validated { volumes: answers }.into()
}

/// Objects per `ValidateAttrs`.
const MAX_VALIDATE_ATTRS: usize = 10_000;

/// Revalidates a batch of cached objects; promises on every one still there.
pub async fn validate_attrs(
    shared: &Arc<Shared>,
    caller: volumes::Caller,
    client: ClientId,
    objects: Vec<(proto::Fid, proto::VersionVector)>,
) -> Reply {
    if objects.len() > MAX_VALIDATE_ATTRS {
        return error(RemoteError::TooLarge);
    }
    let mut asked: Vec<VolumeId> = objects.iter().map(|(f, _)| f.volume).collect();
    asked.dedup();
    for v in asked {
        if let crate::replication::Route::Elsewhere(leader) = shared.groups.route(v).await {
            return error(RemoteError::NotLeader(leader));
        }
    }
    let ids: Vec<proto::Fid> = objects.iter().map(|(f, _)| *f).collect();
    let results = match blocking(&shared.store, move |s| s.validate_attrs(&caller, &objects)).await {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let mut promise = Promise { secs: u32::MAX };
    for (fid, r) in ids.iter().zip(&results) {
        if matches!(r, AttrCheck::Same { .. } | AttrCheck::Current { .. } | AttrCheck::Changed { .. }) {
            let p = shared.callbacks.grant(client, *fid);
            promise.secs = promise.secs.min(p.secs);
        }
    }
    if promise.secs == u32::MAX {
        promise.secs = 0;
    }
    Response::AttrsValidated { results, promise }.into()
}

pub async fn lookup(shared: &Arc<Shared>, volume: VolumeRef) -> Reply {
    let entry = match blocking(&shared.vldb, move |v| v.lookup(&volume)).await {
        Ok(Some(e)) => e,
        Ok(None) => return error(RemoteError::NoSuchVolume),
        Err(e) => return error(e),
    };
    match blocking(&shared.registry, |r| r.servers()).await {
        Ok(servers) => Response::Location { entry, servers }.into(),
        Err(e) => error(e),
    }
}

pub async fn servers(shared: &Arc<Shared>) -> Reply {
    match blocking(&shared.registry, |r| r.servers()).await {
        Ok(servers) => Response::Servers { servers }.into(),
        Err(e) => error(e),
    }
}

/// Every server with whether it is running (its lease in the cell database is alive).
pub async fn server_status(shared: &Arc<Shared>) -> Reply {
    let cell_db = shared.cell_db.describe();
    match blocking(&shared.registry, |r| r.status()).await {
        Ok(servers) => Response::ServerStatus { servers, cell_db }.into(),
        Err(e) => error(e),
    }
}
