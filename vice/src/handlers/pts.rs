//! Login and the protection database (`pts`): users, groups and passwords.

use std::sync::Arc;

use proto::RemoteError;
use proto::auth::{PtsId, TokenBody, unix_now};
use proto::msg::{PtsEntry, Response};
use volumes::{Caller, Ptdb, StoreError};

use super::{Reply, error};
use crate::server::{Peer, Shared};

async fn on_db<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&Ptdb) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RemoteError> {
    match &shared.pts {
        Some(db) => super::blocking(db, f).await,
        None => Err(RemoteError::Invalid(
            "this server does not hold the protection database; ask the cell's database server".into(),
        )),
    }
}

/// Trades a password for a token of the asked lifetime, capped by the server's.
pub async fn login(shared: &Arc<Shared>, user: String, password: String, lifetime: u32) -> Reply {
    let name = user.clone();
    let found = on_db(shared, move |db| {
        let id = db.login(&user, &password)?;
        let groups = db.caller(id)?.map(|c| c.cps).unwrap_or_default();
        Ok((id, groups))
    })
    .await;
    let (id, groups) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::info!(user = %name, error = %e, "login refused");
            return error(e);
        }
    };
    let max = shared.config.token_lifetime_secs;
    let lifetime = if lifetime == 0 { max } else { lifetime.min(max) };
    let now = unix_now();
    let token = shared.token_key.issue(TokenBody {
        cell: shared.config.cell.clone(),
        user: id,
        name: name.clone(),
        issued: now,
        expires: now + i64::from(lifetime),
        groups: groups
            .into_iter()
            .filter(|g| g.is_group() && !matches!(*g, PtsId::ANYUSER | PtsId::AUTHUSER))
            .collect(),
    });
    tracing::info!(user = %name, id = %id, lifetime, "token issued");
    Response::Token { token }.into()
}

/// A change to users or groups; cached identities are dropped so it takes effect at once.
pub async fn change(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Ptdb) -> Result<PtsEntry, StoreError> + Send + 'static,
) -> Reply {
    let result = on_db(shared, f).await;
    shared.identities.forget_all();
    match result {
        Ok(entry) => Response::PtsEntry { entry }.into(),
        Err(e) => error(e),
    }
}

pub async fn delete(shared: &Arc<Shared>, name: String) -> Reply {
    let result = on_db(shared, move |db| db.delete(&name)).await;
    shared.identities.forget_all();
    match result {
        Ok(()) => Response::Done.into(),
        Err(e) => error(e),
    }
}

pub async fn look(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Ptdb) -> Result<PtsEntry, StoreError> + Send + 'static,
) -> Reply {
    match on_db(shared, f).await {
        Ok(entry) => Response::PtsEntry { entry }.into(),
        Err(e) => error(e),
    }
}

pub async fn list(shared: &Arc<Shared>) -> Reply {
    match on_db(shared, |db| db.list()).await {
        Ok(entries) => Response::PtsEntries { entries }.into(),
        Err(e) => error(e),
    }
}

/// Administrators set anyone's password; users their own.
pub async fn set_password(shared: &Arc<Shared>, peer: &Peer, caller: Caller, user: String, password: String) -> Reply {
    let admin = peer.admin || caller.is_admin();
    let result = on_db(shared, move |db| {
        if !admin && db.id_of(&user)? != Some(caller.user) {
            return Err(StoreError::Refused(RemoteError::NotAdmin));
        }
        db.set_password(&user, &password)
    })
    .await;
    match result {
        Ok(()) => Response::Done.into(),
        Err(e) => error(e),
    }
}

/// Resolves an ACL entry's name: a user or group name, or a numeric id.
pub async fn resolve(shared: &Shared, who: String) -> Result<proto::PtsId, RemoteError> {
    if let Ok(n) = who.parse::<i32>() {
        return Ok(proto::PtsId(n));
    }
    let name = who.clone();
    on_db(shared, move |db| db.id_of(&name))
        .await?
        .ok_or_else(|| RemoteError::Invalid(format!("no such user or group: {who}")))
}

/// Names for the ids in an ACL (ids of deleted entries stay numeric).
pub async fn names(shared: &Shared, ids: Vec<proto::PtsId>) -> Result<Vec<(proto::PtsId, String)>, RemoteError> {
    on_db(shared, move |db| db.names(&ids)).await
}
