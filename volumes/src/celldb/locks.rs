//! Locks of admin operations on one volume (`vos move`, `release`, `addsite`, `remsite`,
//! `restore`), with fencing tokens.
//!
//! ```text
//! lock/NAME           who holds volume NAME's lock (JSON LockInfo), under the holder's lease
//! op/NAME             an operation on NAME that its holder has not finished (JSON Unfinished)
//! ```
//!
//! A lock is a key put under a lease only if it does not exist; its creation revision is the
//! **fencing token**. The holder (a `vos`) keeps the lease alive through any server of the
//! cell; if it dies, the lease runs out and the lock is gone. Servers check the token on every
//! step of the operation and refuse a stale one (a `vos` that was paused past its lease, say),
//! and location updates are conditioned on the lock in the same transaction, so two admins can
//! never both act on one volume. `op/NAME` outlives the lock, so the next holder finds what was
//! left half done and finishes it or rolls it back.

use std::sync::Arc;
use std::time::Duration;

use proto::RemoteError;
use proto::msg::{Fence, Unfinished};
use serde::{Deserialize, Serialize};

use super::{CellDb, Committed, Compare, Op, Txn, get_json};
use crate::error::{Result, refuse};

/// The longest lease a lock may have: a holder that stops renewing frees it within this.
pub const MAX_LOCK_TTL: Duration = Duration::from_secs(60);

fn lock_key(volume: &str) -> String {
    format!("lock/{volume}")
}

fn op_key(volume: &str) -> String {
    format!("op/{volume}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockInfo {
    purpose: String,
    since: i64,
    ttl_secs: u64,
}

/// The condition that `fence`'s lock is still held by its holder.
pub fn still_held(fence: &Fence) -> Compare {
    Compare::CreateRev(lock_key(&fence.volume), fence.token)
}

/// The condition that nobody holds volume `volume`'s lock (for a change made without one).
pub fn unlocked(volume: &str) -> Compare {
    Compare::Missing(lock_key(volume))
}

/// The refusal of a change made without the lock while an admin holds it.
pub fn locked_by_another(volume: &str) -> RemoteError {
    RemoteError::Locked(format!("{volume} is locked by an admin operation; its location entry was not changed"))
}

/// The refusal of a stale fencing token.
pub fn stale(fence: &Fence) -> RemoteError {
    RemoteError::StaleFence(format!(
        "the lock on {} with token {} is no longer held (its lease ran out, or another admin took it)",
        fence.volume, fence.token
    ))
}

#[derive(Clone)]
pub struct Locks {
    db: Arc<dyn CellDb>,
}

impl Locks {
    pub fn new(db: Arc<dyn CellDb>) -> Self {
        Locks { db }
    }

    /// Takes volume `volume`'s lock for `purpose` (said to whoever finds it taken), under a
    /// lease of `ttl`; with what an earlier holder left unfinished.
    pub fn take(&self, volume: &str, purpose: &str, ttl: Duration) -> Result<(Fence, Option<Unfinished>)> {
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_LOCK_TTL);
        let lease = self.db.grant(ttl)?;
        let info = LockInfo { purpose: purpose.to_string(), since: proto::auth::unix_now(), ttl_secs: ttl.as_secs() };
        let txn =
            Txn::new().when(Compare::Missing(lock_key(volume))).then(Op::put_leased(lock_key(volume), &info, lease));
        match self.db.txn(txn)? {
            Committed::At(rev) => {
                let fence = Fence { volume: volume.to_string(), token: rev };
                let unfinished = get_json::<Unfinished>(&*self.db, &op_key(volume))?.map(|(u, _)| u);
                Ok((fence, unfinished))
            }
            Committed::ConditionFailed => {
                let _ = self.db.revoke(lease);
                let holder = get_json::<LockInfo>(&*self.db, &lock_key(volume))?;
                let what = match holder {
                    Some((h, _)) => format!(
                        "{volume} is locked by another admin ({}, for {} s now); the lock ends within {} s of its holder stopping",
                        h.purpose,
                        (proto::auth::unix_now() - h.since).max(0),
                        h.ttl_secs
                    ),
                    None => format!("{volume} was locked a moment ago; try again"),
                };
                refuse(RemoteError::Locked(what))
            }
        }
    }

    /// Whether anyone holds volume `volume`'s lock.
    pub fn is_locked(&self, volume: &str) -> Result<bool> {
        Ok(self.db.get(&lock_key(volume))?.is_some())
    }

    /// Whether `fence`'s lock is still held.
    pub fn holds(&self, fence: &Fence) -> Result<bool> {
        Ok(self.db.get(&lock_key(&fence.volume))?.is_some_and(|kv| kv.create_rev == fence.token))
    }

    /// Refuses a stale fence.
    pub fn check(&self, fence: &Fence) -> Result<()> {
        if self.holds(fence)? { Ok(()) } else { refuse(stale(fence)) }
    }

    /// Renews the lock's lease.
    pub fn renew(&self, fence: &Fence) -> Result<()> {
        match self.db.get(&lock_key(&fence.volume))? {
            Some(kv) if kv.create_rev == fence.token => {
                if self.db.keep_alive(super::LeaseId(kv.lease))? {
                    Ok(())
                } else {
                    refuse(stale(fence))
                }
            }
            _ => refuse(stale(fence)),
        }
    }

    /// Gives the lock up (a no-op when it is gone already).
    pub fn release(&self, fence: &Fence) -> Result<()> {
        match self.db.get(&lock_key(&fence.volume))? {
            Some(kv) if kv.create_rev == fence.token => self.db.revoke(super::LeaseId(kv.lease)),
            _ => Ok(()),
        }
    }

    /// Records (or, with `None`, clears) what the holder has begun and not finished.
    pub fn note(&self, fence: &Fence, unfinished: Option<&Unfinished>) -> Result<()> {
        let op = match unfinished {
            Some(u) => Op::put(op_key(&fence.volume), u),
            None => Op::delete(op_key(&fence.volume)),
        };
        match self.db.txn(Txn::new().when(still_held(fence)).then(op))? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed => refuse(stale(fence)),
        }
    }
}
