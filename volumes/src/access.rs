//! Authorisation inside the store: who the caller is, and the rights their ACLs give them.
//!
//! Checks run in the same transaction as the change they guard, against the directory whose ACL
//! governs the object (a directory's own, anything else's parent's), never against anything the
//! client says about itself: a guessed Fid gives no more than the ACL on its directory allows.

use proto::auth::{Access, Acl, PtsId, Rights, file_rights};
use proto::{Fid, ObjectId, ObjectKind, RemoteError};
use rusqlite::Connection;

use crate::error::{Result, StoreError, refuse};
use crate::rows::{self, Object};

/// The identity a request runs with: the user and their current protection set (the user, the
/// groups they belong to, `system:anyuser`, and `system:authuser` when authenticated).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    pub user: PtsId,
    pub cps: Vec<PtsId>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { user: PtsId::ANONYMOUS, cps: vec![PtsId::ANONYMOUS, PtsId::ANYUSER] }
    }

    /// The cell's own administrator (the admin credential, server-internal work).
    pub fn administrator() -> Caller {
        Caller { user: PtsId::ANONYMOUS, cps: vec![PtsId::ANYUSER, PtsId::AUTHUSER, PtsId::ADMINISTRATORS] }
    }

    /// An authenticated user who belongs to `groups`.
    pub fn user(user: PtsId, groups: impl IntoIterator<Item = PtsId>) -> Caller {
        let mut cps = vec![user, PtsId::ANYUSER, PtsId::AUTHUSER];
        cps.extend(groups);
        Caller { user, cps }
    }

    pub fn is_admin(&self) -> bool {
        self.cps.contains(&PtsId::ADMINISTRATORS)
    }

    pub fn owns(&self, obj: &Object) -> bool {
        self.user != PtsId::ANONYMOUS && obj.attr.owner == self.user.as_owner()
    }

    /// Rights an ACL gives this caller. Administrators always have `l` and `a`, so they can
    /// repair any ACL (as in AFS).
    pub fn rights(&self, acl: &Acl) -> Rights {
        let r = acl.rights(&self.cps);
        if self.is_admin() { r | Rights::LOOKUP | Rights::ADMINISTER } else { r }
    }
}

/// The ACL that governs `obj`.
pub(crate) fn governing_acl(c: &Connection, obj: &Object) -> Result<Acl> {
    if obj.kind() == ObjectKind::Directory {
        return Ok(obj.acl.clone().unwrap_or_default());
    }
    let parent = obj.attr.parent.unwrap_or(ObjectId::ROOT);
    let dir = rows::load_object(c, Fid::new(obj.attr.fid.volume, parent))?
        .ok_or_else(|| StoreError::Corrupt(format!("{} has no parent directory", obj.attr.fid)))?;
    Ok(dir.acl.unwrap_or_default())
}

/// The caller's and the anonymous user's rights on the directory that governs `obj`.
pub(crate) fn access(c: &Connection, caller: &Caller, obj: &Object) -> Result<Access> {
    let acl = governing_acl(c, obj)?;
    Ok(Access { caller: caller.rights(&acl), anyuser: Caller::anonymous().rights(&acl) })
}

/// What the caller may do to `obj` itself: the directory rights, with the file rules applied.
pub(crate) fn effective(c: &Connection, caller: &Caller, obj: &Object) -> Result<Rights> {
    let dir = access(c, caller, obj)?.caller;
    Ok(if obj.kind() == ObjectKind::File { file_rights(dir, obj.attr.mode, caller.owns(obj)) } else { dir })
}

/// Refuses unless the caller holds every right in `need` on a directory.
pub(crate) fn require_on_dir(caller: &Caller, dir: &Object, need: Rights) -> Result<()> {
    let have = caller.rights(dir.acl.as_ref().unwrap_or(&Acl::default()));
    if have.contains(need) { Ok(()) } else { refuse(RemoteError::PermissionDenied) }
}

/// Refuses unless the caller holds every right in `need` on the object itself.
pub(crate) fn require(c: &Connection, caller: &Caller, obj: &Object, need: Rights) -> Result<()> {
    if effective(c, caller, obj)?.contains(need) { Ok(()) } else { refuse(RemoteError::PermissionDenied) }
}
