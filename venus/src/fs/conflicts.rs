//! Conflicts found at reintegration, and their repair. Nothing is ever dropped: the server's
//! copy stays at its name, and the local version is kept next to it as
//! `<name>.conflict-<client>-<yyyymmddThhmmss>` (under `.conflicts` in the volume root when its
//! directory is gone). Each conflict is recorded for `venus conflicts` until `venus repair`
//! settles it.

use proto::{Applied, Base, ConflictKind, Fid, Mutation, Name, ObjectId, ObjectKind, OpId, Record, RemoteError};
use proto::{Seen, Timestamp};

use super::Venus;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};

/// The directory in a volume's root where local versions go when their own directory is gone.
pub const CONFLICT_DIR: &str = ".conflicts";

pub use crate::conflict::{ConflictInfo, compact_utc};

impl Venus {
    /// `<name>.conflict-<client>-<yyyymmddThhmmss>`; `salt` (from the record) tells apart two
    /// conflicts of one name in the same second.
    fn conflict_name(&self, name: &str, salt: OpId) -> Result<Name> {
        let client = self.client.to_string();
        let mut suffix = format!(".conflict-{}-{}", &client[..8], compact_utc(Timestamp::now()));
        let taken = |suffix: &str| {
            let full = format!("{name}{suffix}");
            self.cache.conflicts().is_ok_and(|cs| cs.iter().any(|c| c.copy_name.as_deref() == Some(full.as_str())))
        };
        if taken(&suffix) {
            suffix.push_str(&format!("-{:04x}", salt.0 & 0xffff));
        }
        let keep = proto::name::MAX_NAME_LEN.saturating_sub(suffix.len());
        let mut base: String = name.chars().take(keep).collect();
        while base.len() > keep {
            base.pop();
        }
        Ok(Name::new(format!("{base}{suffix}"))?)
    }

    /// Sends one mutation now, bypassing the log (repairs made during reintegration).
    async fn send_now(&self, cell: CellId, mutation: Mutation) -> Result<Applied> {
        self.send_as(cell, OpId::random(), mutation).await
    }

    /// An op id derived from a logged record's: a recovery step retried after a lost connection
    /// is answered from the server's memory instead of being done twice.
    fn derived_op(op: OpId, step: &str) -> OpId {
        let mut h = blake3::Hasher::new();
        h.update(&op.0.to_le_bytes());
        h.update(step.as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.finalize().as_bytes()[..16]);
        OpId(u128::from_le_bytes(b))
    }

    /// A conflict whose local version could not be kept beside the server's: listed all the
    /// same (the data stays in the cache).
    pub(crate) fn record_failed(
        &self,
        cell: CellId,
        record: &Record,
        refusal: &RemoteError,
        e: &VenusError,
    ) -> Result<()> {
        let (dir, name) = target_of(&record.mutation);
        self.counters.add(crate::counters::CONFLICTS, 1);
        // A store's data must survive even this: keep it on this machine.
        let mut local_copy = None;
        if let Mutation::Store { fid, .. } = &record.mutation {
            let g = GFid::new(cell, *fid);
            if self.cache.container(&g).exists() {
                local_copy = Some(self.keep_locally(&g, name.as_str(), record.op)?.display().to_string());
                self.show_server_version(g)?;
            }
        }
        self.cache.add_conflict(ConflictInfo {
            id: 0,
            cell: self.cell(cell)?.name().to_string(),
            volume: record.mutation.volume().0,
            kind: "refused".into(),
            detail: format!("{refusal}; keeping a copy failed: {e}"),
            dir: Some(dir),
            name: Some(name.to_string()),
            copy_dir: None,
            copy_name: None,
            copy: None,
            local_size: None,
            at: Timestamp::now(),
            local_copy,
        })?;
        Ok(())
    }

