//! Certification and application of mutation records.
//!
//! A batch (one connected mutation, or a chunk of a client's modification log) is applied in
//! one SQLite transaction; each record runs in a savepoint, so a record that does not certify
//! leaves nothing behind while the others still apply.
//!
//! What certifies, and what a record does to the tree (entries, link counts, which objects get
//! a new version), are the mutation rules of [`proto::rules`], shared with venus's emulation and
//! the log's model; the store gives them a view of its rows and carries out their plan. What is
//! the server's alone stays here: ACLs (asked between the rules' two phases, as always), quotas
//! and disk space, chunk lists, the volume's counters, ACL inheritance and ownership.
//!
//! Space: free space is measured once per batch, and each record that would grow the store is
//! refused with `NoSpace` below the low-water mark before it touches anything, while the
//! records around it (removals first of all) still apply. A batch that fails for space anyway
//! is run again, once, with the reserve file released (see [`crate::space`]).

use std::collections::BTreeSet;

use proto::auth::Rights;
use proto::chunk::total_len;
use proto::msg::{VolumeInfo, VolumeKind};
use proto::rules::{self, Dirent, Entry, New, Node, Plan, Touch};
use proto::{Applied, Attr, ChunkRef, ClientId, ConflictKind, Fid, Mutation, Name, ObjectId, ObjectKind, OpId};
use proto::{Record, RecordResult, RemoteError, SetAttrs, Timestamp, VersionVector, VolumeId, VolumeStamp};
use rusqlite::{Connection, OptionalExtension, params};

use crate::access::{self, Caller};
use crate::error::{Result, StoreError, refuse};
use crate::rows::{self, Object};
use crate::space::{self, Budget, Cost};
use crate::store::{SmallChunk, Store, record_chunks};

/// How a batch is applied: the clock, the version-vector entry and the space budget it uses,
/// whether chunks are looked for here or as a leader found them, and (for a replicated
/// volume) the log position to record in the same transaction.
#[derive(Clone, Copy)]
pub(crate) struct How<'a> {
    pub now: Timestamp,
    pub stamp: proto::ServerId,
    pub budget: Budget,
    pub missing: Option<&'a [u32]>,
    pub applied: Option<(VolumeId, &'a [u8])>,
}

