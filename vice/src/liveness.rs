//! A running server says so in the cell database: it keeps a lease alive under `alive/ID`
//! (`vos listaddrs` shows who is up; clients skip servers whose lease lapsed), and it watches
//! the protection database so a change made on any server (a deleted user, a new group
//! member) takes effect here at once instead of when the identity cache times out.

use std::sync::Arc;
use std::time::Duration;

use proto::msg::ServerInfo;
use tokio_util::sync::CancellationToken;
use volumes::celldb::registry::ALIVE_TTL;

use crate::handlers::blocking;
use crate::server::Shared;

/// A lease is renewed three times per ttl, so one lost renewal does not mark a server dead.
const RENEW_EVERY: Duration = Duration::from_millis(ALIVE_TTL.as_millis() as u64 / 3);

pub async fn announce(shared: Arc<Shared>, fingerprint: String, shutdown: CancellationToken) {
    if shared.pts.is_none() {
        // The registry is the first server's; it lists this one from its JoinCell.
        return;
    }
    let (id, address) = (shared.server_id, shared.config.listen.clone());
    let info = ServerInfo { id, address: address.clone(), fingerprint };
    let mut lease = None;
    loop {
        lease = match lease {
            Some(l) => match blocking(&shared.registry, move |r| r.still_alive(l)).await {
                Ok(true) => Some(l),
                Ok(false) => {
                    tracing::warn!("this server's lease in the cell database lapsed; announcing it again");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew this server's lease in the cell database");
                    Some(l)
                }
            },
            None => None,
        };
        if lease.is_none() {
            let (info, address) = (info.clone(), address.clone());
            let announced = blocking(&shared.registry, move |r| {
                // A server started with another --listen is found at its new address.
                if r.servers()?.iter().find(|s| s.id == info.id) != Some(&info) {
                    r.register_server(&info)?;
                }
                r.announce(info.id, &address)
            })
            .await;
            match announced {
                Ok(l) => lease = Some(l),
                Err(e) => tracing::warn!(error = %e, "cannot announce this server in the cell database"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    if let Some(l) = lease {
        // Stopping cleanly: listed as down at once, not a ttl later.
        let _ = blocking(&shared.registry, move |r| r.leaving(l)).await;
    }
}

pub async fn forget_identities_on_change(shared: Arc<Shared>, shutdown: CancellationToken) {
    if shared.pts.is_none() {
        return;
    }
    let mut watch = match shared.cell_db.watch("pts/") {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the protection database; identities are cached for up to 30 s");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
                shared.identities.forget_all();
            }
        }
    }
}