    /// Sends a mutation under a given op id: a refused record re-sent in another form keeps its
    /// id, so later logged records based on "after that op" still certify.
    async fn send_as(&self, cell: CellId, op: OpId, mutation: Mutation) -> Result<Applied> {
        let volume = mutation.volume();
        let record = Record { op, mutation };
        Ok(self.cell(cell)?.mutate(volume, record).await?.result?)
    }

    /// The directory entry naming `object`: from the cached listings of its volume, else from
    /// the server's listing of a directory of that volume this cache knows (listings are
    /// dropped when the volume's promises are, as after a partition or a leader change, and
    /// the conflict copy belongs beside the file's current name, not in `.conflicts`).
    async fn locate(&self, cell: CellId, object: Fid) -> Option<(Fid, String)> {
        let named_in = |entries: &[proto::DirEntry]| {
            entries.iter().find(|e| e.object == object.object).map(|e| e.name.to_string())
        };
        let dirs = self.cache.objects_in(cell, object.volume);
        for dir in &dirs {
            if let Some(name) = self.cache.listing(dir).and_then(|entries| named_in(&entries)) {
                return Some((dir.fid, name));
            }
        }
        let conn = self.cell(cell).ok()?.clone();
        for dir in dirs {
            if self.cache.has_listing(&dir) || !self.cache.attr(&dir).is_some_and(|a| a.kind == ObjectKind::Directory) {
                continue;
            }
            if let Ok(listing) = conn.fetch_dir(dir.fid).await
                && let Some(name) = named_in(&listing.entries)
            {
                return Some((dir.fid, name));
            }
        }
        None
    }

    /// The volume's `.conflicts` directory, made if missing.
    async fn conflict_dir(&self, cell: CellId, volume: proto::VolumeId) -> Result<Fid> {
        let root = Fid::root(volume);
        let conn = self.cell(cell)?.clone();
        if let Some(e) = conn.fetch_dir(root).await?.entries.iter().find(|e| e.name.as_str() == CONFLICT_DIR) {
            return Ok(Fid::new(volume, e.object));
        }
        let object = ObjectId::random();
        let m = Mutation::MakeDir {
            parent: root,
            name: Name::new(CONFLICT_DIR)?,
            object,
            mode: 0o755,
            owner: 0,
            group: 0,
            mtime: Timestamp::now(),
        };
        match self.send_now(cell, m).await {
            Ok(_) => Ok(Fid::new(volume, object)),
            // Made concurrently by someone else: use theirs.
            Err(VenusError::Remote(RemoteError::Conflict(ConflictKind::NameTaken { existing }))) => {
                Ok(Fid::new(volume, existing))
            }
            Err(e) => Err(e),
        }
    }

