//! Certification and application of mutation records.
//!
//! A batch (one connected mutation, or a chunk of a client's modification log) is applied in
//! one SQLite transaction; each record runs in a savepoint, so a record that does not certify
//! leaves nothing behind while the others still apply. Certification follows Coda: a file record
//! certifies when the object is still in the state the client saw (`Base`); a directory record
//! certifies per name (the name is still free, or still names the object the client saw), so
//! changes to different names in one directory never conflict.
//!
//! Only records that change an object's contents or attributes (Store, SetAttr, creation) bump
//! its version vector and set its `last_op`; renames and links change names, not the object, so
//! a rename on one client never conflicts with an edit on another.
//!
//! Space: free space is measured once per batch, and each record that would grow the store is
//! refused with `NoSpace` below the low-water mark before it touches anything, while the
//! records around it (removals first of all) still apply. A batch that fails for space anyway
//! is run again, once, with the reserve file released (see [`crate::space`]).

use std::collections::BTreeSet;

use proto::attr::MODE_MASK;
use proto::chunk::total_len;
use proto::msg::VolumeKind;
use proto::{Applied, Attr, ChunkRef, ClientId, ConflictKind, Fid, Mutation, Name, ObjectId, ObjectKind, OpId};
use proto::{Record, RecordResult, RemoteError, Timestamp, VersionVector, VolumeId, VolumeStamp};
use rusqlite::{Connection, OptionalExtension, params};

use proto::SetAttrs;
use proto::auth::Rights;

use crate::access::{self, Caller};
use crate::error::{Result, StoreError, refuse};
use crate::rows::{self, Object};
use crate::space::{self, Budget, Cost};
use crate::store::{SmallChunk, Store, file_chunks, record_chunks};

/// The longest symlink target accepted.
pub const MAX_LINK_LEN: usize = 4096;

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One result per record, in order.
    pub results: Vec<RecordResult>,
    /// Objects whose state changed: every other client's promise on them must be broken.
    pub changed: BTreeSet<Fid>,
    /// Volumes that changed (their volume promises must be broken).
    pub volumes: BTreeSet<VolumeId>,
}

/// Changes to a volume's counters made by one record.
#[derive(Default)]
struct Delta {
    used: i64,
    files: i64,
    dirs: i64,
}

/// The objects a record touched, in their final state.
#[derive(Default)]
struct Effect {
    touched: Vec<Object>,
    removed: Vec<ObjectId>,
    delta: Delta,
}

impl Effect {
    fn touch(&mut self, o: &Object) {
        self.touched.retain(|t| t.id() != o.id());
        self.touched.push(o.clone());
    }
}

impl Store {
    /// Applies records in order. `volume`, if given, is the only volume the batch may touch
    /// (`Reintegrate`). Records whose OpId was applied before are answered from memory.
    /// Each record is authorised for `caller` against the ACLs as they stand when it applies.
    pub fn apply(
        &self,
        caller: &Caller,
        client: ClientId,
        volume: Option<VolumeId>,
        records: &[Record],
    ) -> Result<BatchOutcome> {
        self.apply_with_chunks(caller, client, volume, &[], records)
    }

    /// [`Store::apply`], recording `chunks` first in the same transaction: a small file's data
    /// and the store that names it commit together, with one sync. The chunks stay recorded
    /// even if a record is refused (the sweep reclaims them if nothing uses them), as if they
    /// had been uploaded first.
    ///
    /// Below the low-water mark, growing records (and `chunks`) are refused with `NoSpace`
    /// one by one; if the batch fails for space all the same, it runs once more with the
    /// reserve released, and that second measurement refuses whatever still grows.
    pub fn apply_with_chunks(
        &self,
        caller: &Caller,
        client: ClientId,
        volume: Option<VolumeId>,
        chunks: &[SmallChunk],
        records: &[Record],
    ) -> Result<BatchOutcome> {
        let mut budget = self.space.budget();
        let grows = !chunks.is_empty()
            || records.iter().any(|r| matches!(space::cost(&r.mutation), Cost::Grows | Cost::BySize));
        if grows && !budget.allows(0) {
            // Removals may have freed chunks the periodic sweep has not reclaimed yet.
            self.reclaim_under_pressure();
            budget = self.space.budget();
        }
        let out = match self.apply_batch(caller, client, volume, chunks, records, budget) {
            Err(e) if e.is_no_space() && self.space.release_reserve() => {
                let budget = self.space.budget();
                self.apply_batch(caller, client, volume, chunks, records, budget)
            }
            other => other,
        }?;
        let freed = records.iter().zip(&out.results).any(|(r, result)| match result {
            Ok(applied) => !applied.removed.is_empty() || matches!(r.mutation, Mutation::Store { .. }),
            Err(_) => false,
        });
        if freed {
            self.space.note_freed();
        }
        Ok(out)
    }

