//! The protection database: the cell's users and groups, and users' passwords.
//!
//! ```text
//! pts/id/ID               a user or group (JSON: name, password hash); a deleted one keeps
//!                         its row as a tombstone named #ID, so its id is never handed out again
//! pts/name/NAME           the id of NAME
//! pts/member/GROUP/USER   USER is in GROUP (ids); pts/memberof/USER/GROUP the same, the other way
//! pts/counter/user        the highest user id handed out; pts/counter/group the lowest group id
//! ```
//!
//! Passwords are kept only as argon2id hashes (PHC strings with their own salt and cost), so a
//! stolen database costs an attacker a slow hash per guess per user. Ids follow AFS: users
//! count up from 1, groups down from -205; the built-in entries exist from the start.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use proto::RemoteError;
use proto::auth::{BUILTIN, PtsId, validate_pts_name};
use proto::msg::PtsEntry;
use serde::{Deserialize, Serialize};

use super::{CellDb, Committed, Compare, Op, Txn, get_json, retrying, unchanged};

use crate::access::Caller;
use crate::error::{Result, StoreError, refuse};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

/// A user's or group's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    name: String,
    /// The argon2id hash: only users have one; groups, built-in users and tombstones not.
    password: Option<String>,
}

fn id_key(id: PtsId) -> String {
    format!("pts/id/{}", id.0)
}

fn name_key(name: &str) -> String {
    format!("pts/name/{name}")
}

fn member_key(group: PtsId, user: PtsId) -> String {
    format!("pts/member/{}/{}", group.0, user.0)
}

fn memberof_key(user: PtsId, group: PtsId) -> String {
    format!("pts/memberof/{}/{}", user.0, group.0)
}

const USER_COUNTER: &str = "pts/counter/user";
const GROUP_COUNTER: &str = "pts/counter/group";

#[derive(Clone)]
pub struct Ptdb {
    db: Arc<dyn CellDb>,
}

impl std::fmt::Debug for Ptdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ptdb")
    }
}

fn argon2() -> argon2::Argon2<'static> {
    argon2::Argon2::default()
}

fn hash_password(password: &str) -> Result<String> {
    if password.len() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return refuse(RemoteError::Invalid(format!("a password has {MIN_PASSWORD} to {MAX_PASSWORD} bytes")));
    }
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| StoreError::Corrupt(format!("salt: {e}")))?;
    let hash = argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StoreError::Corrupt(format!("hashing a password: {e}")))?;
    Ok(hash.to_string())
}