    /// Handles a record the server refused at reintegration.
    pub(crate) async fn conflict(&self, cell: CellId, record: &Record, refusal: RemoteError) -> Result<()> {
        let volume = record.mutation.volume();
        let mut info = ConflictInfo {
            id: 0,
            cell: self.cell(cell)?.name().to_string(),
            volume: volume.0,
            kind: String::new(),
            detail: refusal.to_string(),
            dir: None,
            name: None,
            copy_dir: None,
            copy_name: None,
            copy: None,
            local_size: None,
            at: Timestamp::now(),
            local_copy: None,
        };
        match (&record.mutation, &refusal) {
            // Removed on both sides: nothing to settle.
            (Mutation::Remove { .. } | Mutation::RemoveDir { .. }, RemoteError::NotFound) => return Ok(()),
            (Mutation::Store { fid, chunks, mtime, .. }, RemoteError::Conflict(k)) => {
                info.kind = match k {
                    ConflictKind::ObjectGone => "update/remove",
                    ConflictKind::VolumeRewound => "volume rewound",
                    _ => "update/update",
                }
                .into();
                let (dir, name) = match self.locate(cell, *fid).await {
                    Some(x) => x,
                    None => (self.conflict_dir(cell, volume).await?, format!("{}", fid.object)),
                };
                info.dir = Some(dir);
                info.name = Some(name.clone());
                info.local_size = Some(proto::chunk::total_len(chunks));
                let cname = self.conflict_name(&name, record.op)?;
                let copy = ObjectId(
                    u128::from_le_bytes(Self::derived_op(record.op, "copy-object").0.to_le_bytes()) | (1 << 127),
                );
                let attr = self.cache.attr(&GFid::new(cell, *fid));
                let create = |parent: Fid, name: Name| Mutation::Create {
                    parent,
                    name,
                    object: copy,
                    mode: attr.as_ref().map_or(0o644, |a| a.mode),
                    owner: attr.as_ref().map_or(0, |a| a.owner),
                    group: attr.as_ref().map_or(0, |a| a.group),
                    mtime: *mtime,
                };
                let op = Self::derived_op(record.op, "copy-create");
                let (copy_dir, applied) = match self.send_as(cell, op, create(dir, cname.clone())).await {
                    Ok(a) => (dir, a),
                    Err(VenusError::Remote(RemoteError::Conflict(ConflictKind::ParentGone))) => {
                        let cdir = self.conflict_dir(cell, volume).await?;
                        let op = Self::derived_op(record.op, "copy-create-elsewhere");
                        (cdir, self.send_as(cell, op, create(cdir, cname.clone())).await?)
                    }
                    Err(e) => return Err(e),
                };
                let version =
                    applied.attrs.iter().find(|a| a.fid.object == copy).map(|a| a.version.clone()).unwrap_or_default();
                let copy_fid = Fid::new(volume, copy);
                self.send_now(
                    cell,
                    Mutation::Store {
                        fid: copy_fid,
                        base: Base::Version(version),
                        chunks: chunks.clone(),
                        mtime: *mtime,
                    },
                )
                .await?;
                info.copy_dir = Some(copy_dir);
                info.copy_name = Some(cname.to_string());
                info.copy = Some(copy_fid);
                // The local version is safe on the server now; the original name shows the
                // server's copy again.
                let g = GFid::new(cell, *fid);
                self.show_server_version(g)?;
            }
            (
                Mutation::Create { .. }
                | Mutation::MakeDir { .. }
                | Mutation::Symlink { .. }
                | Mutation::MakeMountPoint { .. }
                | Mutation::MakeNode { .. }
                | Mutation::Link { .. }
                | Mutation::Rename { .. },
                RemoteError::Conflict(k @ (ConflictKind::NameTaken { .. } | ConflictKind::ParentGone)),
            ) => {
                // The new name (or its directory) is taken or gone on the server: the local
                // object goes in under a conflict name, so later records naming it by id work.
                let gone = matches!(k, ConflictKind::ParentGone);
                info.kind = if gone { "directory gone" } else { "name taken" }.into();
                let (dir, name) = target_of(&record.mutation);
                info.dir = Some(dir);
                info.name = Some(name.to_string());
                let cname = self.conflict_name(&name, record.op)?;
                let cdir = if gone { self.conflict_dir(cell, volume).await? } else { dir };
                let redo = renamed(&record.mutation, cdir, cname.clone());
                self.send_as(cell, record.op, redo).await?;
                info.copy_dir = Some(cdir);
                info.copy_name = Some(cname.to_string());
                info.copy = object_of(&record.mutation).map(|o| Fid::new(volume, o));
            }
            (Mutation::Store { fid, chunks, .. }, _) => {
                // Refused outright (rights revoked meanwhile, quota, read-only): the server will
                // not take the data anywhere, so it is kept on this machine for its author.
                info.kind = "store refused".into();
                let (dir, name) = match self.locate(cell, *fid).await {
                    Some((d, n)) => (Some(d), n),
                    None => (None, format!("{}", fid.object)),
                };
                info.dir = dir;
                info.name = Some(name.clone());
                info.local_size = Some(proto::chunk::total_len(chunks));
                let g = GFid::new(cell, *fid);
                let kept = self.keep_locally(&g, &name, record.op)?;
                info.local_copy = Some(kept.display().to_string());
                self.show_server_version(g)?;
            }
            (m, _) => {
                info.kind = match m {
                    Mutation::Remove { .. } => "remove/update",
                    Mutation::RemoveDir { .. } => "rmdir/new entries",
                    Mutation::SetAttr { .. } => "setattr/update",
                    Mutation::Rename { .. } => "rename",
                    _ => "refused",
                }
                .into();
                let (dir, name) = target_of(m);
                info.dir = Some(dir);
                info.name = Some(name.to_string());
            }
        }
        self.counters.add(crate::counters::CONFLICTS, 1);
        tracing::warn!(cell = %info.cell, kind = %info.kind, name = ?info.name, copy = ?info.copy_name, detail = %info.detail, "conflict");
        tracing::debug!(record = ?record, "refused record");
        self.cache.add_conflict(info)?;
        Ok(())
    }

