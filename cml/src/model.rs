//! A reference model of the server's certification, for tests: one volume as an in-memory tree.
//!
//! It follows `volumes/src/apply.rs` rule for rule: `Base::Version` and `Base::AfterOp` checks,
//! per-name directory checks, empty-directory checks, kind checks, loop checks, and the same
//! stamping (content and attribute changes and creation stamp the object; entry changes stamp
//! the directory; links and renames do not stamp the object they name). A refused record
//! changes nothing. Ops already applied are answered from memory, as the server does.

use std::collections::{BTreeMap, BTreeSet};

use proto::attr::MODE_MASK;
use proto::{Base, ChunkRef, Fid, Mutation, Name, ObjectId, ObjectKind, OpId, Record, ServerId};
use proto::{SetAttrs, Timestamp, VersionVector, VolumeId};

#[derive(Debug, Clone, PartialEq)]
pub struct Obj {
    pub kind: ObjectKind,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    pub mtime: Timestamp,
    pub contents: Vec<ChunkRef>,
    pub link: Option<String>,
    pub nlink: u32,
    pub parent: Option<ObjectId>,
    pub entries: BTreeMap<Name, ObjectId>,
    pub version: VersionVector,
    pub last_op: Option<OpId>,
}

/// What a snapshot compares: everything but versions, last ops, link counts of directories and
/// directory mtimes (the server sets those to its clock on every entry change).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub kind: ObjectKind,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    pub mtime: Option<Timestamp>,
    pub contents: Vec<ChunkRef>,
    pub link: Option<String>,
    pub nlink: Option<u32>,
    pub parent: Option<ObjectId>,
    pub entries: BTreeMap<Name, ObjectId>,
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub volume: VolumeId,
    pub objects: BTreeMap<ObjectId, Obj>,
    pub applied: BTreeSet<OpId>,
}

const SERVER: ServerId = ServerId(1);

impl Obj {
    pub fn new(kind: ObjectKind, mode: u32, version: VersionVector) -> Obj {
        Obj {
            kind,
            mode: mode & MODE_MASK,
            owner: 0,
            group: 0,
            mtime: Timestamp::default(),
            contents: Vec::new(),
            link: None,
            nlink: 1,
            parent: None,
            entries: BTreeMap::new(),
            version,
            last_op: None,
        }
    }

    fn matches(&self, base: &Base) -> bool {
        match base {
            Base::Version(v) => self.version.same_as(v),
            Base::AfterOp(op) => self.last_op == Some(*op),
        }
    }

    fn stamp(&mut self, op: OpId) {
        self.version.bump(SERVER);
        self.last_op = Some(op);
    }
}

type Refusal = String;

impl Tree {
    /// A volume holding only its root directory.
    pub fn new(volume: VolumeId) -> Tree {
        let mut root = Obj::new(ObjectKind::Directory, 0o755, VersionVector::first(SERVER));
        root.parent = Some(ObjectId::ROOT);
        Tree { volume, objects: BTreeMap::from([(ObjectId::ROOT, root)]), applied: BTreeSet::new() }
    }

    /// Puts a pre-existing object under `dir` (test setup; no checks, no stamps).
    pub fn seed(&mut self, dir: ObjectId, name: &str, id: ObjectId, mut obj: Obj) {
        if obj.kind == ObjectKind::Directory {
            obj.parent = Some(dir);
        }
        self.objects.insert(id, obj);
        if let Some(d) = self.objects.get_mut(&dir) {
            d.entries.insert(Name::new(name).expect("test name"), id);
        }
    }

    pub fn get(&self, o: ObjectId) -> Option<&Obj> {
        self.objects.get(&o)
    }

    /// Whether `o` is `ancestor` or lies below it.
    pub fn is_under(&self, mut o: ObjectId, ancestor: ObjectId) -> bool {
        for _ in 0..10_000 {
            if o == ancestor {
                return true;
            }
            match self.objects.get(&o).and_then(|x| x.parent) {
                Some(p) if p != o => o = p,
                _ => return false,
            }
        }
        false
    }

    /// Everything a user could observe, for comparing two trees.
    pub fn snapshot(&self) -> BTreeMap<ObjectId, View> {
        self.objects
            .iter()
            .map(|(&id, o)| {
                let dir = o.kind == ObjectKind::Directory;
                let view = View {
                    kind: o.kind,
                    mode: o.mode,
                    owner: o.owner,
                    group: o.group,
                    mtime: (!dir).then_some(o.mtime),
                    contents: o.contents.clone(),
                    link: o.link.clone(),
                    nlink: (!dir).then_some(o.nlink),
                    parent: o.parent,
                    entries: o.entries.clone(),
                };
                (id, view)
            })
            .collect()
    }

