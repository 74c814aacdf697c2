//! Operations on paths for the `venus` command (through the control socket): resolving a path
//! inside the mount, and the mount-point and cache commands built on it.

use std::path::Path;

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

/// Symlinks followed while resolving one hoard path, at most.
const MAX_SYMLINKS: usize = 40;

impl Venus {
    /// Resolves an absolute local path (under the mount point) as a hoard walk sees it:
    /// crossing mount points and following symlinks (which are thereby cached too, so the path
    /// still resolves offline). `cached_only` never asks a server.
    pub async fn resolve_hoard_path(&self, path: &str, cached_only: bool) -> Result<Node> {
        let rel = Path::new(path).strip_prefix(&self.mountpoint).map_err(|_| VenusError::NotFound)?;
        let mut todo: Vec<String> =
            rel.components().filter_map(|c| c.as_os_str().to_str().map(str::to_string)).rev().collect();
        let mut done: Vec<String> = Vec::new();
        let mut ino = ROOT_INO;
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                done.pop();
                ino =
                    Box::pin(self.resolve_hoard_path(&self.join_mount(&done), cached_only)).await.map(|n| match n {
                        Node::Root => ROOT_INO,
                        Node::Object(g) => g.ino(),
                    })?;
                continue;
            }
            let st = if cached_only { self.lookup_cached(ino, &name)? } else { self.lookup(ino, &name).await? };
            if st.kind == ObjectKind::Symlink {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(VenusError::Remote(proto::RemoteError::Invalid("too many symlinks".into())));
                }
                let target = match self.node(st.ino)? {
                    Node::Object(g) if cached_only => {
                        self.cache.attr(&g).and_then(|a| a.link).ok_or(VenusError::NotCached)?
                    }
                    _ => self.readlink(st.ino).await?,
                };
                let target_path = Path::new(&target);
                let parts: Vec<String> = if target_path.is_absolute() {
                    let inside = target_path.strip_prefix(&self.mountpoint).map_err(|_| VenusError::NotFound)?;
                    done.clear();
                    ino = ROOT_INO;
                    inside.components().filter_map(|c| c.as_os_str().to_str().map(str::to_string)).collect()
                } else {
                    target_path
                        .components()
                        .filter_map(|c| c.as_os_str().to_str().map(str::to_string))
                        .filter(|c| c != ".")
                        .collect()
                };
                todo.extend(parts.into_iter().rev());
                continue;
            }
            done.push(name);
            ino = st.ino;
        }
        self.node(ino)
    }

    fn join_mount(&self, parts: &[String]) -> String {
        let mut p = self.mountpoint.clone();
        for c in parts {
            p.push(c);
        }
        p.display().to_string()
    }

    /// A lookup from the cache alone.
    fn lookup_cached(&self, parent: u64, name: &str) -> Result<super::Stat> {
        let target = match self.node(parent)? {
            Node::Root => {
                let (cell, writable) = self.top_name(name)?;
                let vol = self.cached_volume_id(cell, "root.cell", !writable).ok_or(VenusError::NotCached)?;
                GFid::new(cell, Fid::root(vol))
            }
            Node::Object(p) => {
                let entries = self.cache.listing(&p).ok_or(VenusError::NotCached)?;
                let e = entries.iter().find(|e| e.name.as_str() == name).ok_or(VenusError::NotFound)?;
                let child = GFid::new(p.cell, Fid::new(p.fid.volume, e.object));
                if e.kind == ObjectKind::MountPoint {
                    let mp = self.cache.attr(&child).ok_or(VenusError::NotCached)?;
                    let (cell, volume, prefer_ro) = self.mount_target(child, mp.link.as_deref().unwrap_or(""))?;
                    GFid::new(
                        cell,
                        Fid::root(self.cached_volume_id(cell, volume, prefer_ro).ok_or(VenusError::NotCached)?),
                    )
                } else {
                    child
                }
            }
        };
        let attr = self.cache.attr(&target).ok_or(VenusError::NotCached)?;
        Ok(self.stat_of(target, &attr))
    }

    /// Follows path components from the mount root, crossing mount points as lookups do.
    pub async fn resolve(&self, components: &[String]) -> Result<Node> {
        let mut ino = ROOT_INO;
        for c in components {
            ino = self.lookup(ino, c).await?.ino;
        }
        self.node(ino)
    }

    pub(crate) async fn resolve_object(&self, components: &[String]) -> Result<GFid> {
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
            servers: conn.servers().into_iter().map(|(_, address)| address).collect(),
        })
    }

    /// Drops a file's cached contents (and a directory's listing); the next use fetches anew.
    pub async fn flush_path(&self, components: &[String]) -> Result<bool> {
        let g = self.resolve_object(components).await?;
        self.unpromise(&g);
        let dropped = self.cache.flush(&g)?;
        self.forget_in_kernel(g);
        Ok(dropped)
    }

    /// Makes a mount point for `volume`: regular (`#volume`, leads to a read-only replica when
    /// reached through one) or read-write (`%volume`).
    pub async fn mkmount(&self, components: &[String], volume: &str, rw: bool) -> Result<()> {
        let (parent, name) = self.parent_of(components).await?;
        let target = format!("{}{volume}", if rw { '%' } else { '#' });
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
        let _entered = self.enter(parent).await;
        let entries = self.listing(parent).await?;
        let e = entries.iter().find(|e| e.name.as_str() == name).cloned().ok_or(VenusError::NotFound)?;
        if e.kind != ObjectKind::MountPoint {
            return Err(VenusError::Unsupported("not a mount point"));
        }
        let attr = self.status(GFid::new(parent.cell, Fid::new(parent.fid.volume, e.object))).await?;
        let seen = Seen { object: e.object, base: Base::Version(attr.version) };
        let remove = Mutation::Remove { parent: parent.fid, name: e.name.clone(), seen };
        let edits = vec![super::write::ListingEdit::Remove(parent, e.name)];
        self.commit(super::write::Change::new(parent.cell, remove).editing(edits)).await?;
        let _ = self.forget(crate::kernel::Forget {
            names: vec![(parent.ino(), name)],
            dirs: vec![parent.ino()],
            ..Default::default()
        });
        Ok(())
    }
}