    /// The local version is kept elsewhere now: the file's own name shows the server's again.
    fn show_server_version(&self, g: GFid) -> Result<()> {
        self.cache.discard(&g)?;
        self.forget_in_kernel(g);
        Ok(())
    }

    /// Copies a file's local version to `CACHE/kept/`, readable by the user whose change it was.
    fn keep_locally(&self, g: &GFid, name: &str, op: OpId) -> Result<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.cache.dir().join("kept");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        let dest = dir.join(format!("{}.{}", self.conflict_name(name, op)?, op));
        std::fs::copy(self.cache.container(g), &dest)?;
        let uid = crate::user::current_uid();
        std::os::unix::fs::chown(&dest, Some(uid), None)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
        Ok(dest)
    }

    pub fn conflicts(&self) -> Result<Vec<ConflictInfo>> {
        self.cache.conflicts()
    }

    /// `venus repair PATH --keep local|server|both`, PATH naming the original or the copy.
    pub async fn repair(&self, components: &[String], keep: &str) -> Result<ConflictInfo> {
        let (name, parent) = components.split_last().ok_or(VenusError::Unsupported("the mount root"))?;
        let dir = match self.resolve(parent).await? {
            super::Node::Object(g) => g,
            super::Node::Root => return Err(VenusError::NotFound),
        };
        let info = self
            .conflicts()?
            .into_iter()
            .find(|c| {
                (c.dir == Some(dir.fid) && c.name.as_deref() == Some(name))
                    || (c.copy_dir == Some(dir.fid) && c.copy_name.as_deref() == Some(name))
            })
            .ok_or(VenusError::NotFound)?;
        let cell = dir.cell;
        let conn = self.cell(cell)?.clone();
        let status = |fid: Fid| {
            let conn = conn.clone();
            async move { Ok::<_, VenusError>(conn.fetch_status(fid).await?.attr) }
        };
        match keep {
            "both" => {}
            "server" => {
                if let (Some(cdir), Some(cname), Some(copy)) = (info.copy_dir, &info.copy_name, info.copy) {
                    let attr = status(copy).await?;
                    let m = if attr.kind == ObjectKind::Directory {
                        Mutation::RemoveDir { parent: cdir, name: Name::new(cname.as_str())?, object: copy.object }
                    } else {
                        Mutation::Remove {
                            parent: cdir,
                            name: Name::new(cname.as_str())?,
                            seen: Seen { object: copy.object, base: Base::Version(attr.version) },
                        }
                    };
                    self.send_now(cell, m).await?;
                }
            }
            "local" => match (info.dir, &info.name, info.copy_dir, &info.copy_name, info.copy) {
                (Some(odir), Some(oname), Some(cdir), Some(cname), Some(copy)) => {
                    let entries = conn.fetch_dir(odir).await?.entries;
                    let replaced = match entries.iter().find(|e| e.name.as_str() == oname) {
                        Some(e) => Some(Seen {
                            object: e.object,
                            base: Base::Version(status(Fid::new(odir.volume, e.object)).await?.version),
                        }),
                        None => None,
                    };
                    self.send_now(
                        cell,
                        Mutation::Rename {
                            from: cdir,
                            from_name: Name::new(cname.as_str())?,
                            object: copy.object,
                            to: odir,
                            to_name: Name::new(oname.as_str())?,
                            replaced,
                        },
                    )
                    .await?;
                }
                _ if info.kind == "remove/update" => {
                    // Keep the local removal: remove the server's copy after all.
                    if let (Some(odir), Some(oname)) = (info.dir, &info.name) {
                        let entries = conn.fetch_dir(odir).await?.entries;
                        if let Some(e) = entries.iter().find(|e| e.name.as_str() == oname) {
                            let version = status(Fid::new(odir.volume, e.object)).await?.version;
                            let seen = Seen { object: e.object, base: Base::Version(version) };
                            self.send_now(cell, Mutation::Remove { parent: odir, name: e.name.clone(), seen }).await?;
                        }
                    }
                }
                _ => {
                    return Err(VenusError::Unsupported(
                        "this conflict has no local version to keep; use --keep server",
                    ));
                }
            },
            _ => return Err(VenusError::Unsupported("keep must be local, server or both")),
        }
        self.cache.remove_conflict(info.id)?;
        for d in [info.dir, info.copy_dir].into_iter().flatten() {
            let g = GFid::new(cell, d);
            self.unpromise(&g);
            // The kernel forgets the names venus knew before the listing goes.
            self.forget_in_kernel(g);
            self.cache.drop_listing(&g)?;
        }
        Ok(info)
    }
}