fn password_matches(stored: &str, password: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(hash) => argon2().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// The ids under a membership prefix (`pts/member/G/` or `pts/memberof/U/`).
fn ids_under(db: &dyn CellDb, prefix: &str) -> Result<Vec<PtsId>> {
    Ok(db.range(prefix)?.iter().filter_map(|kv| kv.key.strip_prefix(prefix)?.parse().ok()).map(PtsId).collect())
}

impl Ptdb {
    /// The protection database in `db`, with the built-in entries made if missing.
    pub fn new(db: Arc<dyn CellDb>) -> Result<Self> {
        for (id, name) in BUILTIN {
            let row = Row { name: name.to_string(), password: None };
            db.txn(
                Txn::new()
                    .when(Compare::Missing(id_key(*id)))
                    .then(Op::put(id_key(*id), &row))
                    .then(Op::put(name_key(name), &id.0)),
            )?;
        }
        Ok(Ptdb { db })
    }

    fn row(&self, id: PtsId) -> Result<Option<(Row, i64)>> {
        get_json(&*self.db, &id_key(id))
    }

    pub fn id_of(&self, name: &str) -> Result<Option<PtsId>> {
        Ok(get_json::<i32>(&*self.db, &name_key(name))?.map(|(id, _)| PtsId(id)))
    }

    fn existing(&self, name: &str) -> Result<PtsId> {
        self.id_of(name)?
            .ok_or_else(|| StoreError::Refused(RemoteError::Invalid(format!("no such user or group: {name}"))))
    }

    /// The names of `ids` that exist (ids of deleted entries are left out).
    pub fn names(&self, ids: &[PtsId]) -> Result<Vec<(PtsId, String)>> {
        let mut out = Vec::new();
        for id in ids {
            if let Some((row, _)) = self.row(*id)?
                && !row.name.starts_with('#')
            {
                out.push((*id, row.name));
            }
        }
        Ok(out)
    }

    pub fn create_user(&self, name: &str, password: &str) -> Result<PtsEntry> {
        self.create_user_as(name, password, None)
    }

    /// Creates a user with the id given (an admin matching AFS ids to the site's Unix uids),
    /// or the next free one. A given id must never have been used: an entry deleted since may
    /// still be named by ACLs, and its tombstone keeps the id.
    pub fn create_user_as(&self, name: &str, password: &str, id: Option<PtsId>) -> Result<PtsEntry> {
        validate_pts_name(name).map_err(RemoteError::Invalid)?;
        if name.contains(':') {
            return refuse(RemoteError::Invalid(format!("{name}: user names have no ':' (that makes a group)")));
        }
        if let Some(id) = id
            && (id.0 <= 0 || id == PtsId::ANONYMOUS)
        {
            return refuse(RemoteError::Invalid(format!(
                "{id} cannot be a user's id (users have positive ids; {} is the anonymous user)",
                PtsId::ANONYMOUS
            )));
        }
        let hash = hash_password(password)?;
        let db = &*self.db;
        let (id, _) = retrying(db, "creating a user", || {
            if self.id_of(name)?.is_some() {
                return refuse(RemoteError::Exists);
            }
            let counter = get_json::<i32>(db, USER_COUNTER)?;
            let highest = counter.map_or(0, |(n, _)| n);
            let next = match id {
                Some(id) => {
                    if let Some((by, _)) = self.row(id)? {
                        let by = if by.name.starts_with('#') { "a deleted entry".to_string() } else { by.name };
                        return refuse(RemoteError::Invalid(format!(
                            "id {id} is taken (by {by}); ids are never reused"
                        )));
                    }
                    id
                }
                None if highest + 1 >= PtsId::ANONYMOUS.0 => {
                    return refuse(RemoteError::Invalid("the protection database is full".into()));
                }
                None => PtsId(highest + 1),
            };
            let row = Row { name: name.to_string(), password: Some(hash.clone()) };
            let mut txn = Txn::new()
                .when(Compare::Missing(name_key(name)))
                .when(Compare::Missing(id_key(next)))
                .when(unchanged(USER_COUNTER, counter.map(|(_, r)| r)))
                .then(Op::put(id_key(next), &row))
                .then(Op::put(name_key(name), &next.0));
            if next.0 > highest && next.0 < PtsId::ANONYMOUS.0 {
                txn = txn.then(Op::put(USER_COUNTER, &next.0));
            }
            Ok((txn, next))
        })?;
        Ok(PtsEntry { id, name: name.into(), members: vec![] })
    }

    pub fn create_group(&self, name: &str) -> Result<PtsEntry> {
        validate_pts_name(name).map_err(RemoteError::Invalid)?;
        if !name.contains(':') {
            return refuse(RemoteError::Invalid(format!("{name}: group names are owner:name")));
        }
        let db = &*self.db;
        let (id, _) = retrying(db, "creating a group", || {
            if self.id_of(name)?.is_some() {
                return refuse(RemoteError::Exists);
            }
            let counter = get_json::<i32>(db, GROUP_COUNTER)?;
            let next = PtsId(counter.map_or(PtsId::ADMINISTRATORS.0, |(n, _)| n) - 1);
            let row = Row { name: name.to_string(), password: None };
            let txn = Txn::new()
                .when(Compare::Missing(name_key(name)))
                .when(unchanged(GROUP_COUNTER, counter.map(|(_, r)| r)))
                .then(Op::put(id_key(next), &row))
                .then(Op::put(name_key(name), &next.0))
                .then(Op::put(GROUP_COUNTER, &next.0));
            Ok((txn, next))
        })?;
        Ok(PtsEntry { id, name: name.into(), members: vec![] })
    }

    fn user_and_group(&self, user: &str, group: &str) -> Result<(PtsId, PtsId)> {
        let (u, g) = (self.existing(user)?, self.existing(group)?);
        if u.is_group() || u == PtsId::ANONYMOUS {
            return refuse(RemoteError::Invalid(format!("{user} is not a user")));
        }
        if !g.is_group() {
            return refuse(RemoteError::Invalid(format!("{group} is not a group")));
        }
        if g == PtsId::ANYUSER || g == PtsId::AUTHUSER {
            return refuse(RemoteError::Invalid(format!("everyone belongs to {group} already")));
        }
        Ok((u, g))
    }

    pub fn add_member(&self, user: &str, group: &str) -> Result<()> {
        let (u, g) = self.user_and_group(user, group)?;
        // Both still there (not deleted meanwhile), or nothing is added.
        let (Some((_, urev)), Some((_, grev))) = (self.row(u)?, self.row(g)?) else {
            return refuse(RemoteError::Invalid(format!("no such user or group: {user} or {group}")));
        };
        let txn = Txn::new()
            .when(Compare::ModRev(id_key(u), urev))
            .when(Compare::ModRev(id_key(g), grev))
            .then(Op::put(member_key(g, u), &1))
            .then(Op::put(memberof_key(u, g), &1));
        match self.db.txn(txn)? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed => refuse(RemoteError::Invalid(format!("{user} or {group} changed meanwhile"))),
        }
    }

    pub fn remove_member(&self, user: &str, group: &str) -> Result<()> {
        let (u, g) = self.user_and_group(user, group)?;
        self.db.txn(Txn::new().then(Op::delete(member_key(g, u))).then(Op::delete(memberof_key(u, g))))?;
        Ok(())
    }

    /// Deletes a user or group. Its id is never reused while an ACL may still name it (ids
    /// only grow), and a deleted user's tokens stop working at once.
    pub fn delete(&self, name: &str) -> Result<()> {
        let id = self.existing(name)?;
        if BUILTIN.iter().any(|(b, _)| *b == id) {
            return refuse(RemoteError::Invalid(format!("{name} is built in")));
        }
        let db = &*self.db;
        retrying(db, "deleting a user or group", || {
            let Some((_, rev)) = self.row(id)? else {
                return refuse(RemoteError::Invalid(format!("no such user or group: {name}")));
            };
            // Keep the row as a tombstone so the id is not handed out again.
            let tomb = Row { name: format!("#{}", id.0), password: None };
            let mut txn = Txn::new()
                .when(Compare::ModRev(id_key(id), rev))
                .then(Op::put(id_key(id), &tomb))
                .then(Op::delete(name_key(name)));
            for g in ids_under(db, &format!("pts/memberof/{}/", id.0))? {
                txn = txn.then(Op::delete(member_key(g, id))).then(Op::delete(memberof_key(id, g)));
            }
            for u in ids_under(db, &format!("pts/member/{}/", id.0))? {
                txn = txn.then(Op::delete(member_key(id, u))).then(Op::delete(memberof_key(u, id)));
            }
            Ok((txn, ()))
        })
        .map(|_| ())
    }

    pub fn set_password(&self, user: &str, password: &str) -> Result<()> {
        let id = self.existing(user)?;
        if id.is_group() || id == PtsId::ANONYMOUS {
            return refuse(RemoteError::Invalid(format!("{user} is not a user")));
        }
        let hash = hash_password(password)?;
        let Some((mut row, rev)) = self.row(id)? else {
            return refuse(RemoteError::Invalid(format!("no such user: {user}")));
        };
        row.password = Some(hash);
        match self.db.txn(Txn::new().when(Compare::ModRev(id_key(id), rev)).then(Op::put(id_key(id), &row)))? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed => refuse(RemoteError::Invalid(format!("{user} changed meanwhile; try again"))),
        }
    }

    /// Checks a password; the same slow work is done for unknown users, so timing does not
    /// tell which names exist.
    pub fn login(&self, user: &str, password: &str) -> Result<PtsId> {
        let found = match self.id_of(user)? {
            Some(id) => self.row(id)?.map(|(row, _)| (id, row.password)),
            None => None,
        };
        // A hash of an unguessable string stands in for users without a password.
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match found {
            Some((id, Some(hash))) if id.0 > 0 && password_matches(&hash, password) => Ok(id),
            Some((_, Some(_))) => refuse(RemoteError::BadLogin),
            _ => {
                let decoy = DECOY.get_or_init(|| {
                    let secret: [u8; 16] = rand::random();
                    hash_password(&format!("{secret:?}")).unwrap_or_default()
                });
                let _ = password_matches(decoy, password);
                refuse(RemoteError::BadLogin)
            }
        }
    }

    /// Who `user` is now, with their groups; `None` if the user was deleted.
    pub fn caller(&self, user: PtsId) -> Result<Option<Caller>> {
        match self.row(user)? {
            Some((row, _)) if row.password.is_some() => {}
            _ => return Ok(None),
        }
        let groups = ids_under(&*self.db, &format!("pts/memberof/{}/", user.0))?;
        Ok(Some(Caller::user(user, groups)))
    }

    /// A group with its members, or a user with its groups.
    pub fn membership(&self, name: &str) -> Result<PtsEntry> {
        let id = self.existing(name)?;
        let prefix = match id.is_group() {
            true => format!("pts/member/{}/", id.0),
            false => format!("pts/memberof/{}/", id.0),
        };
        let ids = ids_under(&*self.db, &prefix)?;
        let mut members: Vec<String> = self.names(&ids)?.into_iter().map(|(_, n)| n).collect();
        members.sort();
        Ok(PtsEntry { id, name: name.into(), members })
    }

    /// Every live user and group, by name.
    pub fn list(&self) -> Result<Vec<PtsEntry>> {
        let names: Vec<String> = self
            .db
            .range("pts/name/")?
            .iter()
            .filter_map(|kv| kv.key.strip_prefix("pts/name/").map(str::to_string))
            .collect();
        names.iter().map(|n| self.membership(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Ptdb, Arc<dyn CellDb>) {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn CellDb> = Arc::new(super::super::SqliteCellDb::open(&dir.path().join("cell.sqlite")).unwrap());
        (dir, Ptdb::new(kv.clone()).unwrap(), kv)
    }

    #[test]
    fn users_groups_and_passwords() {
        let (_d, db, _kv) = db();
        let alice = db.create_user("alice", "correct horse").unwrap();
        let bob = db.create_user("bob", "battery staple").unwrap();
        assert_eq!((alice.id, bob.id), (PtsId(1), PtsId(2)));
        assert!(matches!(db.create_user("alice", "whatever1"), Err(StoreError::Refused(RemoteError::Exists))));
        assert!(db.create_user("carol", "short").is_err());
        let g = db.create_group("alice:friends").unwrap();
        assert_eq!(g.id, PtsId(-205));
        db.add_member("bob", "alice:friends").unwrap();
        db.add_member("bob", "system:administrators").unwrap();
        assert!(db.add_member("bob", "system:anyuser").is_err());
        assert!(db.add_member("alice:friends", "alice:friends").is_err());
        let caller = db.caller(bob.id).unwrap().unwrap();
        assert!(caller.is_admin() && caller.cps.contains(&g.id) && caller.cps.contains(&PtsId::AUTHUSER));
        assert_eq!(db.membership("alice:friends").unwrap().members, vec!["bob"]);
        assert_eq!(db.membership("bob").unwrap().members, vec!["alice:friends", "system:administrators"]);

        assert_eq!(db.login("alice", "correct horse").unwrap(), alice.id);
        assert!(matches!(db.login("alice", "wrong horse"), Err(StoreError::Refused(RemoteError::BadLogin))));
        assert!(matches!(db.login("nobody", "correct horse"), Err(StoreError::Refused(RemoteError::BadLogin))));
        assert!(matches!(db.login("system:anyuser", "x"), Err(StoreError::Refused(RemoteError::BadLogin))));
        db.set_password("alice", "new password").unwrap();
        assert!(db.login("alice", "correct horse").is_err());
        assert!(db.login("alice", "new password").is_ok());

        db.delete("bob").unwrap();
        assert!(db.caller(bob.id).unwrap().is_none(), "a deleted user's tokens stop working");
        assert!(db.login("bob", "battery staple").is_err());
        assert_eq!(db.create_user("dave", "password1").unwrap().id, PtsId(3), "ids are not reused");
        // An id of the site's choosing (its Unix uid): never one in use or once used.
        assert_eq!(db.create_user_as("erin", "password1", Some(PtsId(4101))).unwrap().id, PtsId(4101));
        assert_eq!(db.create_user("frank", "password1").unwrap().id, PtsId(4102), "next after the highest");
        for taken in [PtsId(4101), PtsId(2), PtsId(0), PtsId(-5), PtsId::ANONYMOUS] {
            let e = db.create_user_as("gina", "password1", Some(taken));
            assert!(matches!(e, Err(StoreError::Refused(RemoteError::Invalid(_)))), "{taken}: {e:?}");
        }
        assert!(db.login("gina", "password1").is_err(), "no half-made user");
        assert!(db.membership("alice:friends").unwrap().members.is_empty());
        assert!(db.delete("system:anyuser").is_err());
        let names: Vec<_> = db.list().unwrap().into_iter().map(|e| e.name).collect();
        assert!(names.contains(&"alice".to_string()) && !names.iter().any(|n| n.starts_with('#')));
    }

    #[test]
    fn stored_passwords_are_salted_hashes() {
        let (_d, db, kv) = db();
        db.create_user("alice", "same password").unwrap();
        db.create_user("bob", "same password").unwrap();
        let _ = db;
        let hashes: Vec<String> =
            kv.range("pts/id/").unwrap().iter().filter_map(|r| r.json::<Row>().unwrap().password).collect();
        assert_eq!(hashes.len(), 2);
        assert!(hashes.iter().all(|h| h.starts_with("$argon2id$") && !h.contains("same password")));
        assert_ne!(hashes[0], hashes[1]);
    }
}