    fn apply_batch(
        &self,
        caller: &Caller,
        client: ClientId,
        volume: Option<VolumeId>,
        chunks: &[SmallChunk],
        records: &[Record],
        budget: Budget,
    ) -> Result<BatchOutcome> {
        let mut conn = self.lock_writer();
        let mut tx = conn.transaction()?;
        let mut out = BatchOutcome::default();
        let now = Timestamp::now();
        let chunk_bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        // Chunks that do not fit are not recorded, and the stores that came with them are
        // refused for space (not for missing chunks, which would only send them again).
        let chunks_fit = chunks.is_empty() || budget.allows(chunk_bytes);
        if !chunks.is_empty() && chunks_fit {
            record_chunks(&tx, &[], chunks, now)?;
        }
        for record in records {
            if let Some(previous) = remembered(&tx, record.op)? {
                out.results.push(Ok(previous));
                continue;
            }
            let refused = match space::cost(&record.mutation) {
                Cost::Grows => !budget.allows(0),
                Cost::BySize => !chunks_fit,
                Cost::Frees | Cost::Negligible => false,
            };
            if refused {
                out.results.push(Err(RemoteError::NoSpace));
                continue;
            }
            let sp = tx.savepoint()?;
            let result = apply_one(&sp, self.server, caller, volume, record, now, budget);
            match result {
                Ok(effect) => {
                    let applied = finish(&sp, record, effect, &mut out)?;
                    remember(&sp, client, record.op, &applied, now)?;
                    sp.commit()?;
                    out.results.push(Ok(applied));
                }
                Err(StoreError::Refused(e)) => {
                    drop(sp); // rolls back this record only
                    out.results.push(Err(e));
                }
                Err(other) => return Err(other),
            }
        }
        tx.commit()?;
        Ok(out)
    }
}

fn remembered(c: &Connection, op: OpId) -> Result<Option<Applied>> {
    let blob: Option<Vec<u8>> = c
        .prepare_cached("SELECT result FROM op_results WHERE op = ?1")?
        .query_row(params![rows::op_blob(op)], |r| r.get(0))
        .optional()?;
    match blob {
        Some(b) => Ok(Some(postcard::from_bytes(&b).map_err(|e| StoreError::Corrupt(format!("op result: {e}")))?)),
        None => Ok(None),
    }
}

/// Only applied records are remembered: a refused one changed nothing, so evaluating it again
/// on a retry is harmless (and lets a retry succeed after, say, missing chunks were sent).
fn remember(c: &Connection, client: ClientId, op: OpId, applied: &Applied, now: Timestamp) -> Result<()> {
    let blob = postcard::to_stdvec(applied).map_err(|e| StoreError::Corrupt(format!("encoding result: {e}")))?;
    c.prepare_cached("INSERT INTO op_results (op, client, at, result) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
        rows::op_blob(op),
        &client.0.to_be_bytes()[..],
        now.as_nanos(),
        blob
    ])?;
    Ok(())
}