/// The directory and name a mutation is about (for renames: the target); a store or setattr
/// names no entry, so its object id stands in at the volume root.
fn target_of(m: &Mutation) -> (Fid, String) {
    match (m.target(), m) {
        (Some((dir, name)), _) => (dir, name.to_string()),
        (None, Mutation::Store { fid, .. } | Mutation::SetAttr { fid, .. }) => {
            (Fid::root(fid.volume), fid.object.to_string())
        }
        (None, _) => (Fid::root(m.volume()), String::new()),
    }
}

fn object_of(m: &Mutation) -> Option<ObjectId> {
    match m {
        Mutation::Create { object, .. }
        | Mutation::MakeDir { object, .. }
        | Mutation::Symlink { object, .. }
        | Mutation::MakeMountPoint { object, .. }
        | Mutation::MakeNode { object, .. }
        | Mutation::Rename { object, .. } => Some(*object),
        Mutation::Link { target, .. } => Some(*target),
        _ => None,
    }
}

/// The same mutation under another name (and maybe in another directory).
fn renamed(m: &Mutation, dir: Fid, name: Name) -> Mutation {
    let mut m = m.clone();
    match &mut m {
        Mutation::Create { parent, name: n, .. }
        | Mutation::MakeDir { parent, name: n, .. }
        | Mutation::Symlink { parent, name: n, .. }
        | Mutation::MakeMountPoint { parent, name: n, .. }
        | Mutation::MakeNode { parent, name: n, .. }
        | Mutation::Link { parent, name: n, .. } => {
            *parent = dir;
            *n = name;
        }
        Mutation::Rename { to, to_name, replaced, .. } => {
            *to = dir;
            *to_name = name;
            *replaced = None;
        }
        _ => {}
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formatting() {
        let t = |secs| proto::Timestamp { secs, nanos: 0 };
        assert_eq!(super::compact_utc(t(0)), "19700101T000000");
        assert_eq!(super::compact_utc(t(951_782_400)), "20000229T000000");
        assert_eq!(super::compact_utc(t(1_795_320_770)), "20261122T041250");
    }
}
