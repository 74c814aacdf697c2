//! Tokens and ACLs as the `venus` command sees them: `login`, `tokens`, `logout`, `listacl`,
//! `setacl`. Each runs as the local user who asked (the control socket knows who that is).

use proto::auth::Rights;
use serde::Serialize;

use super::Venus;
use super::access::governing;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::remote;
use crate::user;

/// One entry of an ACL as `venus listacl` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AclLine {
    pub who: String,
    pub id: i32,
    pub rights: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AclView {
    pub positive: Vec<AclLine>,
    pub negative: Vec<AclLine>,
    /// What the asking user may do here.
    pub yours: String,
}

impl Venus {
    /// The cell named, or the only (first) one.
    fn cell_named(&self, cell: Option<&str>) -> Result<CellId> {
        match cell {
            Some(name) => self.cell_by_name(name).ok_or_else(|| VenusError::Protocol(format!("no cell named {name}"))),
            None => self.cells().next().map(|(_, c)| c.id()).ok_or(VenusError::NotFound),
        }
    }

    /// `venus login`: a token for the asking local user.
    pub async fn login(
        &self,
        cell: Option<&str>,
        user: &str,
        password: &str,
        lifetime: u32,
    ) -> Result<user::TokenInfo> {
        let cell = self.cell_named(cell)?;
        let conn = self.cell(cell)?;
        let token = conn.login(user, password, lifetime).await?;
        let uid = user::current_uid();
        tracing::info!(cell = %conn.name(), uid, user, "logged in");
        let info = user::TokenInfo {
            cell: conn.name().to_string(),
            uid,
            user: token.body.name.clone(),
            id: token.body.user.0,
            expires: token.body.expires,
        };
        self.tokens.set(cell, uid, token);
        Ok(info)
    }

    pub fn list_tokens(&self) -> Vec<user::TokenInfo> {
        self.tokens.list(user::current_uid(), |c| self.cell(c).map(|c| c.name().to_string()).unwrap_or_default())
    }

    pub fn logout(&self, cell: Option<&str>) -> Result<usize> {
        let cell = match cell {
            Some(name) => Some(self.cell_named(Some(name))?),
            None => None,
        };
        Ok(self.tokens.remove(cell, user::current_uid()))
    }

    /// The directory whose ACL governs a path (a file's is its directory's).
    async fn acl_dir(&self, components: &[String]) -> Result<GFid> {
        let g = self.resolve_object(components).await?;
        let attr = self.status(g).await?;
        Ok(governing(g, &attr))
    }

    pub async fn listacl(&self, components: &[String]) -> Result<AclView> {
        let dir = self.acl_dir(components).await?;
        let conn = self.cell(dir.cell)?;
        let remote::AclView { acl, names, access } = conn.fetch_acl(dir.fid).await?;
        let name = |id: proto::PtsId| names.iter().find(|(i, _)| *i == id).map_or(id.to_string(), |(_, n)| n.clone());
        let lines = |entries: &[(proto::PtsId, Rights)]| {
            entries.iter().map(|(id, r)| AclLine { who: name(*id), id: id.0, rights: r.to_string() }).collect()
        };
        let attr = self.status(dir).await?;
        self.note_access(dir, &attr, access)?;
        Ok(AclView { positive: lines(&acl.positive), negative: lines(&acl.negative), yours: access.caller.to_string() })
    }

    /// `venus setacl PATH WHO RIGHTS [--negative]`; `none` removes the entry.
    pub async fn setacl(&self, components: &[String], who: &str, rights: &str, negative: bool) -> Result<AclView> {
        let rights = Rights::parse(rights).map_err(|e| VenusError::Remote(proto::RemoteError::Invalid(e)))?;
        let dir = self.acl_dir(components).await?;
        let conn = self.cell(dir.cell)?;
        let ticket = self.ticket();
        let remote::Status { attr, promise, access } = conn.set_acl_entry(dir.fid, who, rights, negative).await?;
        // Other local users' rights here were computed from the old ACL, and so was what the
        // kernel caches for everyone.
        let _ = self.forget(self.break_object(dir));
        self.promises.changed_here([dir]);
        self.cache.put_attr_with(dir.cell, attr.clone(), true)?;
        self.note_access(dir, &attr, access)?;
        self.promised(dir, promise, ticket);
        self.listacl(components).await
    }
}
