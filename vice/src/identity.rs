//! Who a request comes from: a token checked against the cell's key, and the user's groups from
//! the protection database, remembered briefly so a busy client does not cost a database read
//! per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::RemoteError;
use proto::auth::{PtsId, Token, unix_now};
use volumes::Caller;

use crate::server::{Peer, Shared};

/// Group changes made on another server of the cell show up within this long; changes made
/// here at once (they clear the cache).
const FRESH_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Identities {
    cache: Mutex<HashMap<PtsId, (Caller, Instant)>>,
}

impl Identities {
    pub fn forget_all(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn cached(&self, user: PtsId) -> Option<Caller> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&user).filter(|(_, at)| at.elapsed() < FRESH_FOR).map(|(c, _)| c.clone())
    }

    /// What was last known of `user`, however old.
    fn last_known(&self, user: PtsId) -> Option<Caller> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&user).map(|(c, _)| c.clone())
    }

    fn remember(&self, user: PtsId, caller: &Caller) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(user, (caller.clone(), Instant::now()));
    }
}

/// The caller of one request. No token: anonymous (or the cell administrator, for connections
/// that present the admin credential). A token that does not verify is refused outright rather
/// than downgraded, so a client learns at once that its token is bad.
pub async fn identify(shared: &Shared, peer: &Peer, token: Option<&Token>) -> Result<Caller, RemoteError> {
    let Some(token) = token else {
        return Ok(if peer.admin { Caller::administrator() } else { Caller::anonymous() });
    };
    let body = shared
        .token_key
        .verify(token, &shared.config.cell, unix_now())
        .map_err(|e| RemoteError::BadToken(e.to_string()))?;
    let user = body.user;
    let Some(pts) = shared.pts.clone() else {
        // A server without the protection database goes by the groups the token carries.
        return Ok(Caller::user(user, body.groups.iter().copied()));
    };
    if let Some(c) = shared.identities.cached(user) {
        return Ok(c);
    }
    let found = tokio::task::spawn_blocking(move || pts.caller(user))
        .await
        .map_err(|_| RemoteError::Internal("identity lookup failed".into()))?;
    let found = match found {
        Ok(found) => found,
        // The cell database is unreachable: file service goes on, by what was last known of
        // the user, or else by the groups its token (signed by the cell's key) carries.
        Err(volumes::StoreError::Unavailable(e)) => {
            tracing::debug!(error = %e, user = %user, "identity from the token: cell database unavailable");
            return Ok(shared
                .identities
                .last_known(user)
                .unwrap_or_else(|| Caller::user(user, body.groups.iter().copied())));
        }
        Err(e) => return Err(e.to_remote()),
    };
    match found {
        Some(caller) => {
            shared.identities.remember(user, &caller);
            Ok(caller)
        }
        None => Err(RemoteError::BadToken(format!("user {} no longer exists", body.name))),
    }
}