    /// Certifies and applies one record; a refusal leaves the tree as it was.
    pub fn apply(&mut self, record: &Record) -> Result<(), Refusal> {
        if self.applied.contains(&record.op) {
            return Ok(());
        }
        let mut next = self.clone();
        next.apply_one(record)?;
        next.applied.insert(record.op);
        *self = next;
        Ok(())
    }

    fn load(&self, fid: Fid) -> Result<&Obj, Refusal> {
        if fid.volume != self.volume {
            return Err("cross volume".into());
        }
        self.objects.get(&fid.object).ok_or_else(|| format!("object {} gone", fid.object))
    }

    fn load_dir(&self, fid: Fid) -> Result<&Obj, Refusal> {
        if fid.volume != self.volume {
            return Err("cross volume".into());
        }
        let d = self.objects.get(&fid.object).ok_or_else(|| format!("parent {} gone", fid.object))?;
        if d.kind != ObjectKind::Directory {
            return Err("not a directory".into());
        }
        Ok(d)
    }

    fn obj_mut(&mut self, o: ObjectId) -> Result<&mut Obj, Refusal> {
        self.objects.get_mut(&o).ok_or_else(|| format!("object {o} gone"))
    }

    fn entry(&self, dir: ObjectId, name: &Name) -> Option<ObjectId> {
        self.objects.get(&dir).and_then(|d| d.entries.get(name).copied())
    }

    fn apply_one(&mut self, record: &Record) -> Result<(), Refusal> {
        let op = record.op;
        match &record.mutation {
            Mutation::Store { fid, base, chunks, mtime } => {
                let obj = self.load(*fid)?;
                if obj.kind != ObjectKind::File {
                    return Err("store of a non-file".into());
                }
                if !obj.matches(base) {
                    return Err(format!("store: version changed (base {base:?}, last op {:?})", obj.last_op));
                }
                let obj = self.obj_mut(fid.object)?;
                obj.contents = chunks.clone();
                obj.mtime = *mtime;
                obj.stamp(op);
            }
            Mutation::SetAttr { fid, base, set } => {
                let obj = self.load(*fid)?;
                if !obj.matches(base) {
                    return Err(format!("setattr: version changed (base {base:?}, last op {:?})", obj.last_op));
                }
                let obj = self.obj_mut(fid.object)?;
                set_attrs(obj, set);
                obj.stamp(op);
            }
            Mutation::Create { parent, name, object, mode, owner, group, mtime } => {
                let mut obj = Obj::new(ObjectKind::File, *mode, VersionVector::new());
                (obj.owner, obj.group, obj.mtime) = (*owner, *group, *mtime);
                self.create(op, *parent, name, *object, obj)?;
            }
            Mutation::MakeDir { parent, name, object, mode, owner, group, mtime } => {
                let mut obj = Obj::new(ObjectKind::Directory, *mode, VersionVector::new());
                (obj.owner, obj.group, obj.mtime) = (*owner, *group, *mtime);
                obj.nlink = 2;
                obj.parent = Some(parent.object);
                self.create(op, *parent, name, *object, obj)?;
            }
            Mutation::Symlink { parent, name, object, target, owner, group, mtime } => {
                if target.is_empty() || target.len() > 4096 || target.contains('\0') {
                    return Err("bad symlink target".into());
                }
                let mut obj = Obj::new(ObjectKind::Symlink, 0o777, VersionVector::new());
                (obj.owner, obj.group, obj.mtime, obj.link) = (*owner, *group, *mtime, Some(target.clone()));
                self.create(op, *parent, name, *object, obj)?;
            }
            Mutation::MakeMountPoint { parent, name, object, target, owner, mtime } => {
                if !target.starts_with('#') || target.len() < 2 {
                    return Err("bad mount point target".into());
                }
                let mut obj = Obj::new(ObjectKind::MountPoint, 0o755, VersionVector::new());
                (obj.owner, obj.mtime, obj.link) = (*owner, *mtime, Some(target.clone()));
                self.create(op, *parent, name, *object, obj)?;
            }
            Mutation::Link { parent, name, target } => {
                let obj = self.load(Fid::new(self.volume, *target))?;
                if obj.kind != ObjectKind::File {
                    return Err("only files can have several names".into());
                }
                self.load_dir(*parent)?;
                if let Some(existing) = self.entry(parent.object, name) {
                    return Err(format!("link: name taken by {existing}"));
                }
                self.obj_mut(*target)?.nlink += 1;
                self.insert_entry(op, parent.object, name, *target)?;
            }
            Mutation::Remove { parent, name, seen } => {
                self.load_dir(*parent)?;
                let child = self.entry(parent.object, name).ok_or("remove: no such name")?;
                if child != seen.object {
                    return Err("remove: name changed".into());
                }
                let obj = self.load(Fid::new(self.volume, child))?;
                if obj.kind == ObjectKind::Directory {
                    return Err("remove of a directory".into());
                }
                if !obj.matches(&seen.base) {
                    return Err(format!("remove: version changed (base {:?}, last op {:?})", seen.base, obj.last_op));
                }
                self.remove_entry(op, parent.object, name)?;
                self.unlink(child)?;
            }
            Mutation::RemoveDir { parent, name, object } => {
                self.load_dir(*parent)?;
                let child = self.entry(parent.object, name).ok_or("rmdir: no such name")?;
                if child != *object {
                    return Err("rmdir: name changed".into());
                }
                if self.load(Fid::new(self.volume, child))?.kind != ObjectKind::Directory {
                    return Err("rmdir of a non-directory".into());
                }
                self.remove_entry(op, parent.object, name)?;
                self.unlink(child)?;
            }
            Mutation::Rename { from, from_name, object, to, to_name, replaced } => {
                if from.volume != to.volume {
                    return Err("cross volume rename".into());
                }
                self.load_dir(*from)?;
                self.load_dir(*to)?;
                let child = self.entry(from.object, from_name).ok_or("rename: no such name")?;
                if child != *object {
                    return Err("rename: name changed".into());
                }
                if from == to && from_name == to_name {
                    return Ok(());
                }
                let kind = self.load(Fid::new(self.volume, child))?.kind;
                if kind == ObjectKind::Directory && self.is_under(to.object, *object) {
                    return Err("rename would loop".into());
                }
                if let Some(existing) = self.entry(to.object, to_name) {
                    if existing == *object {
                        return Ok(());
                    }
                    let seen = match replaced {
                        Some(seen) if seen.object == existing => seen,
                        _ => return Err(format!("rename: name taken by {existing}")),
                    };
                    let victim = self.load(Fid::new(self.volume, existing))?;
                    if !victim.matches(&seen.base) {
                        return Err("rename: victim changed".into());
                    }
                    match (kind == ObjectKind::Directory, victim.kind == ObjectKind::Directory) {
                        (true, false) => return Err("rename of a directory over a non-directory".into()),
                        (false, true) => return Err("rename over a directory".into()),
                        _ => {}
                    }
                    self.remove_entry(op, to.object, to_name)?;
                    self.unlink(existing)?;
                }
                self.remove_entry(op, from.object, from_name)?;
                self.insert_entry(op, to.object, to_name, *object)?;
                if kind == ObjectKind::Directory {
                    self.obj_mut(*object)?.parent = Some(to.object);
                }
            }
        }
        Ok(())
    }

