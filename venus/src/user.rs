//! Who is asking: the local user behind each operation, and the tokens venus holds for them.
//!
//! Like an AFS process authentication group, identity travels with the work: the FUSE adapter
//! and the control socket run each operation inside [`as_user`], and everything that operation
//! does (lookups, fetches, stores, RPCs) happens as that user, with that user's token for the
//! cell. Work venus starts by itself runs as the user it is done for (reintegration as the
//! owner of the log) or as the user venus runs as.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use proto::auth::{PtsId, Token, unix_now};
use serde::Serialize;

use crate::ids::CellId;

tokio::task_local! {
    static UID: u32;
}

/// Runs `f` as local user `uid`.
pub async fn as_user<F: Future>(uid: u32, f: F) -> F::Output {
    UID.scope(uid, f).await
}

/// The local user of the running operation; work venus does by itself (revalidation, hoard
/// walks) runs as the user venus runs as, whose cache it is on a laptop.
pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    UID.try_with(|u| *u).unwrap_or_else(|_| unsafe { libc::getuid() })
}

/// The local process behind a request, as the kernel names it: for the POSIX rules that depend
/// on who asks (chmod's set-group-ID rule).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    /// Whether the caller is in group `gid`: its own group, or one of its supplementary groups
    /// (from `/proc/PID/status`; a process gone meanwhile counts as not in it).
    pub fn in_group(&self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else { return false };
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse::<u32>() == Ok(gid)))
    }
}

/// A token as `venus tokens` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub cell: String,
    pub uid: u32,
    pub user: String,
    pub id: i32,
    pub expires: i64,
}

/// Tokens per (cell, local uid), kept in the cache directory (owner-only, like a Kerberos
/// credential cache) so a venus restarted while offline still knows whose changes it logs and
/// can reintegrate them when the servers return. Whoever can read that directory can read the
/// cached files too, so this widens nothing; tokens expire anyway.
#[derive(Default)]
pub struct Tokens {
    map: Mutex<HashMap<(CellId, u32), Token>>,
    path: Option<PathBuf>,
}

impl Tokens {
    /// Tokens saved in `path` (a missing or unreadable file means none).
    pub fn load(path: PathBuf) -> Tokens {
        let saved: Vec<(u16, u32, Token)> =
            std::fs::read(&path).ok().and_then(|b| postcard::from_bytes(&b).ok()).unwrap_or_default();
        let map = saved.into_iter().map(|(c, u, t)| ((CellId(c), u), t)).collect();
        Tokens { map: Mutex::new(map), path: Some(path) }
    }

    fn save(&self, map: &HashMap<(CellId, u32), Token>) {
        let Some(path) = &self.path else { return };
        let saved: Vec<(u16, u32, &Token)> = map.iter().map(|((c, u), t)| (c.0, *u, t)).collect();
        let result = postcard::to_stdvec(&saved).map_err(std::io::Error::other).and_then(|bytes| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %path.display(), "cannot save tokens");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(CellId, u32), Token>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live token of `uid` for `cell`; an expired one is dropped (its holder becomes
    /// anonymous, as in AFS).
    pub fn get(&self, cell: CellId, uid: u32) -> Option<Token> {
        let mut map = self.lock();
        match map.get(&(cell, uid)) {
            Some(t) if t.body.expires > unix_now() => Some(t.clone()),
            Some(_) => {
                map.remove(&(cell, uid));
                None
            }
            None => None,
        }
    }

    /// The token of the running operation's user.
    pub fn current(&self, cell: CellId) -> Option<Token> {
        self.get(cell, current_uid())
    }

    /// Who the running operation is to the cell: its token's user, or the anonymous user.
    pub fn principal(&self, cell: CellId) -> PtsId {
        self.current(cell).map_or(PtsId::ANONYMOUS, |t| t.body.user)
    }

    pub fn set(&self, cell: CellId, uid: u32, token: Token) {
        let mut map = self.lock();
        map.insert((cell, uid), token);
        self.save(&map);
    }

    /// Forgets `uid`'s tokens (all cells when `cell` is `None`); returns how many went.
    pub fn remove(&self, cell: Option<CellId>, uid: u32) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|(c, u), _| !(*u == uid && cell.is_none_or(|x| x == *c)));
        if map.len() != before {
            self.save(&map);
        }
        before - map.len()
    }

    /// The local user holding a live token for `user` in `cell` (the lowest uid if several
    /// do): the user whose files these are, on this machine.
    pub fn holder_of(&self, cell: CellId, user: PtsId) -> Option<u32> {
        let now = unix_now();
        self.lock()
            .iter()
            .filter(|((c, _), t)| *c == cell && t.body.user == user && t.body.expires > now)
            .map(|((_, uid), _)| *uid)
            .min()
    }

    /// `uid`'s live tokens, with the cell names `name_of` gives.
    pub fn list(&self, uid: u32, name_of: impl Fn(CellId) -> String) -> Vec<TokenInfo> {
        let now = unix_now();
        let map = self.lock();
        let mut out: Vec<TokenInfo> = map
            .iter()
            .filter(|((_, u), t)| *u == uid && t.body.expires > now)
            .map(|((c, u), t)| TokenInfo {
                cell: name_of(*c),
                uid: *u,
                user: t.body.name.clone(),
                id: t.body.user.0,
                expires: t.body.expires,
            })
            .collect();
        out.sort_by(|a, b| a.cell.cmp(&b.cell));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::auth::{TokenBody, TokenKey};

    fn token(expires: i64) -> Token {
        TokenKey::generate().issue(TokenBody {
            cell: "c".into(),
            user: PtsId(4),
            name: "u".into(),
            issued: 0,
            expires,
            groups: vec![],
        })
    }

    #[tokio::test]
    async fn tokens_follow_the_operation_and_expire() {
        let tokens = Tokens::default();
        let cell = CellId(1);
        tokens.set(cell, 1000, token(unix_now() + 100));
        tokens.set(cell, 1001, token(unix_now() - 1));
        assert_eq!(as_user(7, async { tokens.principal(cell) }).await, PtsId::ANONYMOUS, "no token: anonymous");
        assert_eq!(as_user(1000, async { tokens.principal(cell) }).await, PtsId(4));
        assert_eq!(as_user(1001, async { tokens.principal(cell) }).await, PtsId::ANONYMOUS, "expired");
        assert!(tokens.get(cell, 1001).is_none());
        assert_eq!(tokens.list(1000, |_| "c".into()).len(), 1);
        assert_eq!(tokens.holder_of(cell, PtsId(4)), Some(1000), "the expired token holds nothing");
        tokens.set(cell, 999, token(unix_now() + 100));
        assert_eq!(tokens.holder_of(cell, PtsId(4)), Some(999), "the lowest uid of several");
        assert_eq!(tokens.holder_of(CellId(2), PtsId(4)), None, "another cell");
        tokens.remove(None, 999);
        assert_eq!(tokens.remove(None, 1000), 1);
        assert!(tokens.get(cell, 1000).is_none());
    }

    #[test]
    fn tokens_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        Tokens::load(path.clone()).set(CellId(2), 1000, token(unix_now() + 100));
        let again = Tokens::load(path.clone());
        assert!(again.get(CellId(2), 1000).is_some());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(Tokens::load(path).get(CellId(2), 1000).is_none(), "a corrupt file means no tokens");
    }
}
