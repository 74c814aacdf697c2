//! FetchAcl and SetAclEntry: reading and changing a directory's access control list.

use std::sync::Arc;

use proto::auth::Rights;
use proto::msg::Response;
use proto::{ClientId, Fid};
use volumes::Caller;

use super::{Reply, blocking, error, pts};
use crate::replication::types::{Change, Outcome};
use crate::server::Shared;

pub async fn fetch(shared: &Arc<Shared>, caller: Caller, _client: ClientId, fid: Fid) -> Reply {
    let (acl, access) = match blocking(&shared.store, move |s| s.fetch_acl(&caller, fid)).await {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let ids: Vec<_> = acl.positive.iter().chain(&acl.negative).map(|(id, _)| *id).collect();
    match pts::names(shared, ids).await {
        Ok(names) => Response::Acl { acl, names, access }.into(),
        Err(e) => error(e),
    }
}

/// Changes one entry; every other client's promises on the directory (and the volume) break,
/// so the access rights they cached for it are dropped before the writer hears back.
pub async fn set_entry(
    shared: &Arc<Shared>,
    caller: Caller,
    client: ClientId,
    fid: Fid,
    who: String,
    rights: Rights,
    negative: bool,
) -> Reply {
    let id = match pts::resolve(shared, who).await {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let rights = Rights::from_bits(rights.bits());
    let changed = match shared.groups.get(fid.volume) {
        Some(group) => {
            let change = Change::SetAcl { caller, fid, who: id, rights, negative, now: proto::Timestamp::now() };
            match super::replica::propose(shared, &group, change).await {
                Ok(Outcome::Acl { attr, access }) => Ok((attr, access)),
                Ok(other) => Err(proto::RemoteError::Internal(format!("unexpected outcome {other:?}"))),
                Err(e) => Err(e),
            }
        }
        None => blocking(&shared.store, move |s| s.set_acl_entry(&caller, fid, id, rights, negative)).await,
    };
    match changed {
        Ok((attr, access)) => {
            shared.callbacks.break_promises(Some(client), &[fid], &[fid.volume]).await;
            let promise = shared.callbacks.grant(client, fid);
            tracing::info!(%fid, who = %id, %rights, negative, "acl changed");
            Response::Status { attr, promise, access }.into()
        }
        Err(e) => error(e),
    }
}
