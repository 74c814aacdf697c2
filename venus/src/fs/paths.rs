//! Operations on paths for the `venus` command (through the control socket): resolving a path
//! inside the mount, and the mount-point and cache commands built on it.

use proto::{Base, Fid, Mutation, ObjectKind, Seen};
use serde::Serialize;

use super::{Node, Venus};
use crate::error::{Result, VenusError};
use crate::ids::{GFid, ROOT_INO};

#[derive(Debug, Clone, Serialize)]
pub struct WhereIs {
    pub cell: String,
    pub volume: u64,
    pub servers: Vec<String>,
}

impl Venus {
    /// Follows path components from the mount root, crossing mount points as lookups do.
    pub async fn resolve(&self, components: &[String]) -> Result<Node> {
        let mut ino = ROOT_INO;
        for c in components {
            ino = self.lookup(ino, c).await?.ino;
        }
        self.node(ino)
    }

    async fn resolve_object(&self, components: &[String]) -> Result<GFid> {
        match self.resolve(components).await? {
            Node::Object(g) => Ok(g),
            Node::Root => Err(VenusError::Unsupported("the mount root is not an object")),
        }
    }

    /// The directory holding the last component, and that component's name.
    async fn parent_of(&self, components: &[String]) -> Result<(GFid, String)> {
        let (name, parent) = components.split_last().ok_or(VenusError::Unsupported("the mount root"))?;
        Ok((self.resolve_object(parent).await?, name.clone()))
    }

    pub async fn fid_of(&self, components: &[String]) -> Result<(String, Fid)> {
        let g = self.resolve_object(components).await?;
        Ok((self.cell(g.cell)?.name().to_string(), g.fid))
    }

    pub async fn where_is(&self, components: &[String]) -> Result<WhereIs> {
        let g = self.resolve_object(components).await?;
        let conn = self.cell(g.cell)?;
        Ok(WhereIs {
            cell: conn.name().to_string(),
            volume: g.fid.volume.0,
            servers: conn.file.servers.iter().map(|s| s.address.clone()).collect(),
        })
    }

    /// Drops a file's cached contents (and a directory's listing); the next use fetches anew.
    pub async fn flush_path(&self, components: &[String]) -> Result<bool> {
        let g = self.resolve_object(components).await?;
        self.unpromise(&g);
        let dropped = self.cache.flush(&g)?;
        self.invalidate(super::Inval::Inode(g.ino()));
        Ok(dropped)
    }

    pub async fn mkmount(&self, components: &[String], volume: &str) -> Result<()> {
        let (parent, name) = self.parent_of(components).await?;
        let target = format!("#{volume}");
        let ino = self.register(parent);
        self.make_mount_point(ino, &name, &target, 0).await
    }

    /// The volume a mount point names (`#cell:volume` or `#volume`).
    pub async fn lsmount(&self, components: &[String]) -> Result<String> {
        let (parent, name) = self.parent_of(components).await?;
        let entries = self.listing(parent).await?;
        let e = entries.iter().find(|e| e.name.as_str() == name).ok_or(VenusError::NotFound)?;
        if e.kind != ObjectKind::MountPoint {
            return Err(VenusError::Unsupported("not a mount point"));
        }
        let attr = self.status(GFid::new(parent.cell, Fid::new(parent.fid.volume, e.object))).await?;
        attr.link.ok_or(VenusError::Unsupported("mount point without a target"))
    }

    pub async fn rmmount(&self, components: &[String]) -> Result<()> {
        let (parent, name) = self.parent_of(components).await?;
        let entries = self.listing(parent).await?;
        let e = entries.into_iter().find(|e| e.name.as_str() == name).ok_or(VenusError::NotFound)?;
        if e.kind != ObjectKind::MountPoint {
            return Err(VenusError::Unsupported("not a mount point"));
        }
        let attr = self.status(GFid::new(parent.cell, Fid::new(parent.fid.volume, e.object))).await?;
        let seen = Seen { object: e.object, base: Base::Version(attr.version) };
        self.commit(parent.cell, Mutation::Remove { parent: parent.fid, name: e.name.clone(), seen }).await?;
        self.cache.edit_listing(&parent, |entries| entries.retain(|x| x.name != e.name))?;
        self.invalidate(super::Inval::Entry { parent: parent.ino(), name });
        Ok(())
    }
}