impl How<'_> {
    /// As this server decides alone: its clock, its id, its disk.
    fn local(store: &Store, budget: Budget) -> How<'static> {
        How { now: Timestamp::now(), stamp: store.server, budget, missing: None, applied: None }
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
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
        let out = match self.apply_batch(caller, client, volume, chunks, records, How::local(self, budget)) {
            Err(e) if e.is_no_space() && self.space.release_reserve() => {
                let budget = self.space.budget();
                self.apply_batch(caller, client, volume, chunks, records, How::local(self, budget))
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

    pub(crate) fn apply_batch(
        &self,
        caller: &Caller,
        client: ClientId,
        volume: Option<VolumeId>,
        chunks: &[SmallChunk],
        records: &[Record],
        how: How<'_>,
    ) -> Result<BatchOutcome> {
        let mut conn = self.lock_writer();
        let mut tx = conn.transaction()?;
        let mut out = BatchOutcome::default();
        let (now, budget) = (how.now, how.budget);
        let chunk_bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        // Chunks that do not fit are not recorded, and the stores that came with them are
        // refused for space (not for missing chunks, which would only send them again).
        let chunks_fit = chunks.is_empty() || budget.allows(chunk_bytes);
        if !chunks.is_empty() && chunks_fit {
            record_chunks(&tx, &[], chunks, now)?;
        }
        for (index, record) in records.iter().enumerate() {
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
            let missing = how.missing.map(|m| m.get(index).copied().unwrap_or(0));
            let result = apply_one(&sp, how.stamp, caller, volume, record, now, budget, missing);
            match result {
                Ok(effect) => {
                    let applied = finish(&sp, record, effect, &mut out)?;
                    remember(&sp, client, record.op, &applied, now, record.mutation.volume())?;
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
        if let Some((volume, applied)) = how.applied {
            crate::replicated::note_applied(&tx, volume, applied)?;
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
fn remember(
    c: &Connection,
    client: ClientId,
    op: OpId,
    applied: &Applied,
    now: Timestamp,
    volume: VolumeId,
) -> Result<()> {
    let blob = postcard::to_stdvec(applied).map_err(|e| StoreError::Corrupt(format!("encoding result: {e}")))?;
    c.prepare_cached("INSERT INTO op_results (op, client, at, result, volume) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![rows::op_blob(op), &client.0.to_be_bytes()[..], now.as_nanos(), blob, volume.0 as i64])?;
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

#[allow(clippy::too_many_arguments)]
fn apply_one(
    c: &Connection,
    server: proto::ServerId,
    caller: &Caller,
    only: Option<VolumeId>,
    record: &Record,
    now: Timestamp,
    budget: Budget,
    missing: Option<u32>,
) -> Result<Effect> {
    let volume = record.mutation.volume();
    if only.is_some_and(|v| v != volume) {
        return refuse(RemoteError::Invalid(format!("record for volume {volume} in a batch for another volume")));
    }
    let info = rows::load_volume(c, volume)?.ok_or(StoreError::Refused(RemoteError::NoSuchVolume))?;
    if info.kind != VolumeKind::ReadWrite {
        return refuse(RemoteError::ReadOnly);
    }
    let ctx = Ctx { c, server, caller, op: record.op, now, volume, missing };
    let m = &record.mutation;
    let located = rules::locate(&ctx, m)?;
    ctx.authorize(m)?;
    let plan = rules::certify(&ctx, located)?;
    ctx.admit(m, &info, budget)?;
    ctx.carry_out(m, plan)
}

/// Everything one record needs to reach the database.
struct Ctx<'a> {
    c: &'a Connection,
    server: proto::ServerId,
    caller: &'a Caller,
    op: OpId,
    now: Timestamp,
    volume: VolumeId,
    /// How many of a Store's chunks the leader of a replicated volume found missing; `None`:
    /// this server looks for itself.
    missing: Option<u32>,
}

/// The volume's rows as the mutation rules see them.
impl rules::Tree for Ctx<'_> {
    type Error = StoreError;

    fn node(&self, id: ObjectId) -> Result<Option<Node>> {
        let node = rows::load_object(self.c, self.fid(id))?.map(|o| Node {
            kind: o.attr.kind,
            nlink: o.attr.nlink,
            parent: o.attr.parent,
            version: o.attr.version,
            last_op: o.last_op,
        });
        Ok(node)
    }

    fn entry(&self, dir: ObjectId, name: &Name) -> Result<Option<Entry>> {
        let entry = rows::lookup_entry(self.c, self.fid(dir), name.as_str())?;
        Ok(entry.map(|(object, kind)| Entry { object, kind }))
    }

    fn is_empty(&self, dir: ObjectId) -> Result<bool> {
        Ok(rows::count_entries(self.c, self.fid(dir))? == 0)
    }
}

impl Ctx<'_> {
    fn fid(&self, o: ObjectId) -> Fid {
        Fid::new(self.volume, o)
    }

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

    /// The ACL checks, where they have always been: once what the record names is found, before
    /// its names and versions are certified, so a caller without rights learns nothing of the
    /// names in a directory from the answer.
    fn authorize(&self, m: &Mutation) -> Result<()> {
        match m {
            Mutation::Store { fid, .. } => access::require(self.c, self.caller, &self.load(*fid)?, Rights::WRITE),
            Mutation::SetAttr { fid, set, .. } => self.may_set_attrs(&self.load(*fid)?, set),
            Mutation::Create { parent, .. }
            | Mutation::MakeDir { parent, .. }
            | Mutation::Symlink { parent, .. }
            | Mutation::MakeNode { parent, .. } => self.require_in(*parent, Rights::INSERT),
            Mutation::MakeMountPoint { parent, .. } => {
                // Mounting a volume changes what the directory means: it takes `a` as well as `i`.
                self.require_in(*parent, Rights::ADMINISTER)?;
                self.require_in(*parent, Rights::INSERT)
            }
            // A new name is an insertion in the directory (the file's own: links stay there).
            Mutation::Link { parent, .. } => self.require_in(*parent, Rights::INSERT),
            Mutation::Remove { parent, .. } | Mutation::RemoveDir { parent, .. } => {
                self.require_in(*parent, Rights::DELETE)
            }
            Mutation::Rename { from, to, replaced, .. } => {
                self.require_in(*from, Rights::DELETE)?;
                let need = if replaced.is_some() { Rights::INSERT | Rights::DELETE } else { Rights::INSERT };
                self.require_in(*to, need)
            }
        }
    }

    fn require_in(&self, dir: Fid, need: Rights) -> Result<()> {
        access::require_on_dir(self.caller, &self.load_dir(dir)?, need)
    }

    /// chmod and utimes need `w` (or ownership); chown and chgrp are for administrators.
    fn may_set_attrs(&self, obj: &Object, set: &SetAttrs) -> Result<()> {
        let changes_owner = set.owner.is_some_and(|o| o != obj.attr.owner);
        let changes_group = set.group.is_some_and(|g| g != obj.attr.group);
        if (changes_owner || changes_group) && !self.caller.is_admin() {
            // EPERM, as chown(2) says for an unprivileged caller (and AFS answers).
            return refuse(RemoteError::NotAdmin);
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

    /// A store that makes a file larger needs room, in the quota and on the disk. Its chunks
    /// were admitted when they were uploaded; what is refused here is a file that grows on a full
    /// disk, while a truncation frees space and goes through. Asked once the record certifies: a
    /// conflict is the better answer.
    fn admit(&self, m: &Mutation, info: &VolumeInfo, budget: Budget) -> Result<()> {
        let Mutation::Store { fid, chunks, .. } = m else { return Ok(()) };
        let grow = total_len(chunks) as i64 - self.load(*fid)?.attr.size as i64;
        if info.quota > 0 && grow > 0 && info.used.saturating_add(grow as u64) > info.quota {
            return refuse(RemoteError::QuotaExceeded);
        }
        if grow > 0 && !budget.allows(0) {
            return refuse(RemoteError::NoSpace);
        }
        Ok(())
    }

    /// Carries a certified record's plan out on the rows.
    fn carry_out(&self, m: &Mutation, plan: Plan) -> Result<Effect> {
        let mut fx = Effect::default();
        if let Some(new) = &plan.created {
            self.create(new, &mut fx)?;
        }
        for e in &plan.unlinked {
            self.remove_entry(e)?;
        }
        for e in &plan.linked {
            self.insert_entry(e)?;
        }
        for t in &plan.touched {
            self.touch(m, t, &mut fx)?;
        }
        for &o in &plan.deleted {
            self.delete(o, &mut fx)?;
        }
        Ok(fx)
    }

    /// A new object, owned by the caller: never by whom the client names, since the owner
    /// matters for the file rules.
    fn create(&self, new: &New, fx: &mut Effect) -> Result<()> {
        let mut attr = new.attr(self.volume, self.now, VersionVector::first(self.server));
        attr.owner = self.caller.user.as_owner();
        // A new directory starts with its parent's ACL, as in AFS.
        let acl = match new.kind {
            ObjectKind::Directory => Some(self.load_dir(self.fid(new.parent))?.acl.unwrap_or_default()),
            _ => None,
        };
        rows::put_object(self.c, &Object { attr, last_op: Some(self.op), acl })?;
        match new.kind {
            ObjectKind::File => fx.delta.files += 1,
            ObjectKind::Directory => fx.delta.dirs += 1,
            ObjectKind::Symlink | ObjectKind::MountPoint | ObjectKind::Fifo | ObjectKind::Socket => {}
        }
        Ok(())
    }

    fn insert_entry(&self, e: &Dirent) -> Result<()> {
        self.c
            .prepare_cached("INSERT INTO dirents (volume, dir, name, child, kind) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![
                self.volume.0 as i64,
                rows::oid(e.dir),
                e.name.as_str(),
                rows::oid(e.object),
                rows::kind_code(e.kind)
            ])?;
        Ok(())
    }

    fn remove_entry(&self, e: &Dirent) -> Result<()> {
        self.c.prepare_cached("DELETE FROM dirents WHERE volume = ?1 AND dir = ?2 AND name = ?3")?.execute(params![
            self.volume.0 as i64,
            rows::oid(e.dir),
            e.name.as_str()
        ])?;
        Ok(())
    }

    /// One object the record touches: what the plan changes, and its new version.
    fn touch(&self, m: &Mutation, t: &Touch, fx: &mut Effect) -> Result<()> {
        let mut obj = self.load(self.fid(t.object))?;
        if t.changes {
            self.own_change(m, &mut obj, fx)?;
            t.apply(&mut obj.attr, self.now);
            if t.stamp {
                rules::stamp(&mut obj.attr.version, &mut obj.last_op, self.op, self.server);
            }
            rows::put_object(self.c, &obj)?;
        }
        fx.touch(&obj);
        Ok(())
    }

    /// What a Store or SetAttr changes in the object it is about.
    fn own_change(&self, m: &Mutation, obj: &mut Object, fx: &mut Effect) -> Result<()> {
        match m {
            Mutation::Store { fid, chunks, mtime, .. } if fid.object == obj.id() => {
                self.set_chunks(*fid, chunks)?;
                let size = total_len(chunks);
                fx.delta.used += size as i64 - obj.attr.size as i64;
                obj.attr.size = size;
                obj.attr.mtime = *mtime;
            }
            Mutation::SetAttr { fid, set, .. } if fid.object == obj.id() => {
                let a = &mut obj.attr;
                rules::set_attrs(set, &mut a.mode, &mut a.owner, &mut a.group, &mut a.mtime);
            }
            _ => {}
        }
        Ok(())
    }

    /// An object gone for good (its last name went), with its chunk list.
    fn delete(&self, id: ObjectId, fx: &mut Effect) -> Result<()> {
        let obj = self.load(self.fid(id))?;
        match obj.kind() {
            ObjectKind::Directory => fx.delta.dirs -= 1,
            ObjectKind::File => {
                fx.delta.files -= 1;
                fx.delta.used -= obj.attr.size as i64;
            }
            ObjectKind::Symlink | ObjectKind::MountPoint | ObjectKind::Fifo | ObjectKind::Socket => {}
        }
        let v = self.volume.0 as i64;
        let oid = rows::oid(id);
        self.c.prepare_cached("DELETE FROM objects WHERE volume = ?1 AND id = ?2")?.execute(params![v, oid])?;
        self.c.prepare_cached("DELETE FROM file_chunks WHERE volume = ?1 AND object = ?2")?.execute(params![v, oid])?;
        fx.removed.push(id);
        Ok(())
    }

    /// Replaces a file's chunk list. Every chunk must already be on the server.
    fn set_chunks(&self, fid: Fid, chunks: &[ChunkRef]) -> Result<()> {
        let mut missing = self.missing.unwrap_or(0);
        if self.missing.is_none() {
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
}