/// Bumps the volume's stamp and counters and builds the record's answer.
fn finish(c: &Connection, record: &Record, effect: Effect, out: &mut BatchOutcome) -> Result<Applied> {
    let volume = record.mutation.volume();
    let d = &effect.delta;
    c.prepare_cached(
        "UPDATE volumes SET counter = counter + 1, used = used + ?2, files = files + ?3, dirs = dirs + ?4 WHERE id = ?1",
    )?
    .execute(params![volume.0 as i64, d.used, d.files, d.dirs])?;
    let (inc, counter): (i64, i64) = c
        .prepare_cached("SELECT incarnation, counter FROM volumes WHERE id = ?1")?
        .query_row(params![volume.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let attrs: Vec<Attr> = effect.touched.into_iter().map(|o| o.attr).collect();
    out.changed.extend(attrs.iter().map(|a| a.fid));
    out.changed.extend(effect.removed.iter().map(|&o| Fid::new(volume, o)));
    out.volumes.insert(volume);
    Ok(Applied {
        attrs,
        removed: effect.removed,
        stamp: VolumeStamp { incarnation: inc as u64, counter: counter as u64 },
    })
}

fn apply_one(
    c: &Connection,
    server: proto::ServerId,
    caller: &Caller,
    only: Option<VolumeId>,
    record: &Record,
    now: Timestamp,
    budget: Budget,
) -> Result<Effect> {
    let volume = record.mutation.volume();
    if only.is_some_and(|v| v != volume) {
        return refuse(RemoteError::Invalid(format!("record for volume {volume} in a batch for another volume")));
    }
    let info = rows::load_volume(c, volume)?.ok_or(StoreError::Refused(RemoteError::NoSuchVolume))?;
    if info.kind != VolumeKind::ReadWrite {
        return refuse(RemoteError::ReadOnly);
    }
    let ctx = Ctx { c, server, caller, op: record.op, now, volume };
    let mut fx = Effect::default();
    match &record.mutation {
        Mutation::Store { fid, base, chunks, mtime } => {
            let mut obj = ctx.load(*fid)?;
            if obj.kind() != ObjectKind::File {
                return refuse(if obj.kind() == ObjectKind::Directory {
                    RemoteError::IsDirectory
                } else {
                    RemoteError::Invalid("not a regular file".into())
                });
            }
            access::require(c, caller, &obj, Rights::WRITE)?;
            if !obj.matches(base) {
                return conflict(ConflictKind::VersionChanged { current: obj.attr.version.clone() });
            }
            let new_size = total_len(chunks);
            let grow = new_size as i64 - obj.attr.size as i64;
            if info.quota > 0 && grow > 0 && info.used.saturating_add(grow as u64) > info.quota {
                return refuse(RemoteError::QuotaExceeded);
            }
            // Its chunks were admitted when they were uploaded; what is refused here is a file
            // that gets larger on a full disk. A truncation frees space and goes through.
            if grow > 0 && !budget.allows(0) {
                return refuse(RemoteError::NoSpace);
            }
            ctx.set_chunks(*fid, chunks)?;
            obj.attr.size = new_size;
            obj.attr.mtime = *mtime;
            ctx.changed(&mut obj);
            rows::put_object(c, &obj)?;
            fx.delta.used = grow;
            fx.touch(&obj);
        }
        Mutation::SetAttr { fid, base, set } => {
            let mut obj = ctx.load(*fid)?;
            ctx.may_set_attrs(&obj, set)?;
            if !obj.matches(base) {
                return conflict(ConflictKind::VersionChanged { current: obj.attr.version.clone() });
            }
            if let Some(m) = set.mode {
                obj.attr.mode = m & MODE_MASK;
            }
            if let Some(o) = set.owner {
                obj.attr.owner = o;
            }
            if let Some(g) = set.group {
                obj.attr.group = g;
            }
            if let Some(t) = set.mtime {
                obj.attr.mtime = t;
            }
            ctx.changed(&mut obj);
            rows::put_object(c, &obj)?;
            fx.touch(&obj);
        }
        Mutation::Create { parent, name, object, mode, owner: _, group, mtime } => {
            let obj = ctx.new_object(*object, *parent, ObjectKind::File, *mode, *group, *mtime, None)?;
            ctx.add_entry(*parent, name, &obj, &mut fx)?;
            fx.delta.files += 1;
        }
        Mutation::MakeDir { parent, name, object, mode, owner: _, group, mtime } => {
            let mut obj = ctx.new_object(*object, *parent, ObjectKind::Directory, *mode, *group, *mtime, None)?;
            obj.attr.nlink = 2;
            // A new directory starts with its parent's ACL, as in AFS.
            obj.acl = Some(ctx.load_dir(*parent)?.acl.unwrap_or_default());
            ctx.add_entry(*parent, name, &obj, &mut fx)?;
            fx.delta.dirs += 1;
        }
        Mutation::Symlink { parent, name, object, target, owner: _, group, mtime } => {
            if target.is_empty() || target.len() > MAX_LINK_LEN || target.contains('\0') {
                return refuse(RemoteError::Invalid("symlink target must be 1-4096 bytes without NUL".into()));
            }
            let obj =
                ctx.new_object(*object, *parent, ObjectKind::Symlink, 0o777, *group, *mtime, Some(target.clone()))?;
            ctx.add_entry(*parent, name, &obj, &mut fx)?;
        }
        Mutation::MakeMountPoint { parent, name, object, target, owner: _, mtime } => {
            validate_mount_target(target)?;
            // Mounting a volume changes what the directory means: it takes `a` as well as `i`.
            access::require_on_dir(caller, &ctx.load_dir(*parent)?, Rights::ADMINISTER)?;
            let obj =
                ctx.new_object(*object, *parent, ObjectKind::MountPoint, 0o755, 0, *mtime, Some(target.clone()))?;
            ctx.add_entry(*parent, name, &obj, &mut fx)?;
        }
        Mutation::Link { parent, name, target } => {
            let mut obj = ctx.load(Fid::new(volume, *target))?;
            if obj.kind() != ObjectKind::File {
                return refuse(RemoteError::Invalid("only files can have several names".into()));
            }
            // One directory's ACL governs a file: all its names live in that directory.
            if obj.attr.parent != Some(parent.object) {
                return refuse(RemoteError::CrossDirectoryLink);
            }
            obj.attr.nlink += 1;
            obj.attr.ctime = now;
            rows::put_object(c, &obj)?;
            ctx.add_entry(*parent, name, &obj, &mut fx)?;
        }
        Mutation::Remove { parent, name, seen } => {
            let mut dir = ctx.load_dir(*parent)?;
            access::require_on_dir(caller, &dir, Rights::DELETE)?;
            let (child, kind) = ctx.entry(*parent, name)?.ok_or(StoreError::Refused(RemoteError::NotFound))?;
            if child != seen.object {
                return conflict(ConflictKind::NameChanged);
            }
            if kind == ObjectKind::Directory {
                return refuse(RemoteError::IsDirectory);
            }
            let obj = ctx.load(Fid::new(volume, child))?;
            if !obj.matches(&seen.base) {
                return conflict(ConflictKind::VersionChanged { current: obj.attr.version.clone() });
            }
            ctx.remove_entry(&mut dir, name)?;
            ctx.unlink(obj, &mut fx)?;
            rows::put_object(c, &dir)?;
            fx.touch(&dir);
        }
        Mutation::RemoveDir { parent, name, object } => {
            let mut dir = ctx.load_dir(*parent)?;
            access::require_on_dir(caller, &dir, Rights::DELETE)?;
            let (child, kind) = ctx.entry(*parent, name)?.ok_or(StoreError::Refused(RemoteError::NotFound))?;
            if child != *object {
                return conflict(ConflictKind::NameChanged);
            }
            if kind != ObjectKind::Directory {
                return refuse(RemoteError::NotDirectory);
            }
            let obj = ctx.load(Fid::new(volume, child))?;
            ctx.remove_entry(&mut dir, name)?;
            dir.attr.nlink = dir.attr.nlink.saturating_sub(1);
            ctx.unlink(obj, &mut fx)?;
            rows::put_object(c, &dir)?;
            fx.touch(&dir);
        }
        Mutation::Rename { from, from_name, object, to, to_name, replaced } => {
            if from.volume != to.volume {
                return refuse(RemoteError::CrossVolume);
            }
            let mut src = ctx.load_dir(*from)?;
            let mut dst = if to == from { None } else { Some(ctx.load_dir(*to)?) };
            access::require_on_dir(caller, &src, Rights::DELETE)?;
            let need = if replaced.is_some() { Rights::INSERT | Rights::DELETE } else { Rights::INSERT };
            access::require_on_dir(caller, dst.as_ref().unwrap_or(&src), need)?;
            let (child, kind) = ctx.entry(*from, from_name)?.ok_or(StoreError::Refused(RemoteError::NotFound))?;
            if child != *object {
                return conflict(ConflictKind::NameChanged);
            }
            if from == to && from_name == to_name {
                fx.touch(&src);
                return Ok(fx);
            }
            if kind == ObjectKind::Directory {
                ctx.check_no_loop(*object, *to)?;
            }
            if let Some((existing, ekind)) = ctx.entry(*to, to_name)? {
                if existing == *object {
                    // Two names of one file: POSIX says rename does nothing.
                    fx.touch(&src);
                    return Ok(fx);
                }
                let seen = match replaced {
                    Some(seen) if seen.object == existing => seen,
                    _ => return conflict(ConflictKind::NameTaken { existing }),
                };
                let victim = ctx.load(Fid::new(volume, existing))?;
                if !victim.matches(&seen.base) {
                    return conflict(ConflictKind::VersionChanged { current: victim.attr.version.clone() });
                }
                match (kind == ObjectKind::Directory, ekind == ObjectKind::Directory) {
                    (true, false) => return refuse(RemoteError::NotDirectory),
                    (false, true) => return refuse(RemoteError::IsDirectory),
                    _ => {}
                }
                let target_dir = dst.as_mut().unwrap_or(&mut src);
                ctx.remove_entry(target_dir, to_name)?;
                if ekind == ObjectKind::Directory {
                    target_dir.attr.nlink = target_dir.attr.nlink.saturating_sub(1);
                }
                ctx.unlink(victim, &mut fx)?;
            }
            ctx.remove_entry(&mut src, from_name)?;
            let mut moved = ctx.load(Fid::new(volume, *object))?;
            {
                let target_dir = dst.as_mut().unwrap_or(&mut src);
                ctx.insert_entry(target_dir, to_name, &moved)?;
            }
            moved.attr.ctime = now;
            if let Some(d) = dst.as_mut() {
                if moved.attr.nlink > 1 && kind == ObjectKind::File {
                    // Its other names stay behind: one directory must govern all of them.
                    return refuse(RemoteError::CrossDirectoryLink);
                }
                moved.attr.parent = Some(d.id());
                if kind == ObjectKind::Directory {
                    d.attr.nlink += 1;
                    src.attr.nlink = src.attr.nlink.saturating_sub(1);
                }
            }
            rows::put_object(c, &moved)?;
            fx.touch(&moved);
            rows::put_object(c, &src)?;
            fx.touch(&src);
            if let Some(d) = dst {
                rows::put_object(c, &d)?;
                fx.touch(&d);
            }
        }
    }
    Ok(fx)
}

fn conflict<T>(kind: ConflictKind) -> Result<T> {
    refuse(RemoteError::Conflict(kind))
}

/// Mount point targets: `#volume` or `#cell:volume`, optionally ending in `.` (AFS style).
pub fn validate_mount_target(target: &str) -> Result<()> {
    let body = target.strip_prefix(['#', '%']).unwrap_or("");
    let body = body.strip_suffix('.').unwrap_or(body);
    let volume = body.rsplit(':').next().unwrap_or("");
    let cell_ok = match body.split_once(':') {
        Some((cell, _)) => proto::cell::validate_cell_name(cell).is_ok(),
        None => true,
    };
    if body.is_empty()
        || !cell_ok
        || proto::msg::validate_volume_name(volume.trim_end_matches(".readonly").trim_end_matches(".backup")).is_err()
    {
        return refuse(RemoteError::Invalid(format!("mount point target {target:?}: use #volume or #cell:volume")));
    }
    Ok(())
}

/// Everything one record needs to reach the database.
struct Ctx<'a> {
    c: &'a Connection,
    server: proto::ServerId,
    caller: &'a Caller,
    op: OpId,
    now: Timestamp,
    volume: VolumeId,
}

impl Ctx<'_> {
    fn load(&self, fid: Fid) -> Result<Object> {
        if fid.volume != self.volume {
            return refuse(RemoteError::CrossVolume);
        }
        rows::load_object(self.c, fid)?.ok_or(StoreError::Refused(RemoteError::Conflict(ConflictKind::ObjectGone)))
    }

    fn load_dir(&self, fid: Fid) -> Result<Object> {
        if fid.volume != self.volume {
            return refuse(RemoteError::CrossVolume);
        }
        let dir = rows::load_object(self.c, fid)?
            .ok_or(StoreError::Refused(RemoteError::Conflict(ConflictKind::ParentGone)))?;
        if dir.kind() != ObjectKind::Directory {
            return refuse(RemoteError::NotDirectory);
        }
        Ok(dir)
    }

    /// chmod and utimes need `w` (or ownership); chown and chgrp are for administrators.
    fn may_set_attrs(&self, obj: &Object, set: &SetAttrs) -> Result<()> {
        let changes_owner = set.owner.is_some_and(|o| o != obj.attr.owner);
        let changes_group = set.group.is_some_and(|g| g != obj.attr.group);
        if (changes_owner || changes_group) && !self.caller.is_admin() {
            return refuse(RemoteError::PermissionDenied);
        }
        let dir_rights = access::access(self.c, self.caller, obj)?.caller;
        if set.mode.is_some() || set.mtime.is_some() {
            let owner_may = self.caller.owns(obj) && dir_rights.contains(Rights::INSERT);
            if !dir_rights.contains(Rights::WRITE) && !owner_may {
                return refuse(RemoteError::PermissionDenied);
            }
        }
        Ok(())
    }

    fn entry(&self, dir: Fid, name: &Name) -> Result<Option<(ObjectId, ObjectKind)>> {
        rows::lookup_entry(self.c, dir, name.as_str())
    }

    /// The object's contents or attributes changed: new version, remembered op. One operation
    /// bumps an object's version once, however many of its entries it changes (a rename inside a
    /// directory, over a name), so a client can tell its own change from one that overtook it.
    fn changed(&self, obj: &mut Object) {
        if obj.last_op != Some(self.op) {
            obj.attr.version.bump(self.server);
        }
        obj.attr.ctime = self.now;
        obj.last_op = Some(self.op);
    }

    /// A new object in `parent`, owned by the caller (never by whom the client names: the
    /// owner matters for the file rules), after checking `i` on the directory.
    #[allow(clippy::too_many_arguments)]
    fn new_object(
        &self,
        id: ObjectId,
        parent: Fid,
        kind: ObjectKind,
        mode: u32,
        group: u32,
        mtime: Timestamp,
        link: Option<String>,
    ) -> Result<Object> {
        access::require_on_dir(self.caller, &self.load_dir(parent)?, Rights::INSERT)?;
        let owner = self.caller.user.as_owner();
        if id.0 <= 0xffff {
            return refuse(RemoteError::Invalid("object ids up to 0xffff are reserved".into()));
        }
        if rows::load_object(self.c, Fid::new(self.volume, id))?.is_some() {
            return refuse(RemoteError::DuplicateObject);
        }
        let size = link.as_ref().map_or(0, |l| l.len() as u64);
        let obj = Object {
            attr: Attr {
                fid: Fid::new(self.volume, id),
                kind,
                mode: mode & MODE_MASK,
                owner,
                group,
                size,
                nlink: 1,
                mtime,
                ctime: self.now,
                version: VersionVector::first(self.server),
                parent: Some(parent.object),
                link,
            },
            last_op: Some(self.op),
            acl: None,
        };
        Ok(obj)
    }

    /// Enters a new object (or a new name of an existing file) into a directory.
    fn add_entry(&self, parent: Fid, name: &Name, obj: &Object, fx: &mut Effect) -> Result<()> {
        let mut dir = self.load_dir(parent)?;
        if let Some((existing, _)) = self.entry(parent, name)? {
            return conflict(ConflictKind::NameTaken { existing });
        }
        if rows::load_object(self.c, obj.attr.fid)?.is_none() {
            rows::put_object(self.c, obj)?;
        }
        self.insert_entry(&mut dir, name, obj)?;
        if obj.kind() == ObjectKind::Directory {
            dir.attr.nlink += 1;
        }
        rows::put_object(self.c, &dir)?;
        fx.touch(obj);
        fx.touch(&dir);
        Ok(())
    }

    fn insert_entry(&self, dir: &mut Object, name: &Name, obj: &Object) -> Result<()> {
        self.c
            .prepare_cached("INSERT INTO dirents (volume, dir, name, child, kind) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![
                self.volume.0 as i64,
                rows::oid(dir.id()),
                name.as_str(),
                rows::oid(obj.id()),
                rows::kind_code(obj.kind())
            ])?;
        dir.attr.size += 1;
        self.dir_changed(dir);
        Ok(())
    }

    fn remove_entry(&self, dir: &mut Object, name: &Name) -> Result<()> {
        self.c.prepare_cached("DELETE FROM dirents WHERE volume = ?1 AND dir = ?2 AND name = ?3")?.execute(params![
            self.volume.0 as i64,
            rows::oid(dir.id()),
            name.as_str()
        ])?;
        dir.attr.size = dir.attr.size.saturating_sub(1);
        self.dir_changed(dir);
        Ok(())
    }

    fn dir_changed(&self, dir: &mut Object) {
        dir.attr.mtime = self.now;
        self.changed(dir);
    }

    /// Drops one name of `obj`; deletes it when that was the last. Directories must be empty.
    fn unlink(&self, mut obj: Object, fx: &mut Effect) -> Result<()> {
        if obj.kind() == ObjectKind::Directory {
            if rows::count_entries(self.c, obj.attr.fid)? > 0 {
                return conflict(ConflictKind::DirectoryNotEmpty);
            }
            self.delete(&obj)?;
            fx.delta.dirs -= 1;
            fx.removed.push(obj.id());
            return Ok(());
        }
        obj.attr.nlink = obj.attr.nlink.saturating_sub(1);
        if obj.attr.nlink == 0 {
            self.delete(&obj)?;
            if obj.kind() == ObjectKind::File {
                fx.delta.files -= 1;
                fx.delta.used -= obj.attr.size as i64;
            }
            fx.removed.push(obj.id());
        } else {
            obj.attr.ctime = self.now;
            rows::put_object(self.c, &obj)?;
            fx.touch(&obj);
        }
        Ok(())
    }

    fn delete(&self, obj: &Object) -> Result<()> {
        let v = self.volume.0 as i64;
        let id = rows::oid(obj.id());
        self.c.prepare_cached("DELETE FROM objects WHERE volume = ?1 AND id = ?2")?.execute(params![v, id])?;
        self.c.prepare_cached("DELETE FROM file_chunks WHERE volume = ?1 AND object = ?2")?.execute(params![v, id])?;
        Ok(())
    }

    /// Replaces a file's chunk list. Every chunk must already be on the server.
    fn set_chunks(&self, fid: Fid, chunks: &[ChunkRef]) -> Result<()> {
        let mut missing = 0u32;
        {
            let mut exists = self.c.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1 AND len = ?2")?;
            for ch in chunks {
                if !exists.exists(params![&ch.hash.0[..], ch.len])? {
                    missing += 1;
                }
            }
        }
        if missing > 0 {
            return refuse(RemoteError::MissingChunks(missing));
        }
        let v = self.volume.0 as i64;
        let id = rows::oid(fid.object);
        self.c.prepare_cached("DELETE FROM file_chunks WHERE volume = ?1 AND object = ?2")?.execute(params![v, id])?;
        let mut ins = self
            .c
            .prepare_cached("INSERT INTO file_chunks (volume, object, seq, hash, len) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (seq, ch) in chunks.iter().enumerate() {
            ins.execute(params![v, id, seq as i64, &ch.hash.0[..], ch.len])?;
        }
        Ok(())
    }

    /// A directory may not move into itself or below itself.
    fn check_no_loop(&self, moving: ObjectId, mut target: Fid) -> Result<()> {
        for _ in 0..100_000 {
            if target.object == moving {
                return refuse(RemoteError::WouldLoop);
            }
            if target.object == ObjectId::ROOT {
                return Ok(());
            }
            let dir = self.load_dir(target)?;
            match dir.attr.parent {
                Some(p) => target = Fid::new(self.volume, p),
                None => return Ok(()),
            }
        }
        Err(StoreError::Corrupt("directory parents form a cycle".into()))
    }
}

/// Exposed for tests and dumps: a file's chunk list.
pub fn chunks_of(store: &Store, fid: Fid) -> Result<Vec<ChunkRef>> {
    store.read(|c| file_chunks(c, fid))
}
