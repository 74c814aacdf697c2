//! Access checks in the cache manager: the same ACL rules the servers apply, against rights
//! the servers reported for each (directory, user), so cached data is served only to those who
//! may see it, and offline changes are made only where the user could make them connected.

use proto::auth::{Access, PtsId, Rights, file_rights};
use proto::{Attr, Fid, ObjectId, ObjectKind, RemoteError};

use super::Venus;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};

/// The directory whose ACL governs an object: a directory's own, anything else's parent's.
pub(crate) fn governing(g: GFid, attr: &Attr) -> GFid {
    if attr.kind == ObjectKind::Directory {
        g
    } else {
        GFid::new(g.cell, Fid::new(g.fid.volume, attr.parent.unwrap_or(ObjectId::ROOT)))
    }
}

pub(crate) fn denied() -> VenusError {
    VenusError::Remote(RemoteError::PermissionDenied)
}

impl Venus {
    /// Who the running operation is in `g`'s cell.
    pub(crate) fn principal(&self, g: GFid) -> PtsId {
        self.tokens.principal(g.cell)
    }

    /// The uid the kernel shows for an AFS owner: the local user who holds a token for that AFS
    /// user, so that tools comparing a file's owner with their caller (git, ssh, editors) find
    /// their own files theirs; else the AFS id itself (a site whose AFS ids are its Unix uids
    /// sees the same either way). The same for every caller, as the kernel caches attributes
    /// for all of them.
    pub(crate) fn local_owner(&self, cell: CellId, owner: u32) -> u32 {
        let Ok(id) = i32::try_from(owner) else { return owner };
        self.tokens.holder_of(cell, PtsId(id)).unwrap_or(owner)
    }

    /// The AFS owner that `chown` to local `uid` names: the user `uid` holds a token for, else
    /// the number itself.
    pub(crate) fn cell_owner(&self, cell: CellId, uid: u32) -> u32 {
        self.tokens.get(cell, uid).map_or(uid, |t| t.body.user.as_owner())
    }

    /// Remembers the rights a reply reported for the current user.
    pub(crate) fn note_access(&self, g: GFid, attr: &Attr, access: Access) -> Result<()> {
        self.cache.put_access(governing(g, attr), self.principal(g), access)
    }

    /// The current user's rights in directory `dir`: cached, asked of the server, or (offline,
    /// never asked) what the anonymous user may do.
    ///
    /// While the volume has logged changes the cache is the newer state, so rights are not
    /// asked then either: the server's answer would replace the emulated directory (and drop
    /// its listing) in the middle of the changes being replayed.
    pub(crate) async fn dir_rights(&self, dir: GFid) -> Result<Rights> {
        let user = self.principal(dir);
        let reachable = !self.emulating(dir.cell, dir.fid.volume);
        match self.cache.rights(&dir, user) {
            Some((r, fresh)) if fresh || !reachable => return Ok(r),
            _ => {}
        }
        if self.mode(dir.cell, dir.fid.volume) == super::modes::Mode::WriteBack {
            return self.rights_from_server(dir, user).await;
        }
        if reachable {
            match self.fetch_status(dir).await {
                Ok(_) => {}
                Err(VenusError::Remote(RemoteError::PermissionDenied)) => {
                    self.cache.put_rights(dir, user, Rights::NONE)?;
                }
                Err(VenusError::Unreachable(_)) | Err(VenusError::NotCached) => {}
                Err(e) => return Err(e),
            }
            if let Some((r, _)) = self.cache.rights(&dir, user) {
                return Ok(r);
            }
        }
        Ok(self.cache.rights(&dir, PtsId::ANYUSER).map_or(Rights::NONE, |(r, _)| r))
    }

    /// Under a write-back permit the server answers for rights (ACLs are not logged changes),
    /// but its attributes of the directory are older than the cache's: only the rights are
    /// taken. A directory made under the permit and not sent yet has the rights it inherited.
    async fn rights_from_server(&self, dir: GFid, user: PtsId) -> Result<Rights> {
        match self.cell(dir.cell)?.fetch_status(dir.fid).await {
            Ok(status) => {
                let attr = self.cache.attr(&dir).unwrap_or(status.attr);
                self.note_access(dir, &attr, status.access)?;
            }
            Err(VenusError::Remote(RemoteError::PermissionDenied)) => self.cache.put_rights(dir, user, Rights::NONE)?,
            Err(VenusError::Remote(RemoteError::NotFound) | VenusError::Unreachable(_)) => {}
            Err(e) => return Err(e),
        }
        let cached = self.cache.rights(&dir, user).or_else(|| self.cache.rights(&dir, PtsId::ANYUSER));
        Ok(cached.map_or(Rights::NONE, |(r, _)| r))
    }

    /// The current user's rights on the object itself (file rules applied to files).
    pub(crate) async fn rights_on(&self, g: GFid, attr: &Attr) -> Result<Rights> {
        let dir = self.dir_rights(governing(g, attr)).await?;
        if attr.kind != ObjectKind::File {
            return Ok(dir);
        }
        let user = self.principal(g);
        let owner = user != PtsId::ANONYMOUS && attr.owner == user.as_owner();
        Ok(file_rights(dir, attr.mode, owner))
    }

    /// Fails with `EACCES` unless the current user holds every right in `need` on `g`.
    pub(crate) async fn require(&self, g: GFid, attr: &Attr, need: Rights) -> Result<()> {
        if self.rights_on(g, attr).await?.contains(need) { Ok(()) } else { Err(denied()) }
    }

    /// As [`Venus::require`], for rights in a directory known by its id.
    pub(crate) async fn require_in(&self, dir: GFid, need: Rights) -> Result<()> {
        if self.dir_rights(dir).await?.contains(need) { Ok(()) } else { Err(denied()) }
    }

    /// `access(2)`: the rights AFS would check for reading, writing or executing `ino`.
    pub async fn access(&self, ino: u64, mask: i32) -> Result<()> {
        let super::Node::Object(g) = self.node(ino)? else { return Ok(()) };
        let attr = self.status(g).await?;
        let have = self.rights_on(g, &attr).await?;
        let (file, asked) = (attr.kind == ObjectKind::File, |bit: i32| mask & bit != 0);
        // Files: read, write, and execute (read plus an x bit). Directories: look up to read or
        // search; insert or delete to write.
        let ok = if file {
            (!asked(libc::R_OK) || have.contains(Rights::READ))
                && (!asked(libc::W_OK) || have.contains(Rights::WRITE))
                && (!asked(libc::X_OK) || (have.contains(Rights::READ) && attr.mode & 0o111 != 0))
        } else {
            (!asked(libc::R_OK | libc::X_OK) || have.contains(Rights::LOOKUP))
                && (!asked(libc::W_OK) || have.contains(Rights::INSERT) || have.contains(Rights::DELETE))
        };
        if ok { Ok(()) } else { Err(denied()) }
    }

    /// Whether the kernel may cache what it learns of `g` for everyone: only if the anonymous
    /// user may look it up (the kernel's caches do not know who is asking).
    pub(crate) fn public(&self, g: GFid, attr: &Attr) -> bool {
        let may_look =
            |dir: GFid| self.cache.rights(&dir, PtsId::ANYUSER).is_some_and(|(r, _)| r.contains(Rights::LOOKUP));
        let dir = governing(g, attr);
        let parent = match (attr.kind, attr.parent) {
            (ObjectKind::Directory, Some(p)) => GFid::new(g.cell, Fid::new(g.fid.volume, p)),
            _ => dir,
        };
        may_look(dir) && may_look(parent)
    }
}
