//! A reference model of the server's certification, for tests: one volume as an in-memory tree.
//!
//! The rules are the server's own ([`proto::rules`]: bases, per-name directory checks, kinds,
//! empty directories, loops, and one version bump per operation for every object it changes);
//! the model only holds the tree they run on and carries out their plans. A refused record
//! changes nothing. Ops already applied are answered from memory, as the server does.

use std::collections::{BTreeMap, BTreeSet};

use proto::attr::MODE_MASK;
use proto::rules::{self, Entry, Node, Plan, Touch};
use proto::{Attr, ChunkRef, Mutation, Name, ObjectId, ObjectKind, OpId, Record, RemoteError, ServerId};
use proto::{Timestamp, VersionVector, VolumeId};

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

    /// An object as its creation makes it.
    fn created(attr: &Attr, op: OpId) -> Obj {
        Obj {
            kind: attr.kind,
            mode: attr.mode,
            owner: attr.owner,
            group: attr.group,
            mtime: attr.mtime,
            contents: Vec::new(),
            link: attr.link.clone(),
            nlink: attr.nlink,
            parent: attr.parent,
            entries: BTreeMap::new(),
            version: attr.version.clone(),
            last_op: Some(op),
        }
    }

    /// Carries out what a record does to this object. Directory sizes and times are not
    /// modelled (the server sets directory times to its clock).
    fn touch(&mut self, m: &Mutation, t: &Touch, op: OpId) {
        match m {
            Mutation::Store { fid, chunks, mtime, .. } if fid.object == t.object => {
                self.contents = chunks.clone();
                self.mtime = *mtime;
            }
            Mutation::SetAttr { fid, set, .. } if fid.object == t.object => {
                rules::set_attrs(set, &mut self.mode, &mut self.owner, &mut self.group, &mut self.mtime);
            }
            _ => {}
        }
        self.nlink = t.nlink(self.nlink);
        if let Some(p) = t.parent {
            self.parent = Some(p);
        }
        if t.stamp {
            rules::stamp(&mut self.version, &mut self.last_op, op, SERVER);
        }
    }
}

impl Tree {
    /// A volume holding only its root directory.
    pub fn new(volume: VolumeId) -> Tree {
        let mut root = Obj::new(ObjectKind::Directory, 0o755, VersionVector::first(SERVER));
        root.parent = Some(ObjectId::ROOT);
        Tree { volume, objects: BTreeMap::from([(ObjectId::ROOT, root)]), applied: BTreeSet::new() }
    }

    /// Puts a pre-existing object under `dir` (test setup; no checks, no stamps). Its parent is
    /// `dir`, as the server has it for every object (a file's names all live in one directory).
    pub fn seed(&mut self, dir: ObjectId, name: &str, id: ObjectId, mut obj: Obj) {
        obj.parent = Some(dir);
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
    pub fn apply(&mut self, record: &Record) -> Result<(), RemoteError> {
        if self.applied.contains(&record.op) {
            return Ok(());
        }
        let plan = rules::check(self, &record.mutation)?;
        self.carry_out(record, &plan);
        self.applied.insert(record.op);
        Ok(())
    }

    fn carry_out(&mut self, record: &Record, plan: &Plan) {
        if let Some(new) = &plan.created {
            let attr = new.attr(self.volume, Timestamp::default(), VersionVector::first(SERVER));
            self.objects.insert(new.object, Obj::created(&attr, record.op));
        }
        for e in &plan.unlinked {
            if let Some(d) = self.objects.get_mut(&e.dir) {
                d.entries.remove(&e.name);
            }
        }
        for e in &plan.linked {
            if let Some(d) = self.objects.get_mut(&e.dir) {
                d.entries.insert(e.name.clone(), e.object);
            }
        }
        for t in plan.touched.iter().filter(|t| t.changes) {
            if let Some(o) = self.objects.get_mut(&t.object) {
                o.touch(&record.mutation, t, record.op);
            }
        }
        for o in &plan.deleted {
            self.objects.remove(o);
        }
    }
}

/// The model's objects as the mutation rules see them.
impl rules::Tree for Tree {
    type Error = RemoteError;

    fn node(&self, id: ObjectId) -> Result<Option<Node>, RemoteError> {
        Ok(self.objects.get(&id).map(|o| Node {
            kind: o.kind,
            nlink: o.nlink,
            parent: o.parent,
            version: o.version.clone(),
            last_op: o.last_op,
        }))
    }

    fn entry(&self, dir: ObjectId, name: &Name) -> Result<Option<Entry>, RemoteError> {
        let Some(&object) = self.objects.get(&dir).and_then(|d| d.entries.get(name)) else { return Ok(None) };
        match self.objects.get(&object) {
            Some(o) => Ok(Some(Entry { object, kind: o.kind })),
            None => Err(RemoteError::Internal(format!("entry {name} names the missing object {object}"))),
        }
    }

    fn is_empty(&self, dir: ObjectId) -> Result<bool, RemoteError> {
        Ok(self.objects.get(&dir).is_none_or(|d| d.entries.is_empty()))
    }
}
