//! Volume administration (`vos`): only for connections that present the admin credential.

use std::sync::Arc;

use proto::RemoteError;
use proto::msg::{Response, Site, SiteRole, VldbEntry, VolumeKind, VolumeRef, validate_volume_name};

use super::{Reply, blocking, error};
use crate::server::Shared;

pub async fn create(shared: &Arc<Shared>, name: String, quota: u64) -> Reply {
    if let Err(e) = validate_volume_name(&name) {
        return error(e);
    }
    let n = name.clone();
    match blocking(&shared.vldb, move |v| v.lookup(&VolumeRef::Name(n))).await {
        Ok(Some(_)) => return error(RemoteError::Exists),
        Ok(None) => {}
        Err(e) => return error(e),
    }
    let id = match blocking(&shared.vldb, |v| v.allocate_volume_id()).await {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let vname = name.clone();
    let info = match blocking(&shared.store, move |s| {
        s.create_volume(id, &vname, VolumeKind::ReadWrite, quota, &proto::Acl::volume_default())
    })
    .await
    {
        Ok(info) => info,
        Err(e) => return error(e),
    };
    let entry = VldbEntry {
        name,
        rw: id,
        ro: None,
        backup: None,
        sites: vec![Site { server: shared.server_id, role: SiteRole::ReadWrite }],
    };
    let e2 = entry.clone();
    if let Err(e) = blocking(&shared.vldb, move |v| v.create(&e2)).await {
        // Keep the store and the VLDB in agreement: undo the volume.
        let _ = blocking(&shared.store, move |s| s.remove_volume(id)).await;
        return error(e);
    }
    tracing::info!(volume = %info.name, id = %info.id, "volume created");
    Response::Volume { info, entry: Some(entry) }.into()
}

pub async fn remove(shared: &Arc<Shared>, name: String) -> Reply {
    let n = name.clone();
    let entry = match blocking(&shared.vldb, move |v| v.lookup(&VolumeRef::Name(n))).await {
        Ok(Some(e)) if e.name == name => e,
        Ok(_) => return error(RemoteError::NoSuchVolume),
        Err(e) => return error(e),
    };
    let id = entry.rw;
    match blocking(&shared.store, move |s| s.remove_volume(id)).await {
        Ok(()) | Err(RemoteError::NoSuchVolume) => {}
        Err(e) => return error(e),
    }
    let n = name.clone();
    if let Err(e) = blocking(&shared.vldb, move |v| v.remove(&n)).await {
        return error(e);
    }
    // Anyone holding anything from the volume must forget it.
    shared.callbacks.break_volume(id).await;
    tracing::info!(volume = %name, "volume removed");
    Response::Done.into()
}

/// Renames a location entry (the servers' copies are renamed by `vos` one by one).
pub async fn vldb_rename(shared: &Arc<Shared>, name: String, new_name: String) -> Reply {
    if let Err(e) = validate_volume_name(&new_name) {
        return error(e);
    }
    let (n, nn) = (name.clone(), new_name.clone());
    match blocking(&shared.vldb, move |v| v.rename(&n, &nn)).await {
        Ok(()) => {
            tracing::info!(from = %name, to = %new_name, "location entry renamed");
            Response::Done.into()
        }
        Err(e) => error(e),
    }
}

pub async fn list_vldb(shared: &Arc<Shared>) -> Reply {
    match blocking(&shared.vldb, |v| v.list()).await {
        Ok(entries) => Response::Vldb { entries }.into(),
        Err(e) => error(e),
    }
}

/// A volume of this server's store (by its name here), with its location entry where this
/// server holds the location database.
pub async fn examine(shared: &Arc<Shared>, name: String) -> Reply {
    let n = name.clone();
    let entry = blocking(&shared.vldb, move |v| v.lookup(&VolumeRef::Name(n))).await.ok().flatten();
    let local = name.clone();
    let id = match blocking(&shared.store, move |s| s.volume_by_name(&local)).await {
        Ok(Some(info)) => info.id,
        Ok(None) => match &entry {
            Some(e) => e.rw,
            None => return error(RemoteError::NoSuchVolume),
        },
        Err(e) => return error(e),
    };
    match blocking(&shared.store, move |s| s.volume(id)).await {
        Ok(info) => Response::Volume { info, entry }.into(),
        Err(e) => error(e),
    }
}

pub async fn list_volumes(shared: &Arc<Shared>) -> Reply {
    match blocking(&shared.store, |s| s.list_volumes()).await {
        Ok(volumes) => Response::Volumes { volumes }.into(),
        Err(e) => error(e),
    }
}

/// Registers a server joining the cell (database server only).
pub async fn join(shared: &Arc<Shared>, address: String, fingerprint: String) -> Reply {
    if address.parse::<std::net::SocketAddr>().is_err() || !fingerprint.starts_with("b3:") {
        return error(RemoteError::Invalid("JoinCell needs an IP:PORT and a b3: fingerprint".into()));
    }
    if let Some(db) = &shared.config.cell_db {
        return error(RemoteError::Invalid(format!(
            "this cell's database is {db}: join it there, with `vice init --join CELLFILE --cell-db {db}`"
        )));
    }
    let addr = address.clone();
    let registered = blocking(&shared.registry, move |r| {
        let servers = r.servers()?;
        if let Some(s) = servers.iter().find(|s| s.address == addr || s.fingerprint == fingerprint) {
            return Err(volumes::StoreError::Refused(RemoteError::Invalid(format!(
                "server {} at {} is already in the cell",
                s.id, s.address
            ))));
        }
        let id = r.allocate_server_id()?;
        r.register_server(&proto::msg::ServerInfo { id, address: addr, fingerprint })?;
        Ok((id, r.servers()?))
    })
    .await;
    match registered {
        Ok((server, servers)) => {
            tracing::info!(server = %server, %address, "server joined the cell");
            Response::Joined {
                server,
                cell: shared.config.cell.clone(),
                token_key: shared.token_key.to_hex(),
                admins: shared.config.admins.clone(),
                servers,
            }
            .into()
        }
        Err(e) => error(e),
    }
}

/// Makes an empty volume in this server's store, with an id the location database allocated
/// (`vos create --server` on a server that does not hold the databases).
pub async fn create_here(shared: &Arc<Shared>, id: proto::VolumeId, name: String, quota: u64) -> Reply {
    if let Err(e) = validate_volume_name(&name) {
        return error(e);
    }
    let acl = proto::Acl::volume_default();
    match blocking(&shared.store, move |s| s.create_volume(id, &name, VolumeKind::ReadWrite, quota, &acl)).await {
        Ok(info) => {
            tracing::info!(volume = %info.name, id = %info.id, "volume created");
            Response::Volume { info, entry: None }.into()
        }
        Err(e) => error(e),
    }
}
