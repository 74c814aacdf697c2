//! The protection database: the cell's users and groups, and users' passwords.
//!
//! Passwords are kept only as argon2id hashes (PHC strings with their own salt and cost), so a
//! stolen database costs an attacker a slow hash per guess per user. Ids follow AFS: users
//! count up from 1, groups down from -205; the built-in entries exist from the start.

use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use proto::RemoteError;
use proto::auth::{BUILTIN, PtsId, validate_pts_name};
use proto::msg::PtsEntry;
use rusqlite::{Connection, OptionalExtension, params};

use crate::access::Caller;
use crate::error::{Result, StoreError, refuse};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS entries (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    password TEXT
);
CREATE TABLE IF NOT EXISTS members (
    grp  INTEGER NOT NULL,
    user INTEGER NOT NULL,
    PRIMARY KEY (grp, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_user ON members(user);
"#;

pub struct Ptdb {
    conn: Mutex<Connection>,
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

impl Ptdb {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = crate::schema::open(path)?;
        conn.execute_batch(SCHEMA)?;
        for (id, name) in BUILTIN {
            conn.execute("INSERT OR IGNORE INTO entries (id, name) VALUES (?1, ?2)", params![id.0, name])?;
        }
        Ok(Ptdb { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id_of(&self, name: &str) -> Result<Option<PtsId>> {
        let id: Option<i32> =
            self.conn().query_row("SELECT id FROM entries WHERE name = ?1", params![name], |r| r.get(0)).optional()?;
        Ok(id.map(PtsId))
    }

    fn existing(&self, name: &str) -> Result<PtsId> {
        self.id_of(name)?
            .ok_or_else(|| StoreError::Refused(RemoteError::Invalid(format!("no such user or group: {name}"))))
    }

    /// The names of `ids` that exist (ids of deleted entries are left out).
    pub fn names(&self, ids: &[PtsId]) -> Result<Vec<(PtsId, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name FROM entries WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(name) = stmt.query_row(params![id.0], |r| r.get::<_, String>(0)).optional()? {
                out.push((*id, name));
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
        let hash = hash_password(password)?;
        let conn = self.conn();
        if conn.query_row("SELECT 1 FROM entries WHERE name = ?1", params![name], |_| Ok(())).optional()?.is_some() {
            return refuse(RemoteError::Exists);
        }
        let next: i32 = match id {
            Some(id) if id.0 <= 0 || id == PtsId::ANONYMOUS => {
                return refuse(RemoteError::Invalid(format!(
                    "{id} cannot be a user's id (users have positive ids; {} is the anonymous user)",
                    PtsId::ANONYMOUS
                )));
            }
            Some(id) => {
                let taken: Option<String> =
                    conn.query_row("SELECT name FROM entries WHERE id = ?1", params![id.0], |r| r.get(0)).optional()?;
                if let Some(by) = taken {
                    let by = if by.starts_with('#') { "a deleted entry".to_string() } else { by };
                    return refuse(RemoteError::Invalid(format!("id {id} is taken (by {by}); ids are never reused")));
                }
                id.0
            }
            None => conn.query_row(
                "SELECT COALESCE(MAX(id), 0) + 1 FROM entries WHERE id > 0 AND id < ?1",
                params![PtsId::ANONYMOUS.0],
                |r| r.get(0),
            )?,
        };
        if id.is_none() && next >= PtsId::ANONYMOUS.0 {
            return refuse(RemoteError::Invalid("the protection database is full".into()));
        }
        conn.execute("INSERT INTO entries (id, name, password) VALUES (?1, ?2, ?3)", params![next, name, hash])?;
        Ok(PtsEntry { id: PtsId(next), name: name.into(), members: vec![] })
    }

    pub fn create_group(&self, name: &str) -> Result<PtsEntry> {
        validate_pts_name(name).map_err(RemoteError::Invalid)?;
        if !name.contains(':') {
            return refuse(RemoteError::Invalid(format!("{name}: group names are owner:name")));
        }
        let conn = self.conn();
        if conn.query_row("SELECT 1 FROM entries WHERE name = ?1", params![name], |_| Ok(())).optional()?.is_some() {
            return refuse(RemoteError::Exists);
        }
        let next: i32 = conn.query_row("SELECT MIN(MIN(id), -204) - 1 FROM entries", [], |r| r.get(0))?;
        conn.execute("INSERT INTO entries (id, name) VALUES (?1, ?2)", params![next, name])?;
        Ok(PtsEntry { id: PtsId(next), name: name.into(), members: vec![] })
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
        self.conn().execute("INSERT OR IGNORE INTO members (grp, user) VALUES (?1, ?2)", params![g.0, u.0])?;
        Ok(())
    }

    pub fn remove_member(&self, user: &str, group: &str) -> Result<()> {
        let (u, g) = self.user_and_group(user, group)?;
        self.conn().execute("DELETE FROM members WHERE grp = ?1 AND user = ?2", params![g.0, u.0])?;
        Ok(())
    }

    /// Deletes a user or group. Its id is never reused while an ACL may still name it (ids
    /// only grow), and a deleted user's tokens stop working at once.
    pub fn delete(&self, name: &str) -> Result<()> {
        let id = self.existing(name)?;
        if BUILTIN.iter().any(|(b, _)| *b == id) {
            return refuse(RemoteError::Invalid(format!("{name} is built in")));
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM members WHERE grp = ?1 OR user = ?1", params![id.0])?;
        // Keep the row as a tombstone so the id is not handed out again.
        tx.execute("UPDATE entries SET name = ?2, password = NULL WHERE id = ?1", params![id.0, format!("#{}", id.0)])?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_password(&self, user: &str, password: &str) -> Result<()> {
        let id = self.existing(user)?;
        if id.is_group() || id == PtsId::ANONYMOUS {
            return refuse(RemoteError::Invalid(format!("{user} is not a user")));
        }
        let hash = hash_password(password)?;
        self.conn().execute("UPDATE entries SET password = ?2 WHERE id = ?1", params![id.0, hash])?;
        Ok(())
    }

    /// Checks a password; the same slow work is done for unknown users, so timing does not
    /// tell which names exist.
    pub fn login(&self, user: &str, password: &str) -> Result<PtsId> {
        let row: Option<(i32, Option<String>)> = self
            .conn()
            .query_row("SELECT id, password FROM entries WHERE name = ?1", params![user], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // A hash of an unguessable string stands in for users without a password.
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match row {
            Some((id, Some(hash))) if id > 0 && password_matches(&hash, password) => Ok(PtsId(id)),
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
        let conn = self.conn();
        let exists = conn
            .query_row("SELECT 1 FROM entries WHERE id = ?1 AND password IS NOT NULL", params![user.0], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let mut stmt = conn.prepare_cached("SELECT grp FROM members WHERE user = ?1")?;
        let groups = stmt.query_map(params![user.0], |r| r.get::<_, i32>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(Caller::user(user, groups.into_iter().map(PtsId))))
    }

    /// A group with its members, or a user with its groups.
    pub fn membership(&self, name: &str) -> Result<PtsEntry> {
        let id = self.existing(name)?;
        let conn = self.conn();
        let sql = if id.is_group() {
            "SELECT e.name FROM members m JOIN entries e ON e.id = m.user WHERE m.grp = ?1 ORDER BY e.name"
        } else {
            "SELECT e.name FROM members m JOIN entries e ON e.id = m.grp WHERE m.user = ?1 ORDER BY e.name"
        };
        let mut stmt = conn.prepare_cached(sql)?;
        let members = stmt.query_map(params![id.0], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(PtsEntry { id, name: name.into(), members })
    }

    /// Every live user and group, by name.
    pub fn list(&self) -> Result<Vec<PtsEntry>> {
        let names: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT name FROM entries WHERE name NOT LIKE '#%' ORDER BY name")?;
            stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        names.iter().map(|n| self.membership(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Ptdb) {
        let dir = tempfile::tempdir().unwrap();
        let db = Ptdb::open(&dir.path().join("pts.sqlite")).unwrap();
        (dir, db)
    }

    #[test]
    fn users_groups_and_passwords() {
        let (_d, db) = db();
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
        let (_d, db) = db();
        db.create_user("alice", "same password").unwrap();
        db.create_user("bob", "same password").unwrap();
        let conn = db.conn();
        let hashes: Vec<String> = conn
            .prepare("SELECT password FROM entries WHERE id > 0 AND password IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(hashes.len(), 2);
        assert!(hashes.iter().all(|h| h.starts_with("$argon2id$") && !h.contains("same password")));
        assert_ne!(hashes[0], hashes[1]);
    }
}