    fn create(&mut self, op: OpId, parent: Fid, name: &Name, id: ObjectId, mut obj: Obj) -> Result<(), Refusal> {
        if id.0 <= 0xffff {
            return Err("reserved object id".into());
        }
        if self.objects.contains_key(&id) {
            return Err("duplicate object".into());
        }
        self.load_dir(parent)?;
        if let Some(existing) = self.entry(parent.object, name) {
            return Err(format!("create: name taken by {existing}"));
        }
        obj.version = VersionVector::first(SERVER);
        obj.last_op = Some(op);
        self.objects.insert(id, obj);
        self.insert_entry(op, parent.object, name, id)
    }

    fn insert_entry(&mut self, op: OpId, dir: ObjectId, name: &Name, child: ObjectId) -> Result<(), Refusal> {
        let d = self.obj_mut(dir)?;
        d.entries.insert(name.clone(), child);
        d.stamp(op);
        Ok(())
    }

    fn remove_entry(&mut self, op: OpId, dir: ObjectId, name: &Name) -> Result<(), Refusal> {
        let d = self.obj_mut(dir)?;
        d.entries.remove(name);
        d.stamp(op);
        Ok(())
    }

    /// Drops one name of `o`; deletes it when that was the last. Directories must be empty.
    fn unlink(&mut self, o: ObjectId) -> Result<(), Refusal> {
        let obj = self.obj_mut(o)?;
        if obj.kind == ObjectKind::Directory {
            if !obj.entries.is_empty() {
                return Err("directory not empty".into());
            }
            self.objects.remove(&o);
            return Ok(());
        }
        obj.nlink = obj.nlink.saturating_sub(1);
        if obj.nlink == 0 {
            self.objects.remove(&o);
        }
        Ok(())
    }
}

fn set_attrs(obj: &mut Obj, set: &SetAttrs) {
    if let Some(m) = set.mode {
        obj.mode = m & MODE_MASK;
    }
    if let Some(o) = set.owner {
        obj.owner = o;
    }
    if let Some(g) = set.group {
        obj.group = g;
    }
    if let Some(t) = set.mtime {
        obj.mtime = t;
    }
}
