//! The rules of a mutation, written once.
//!
//! Three parties apply mutations to a tree: the server's store (SQLite rows, the source of
//! truth), venus emulating a change in its cache while disconnected, and the reference model
//! behind the log's property tests. Each implements [`Tree`], a small read-only view of one
//! volume, and asks [`check`] whether a mutation certifies. The answer is a [`Plan`] of all it
//! does (which entries go and come, what changes in which object, what is created, what goes for
//! good) or the refusal the server answers. Nothing changes until the rules have said yes, so a
//! refusal leaves nothing to undo, and each party only carries the plan out on its own storage.
//! Permissions, quotas and disk space are not the tree's business and stay with their owners.
//!
//! # What certifies
//!
//! A file record certifies when the object is still in the state the client saw ([`Base`]); a
//! directory record certifies per name: the name is still free, or still names the object the
//! client saw, so changes to different names in one directory never conflict. Besides: kinds
//! (only files are stored and linked; a directory is removed only by RemoveDir and replaced only
//! by a directory), directories removed or replaced only when empty, no directory moved into or
//! below itself, all names of a file in one directory (its ACL governs the file), valid symlink
//! and mount point targets, and fresh object ids.
//!
//! # Two phases
//!
//! [`locate`] finds what the mutation names and checks its kinds; [`certify`] does the rest.
//! The server asks its ACLs in between, as it always has: a caller who may not change a directory
//! learns nothing of its names from the refusal (a `NameTaken` would say which object a name
//! holds). [`check`] is both at once.
//!
//! # Versions
//!
//! An object gets a new version when its contents, attributes or entries change: once per
//! operation, however many of its entries the operation changes (a rename within a directory,
//! over a name). So a client that sees a directory's version [directly
//! follow](VersionVector::directly_follows) the one it knew can tell that nobody else's change
//! came in between. Links and renames change names, not the object named: its version stays, so a
//! rename on one client never conflicts with an edit on another. A plan lists each object it
//! touches once, with everything the operation does to it, and [`stamp`] is the one way to give
//! it its version.
//!
//! # What a cache cannot know
//!
//! A cache holds part of the tree, and the server certifies every record again when it arrives.
//! The provided methods of [`Tree`] are where a cache says what it cannot know: whether a base
//! still holds on the server, what lies above the directories it holds, whether an id is taken.

use crate::attr::{Attr, MODE_MASK, ObjectKind, SetAttrs, Timestamp};
use crate::ids::{Fid, ObjectId, OpId, ServerId, VolumeId};
use crate::msg::RemoteError;
use crate::name::Name;
use crate::record::{Base, ConflictKind, Mutation, Seen};
use crate::version::VersionVector;

/// The longest symlink target accepted.
pub const MAX_LINK_LEN: usize = 4096;

/// How far up the loop check walks before it calls the parents a cycle: far beyond any real tree.
const MAX_DEPTH: usize = 100_000;

/// Object ids up to this one are reserved for well-known objects (the root is 1).
const LAST_RESERVED_ID: u128 = 0xffff;

/// What the rules need to know of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: ObjectKind,
    pub nlink: u32,
    /// The directory it lies in (for a file: the one all its names are in); the root's is itself.
    pub parent: Option<ObjectId>,
    pub version: VersionVector,
    /// The operation that last gave it a version ([`stamp`]), for `Base::AfterOp`.
    pub last_op: Option<OpId>,
}

impl Node {
    /// Whether the object is still in the state a record was based on.
    pub fn matches(&self, base: &Base) -> bool {
        match base {
            Base::Version(v) => self.version.same_as(v),
            Base::AfterOp(op) => self.last_op == Some(*op),
        }
    }
}

/// A directory entry as the rules see it: the object a name names, and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub object: ObjectId,
    pub kind: ObjectKind,
}

/// The tree is not a tree: a directory's parents lead back to it, never to the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("directory parents form a cycle")]
pub struct Cycle;

impl From<Cycle> for RemoteError {
    fn from(c: Cycle) -> Self {
        RemoteError::Internal(c.to_string())
    }
}

/// A read-only view of one volume's tree: the volume a mutation changes (`Mutation::volume`).
pub trait Tree {
    /// Refusals are the server's answers ([`RemoteError`]); a damaged tree is a [`Cycle`]; the
    /// tree's own failures (a database, a cache that lacks something) are whatever it makes them.
    type Error: From<RemoteError> + From<Cycle>;

    /// The object `id`; `None` if the tree has none.
    fn node(&self, id: ObjectId) -> Result<Option<Node>, Self::Error>;

    /// What `name` names in directory `dir` (a directory the rules found).
    fn entry(&self, dir: ObjectId, name: &Name) -> Result<Option<Entry>, Self::Error>;

    /// Whether directory `dir` has no entries.
    fn is_empty(&self, dir: ObjectId) -> Result<bool, Self::Error>;

    /// Whether no object has this id yet (a new object's id must be new).
    fn is_free(&self, id: ObjectId) -> Result<bool, Self::Error> {
        Ok(self.node(id)?.is_none())
    }

    /// Whether `node` is still in the state `base` names.
    fn certifies(&self, node: &Node, base: &Base) -> bool {
        node.matches(base)
    }

    /// The directory `dir` lies in, for the loop check. By default a directory on the way up must
    /// exist and be one (`ParentGone`, `NotDirectory`), as on the server.
    fn parent(&self, dir: ObjectId) -> Result<Option<ObjectId>, Self::Error> {
        Ok(directory(self, dir)?.parent)
    }
}

/// Everything a certified mutation does, for its tree's owner to carry out: the entries first
/// (`unlinked` before `linked`: a rename over a name frees the name first), then each object in
/// `touched`, then the objects in `deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The object the mutation creates (it is in `touched` too, unchanged: it is reported).
    pub created: Option<New>,
    /// Entries that go.
    pub unlinked: Vec<Dirent>,
    /// Entries that come.
    pub linked: Vec<Dirent>,
    /// Every object the mutation reports, in the order the server reports them, each once with
    /// everything the mutation does to it.
    pub touched: Vec<Touch>,
    /// Objects gone for good: a file's last name went, or a directory was removed.
    pub deleted: Vec<ObjectId>,
}

/// One directory entry a plan adds or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    pub dir: ObjectId,
    pub name: Name,
    pub object: ObjectId,
    pub kind: ObjectKind,
}

/// A new object, as its creation describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct New {
    pub object: ObjectId,
    pub parent: ObjectId,
    pub name: Name,
    pub kind: ObjectKind,
    pub mode: u32,
    /// Whom the client names; the server makes the caller the owner instead.
    pub owner: u32,
    pub group: u32,
    pub mtime: Timestamp,
    /// A symlink's or mount point's target.
    pub link: Option<String>,
}

impl New {
    /// The object `m` creates, if it creates one. Symlinks are `rwxrwxrwx` and mount points
    /// `rwxr-xr-x` whatever the client asks: their modes mean nothing.
    pub fn of(m: &Mutation) -> Option<New> {
        let (parent, name, object, kind, mode, owner, group, mtime, link) = match m {
            Mutation::Create { parent, name, object, mode, owner, group, mtime } => {
                (parent, name, object, ObjectKind::File, *mode, *owner, *group, mtime, None)
            }
            Mutation::MakeDir { parent, name, object, mode, owner, group, mtime } => {
                (parent, name, object, ObjectKind::Directory, *mode, *owner, *group, mtime, None)
            }
            Mutation::Symlink { parent, name, object, target, owner, group, mtime } => {
                (parent, name, object, ObjectKind::Symlink, 0o777, *owner, *group, mtime, Some(target))
            }
            Mutation::MakeMountPoint { parent, name, object, target, owner, mtime } => {
                (parent, name, object, ObjectKind::MountPoint, 0o755, *owner, 0, mtime, Some(target))
            }
            Mutation::MakeNode { parent, name, object, kind, mode, owner, group, mtime } => {
                (parent, name, object, ObjectKind::from(*kind), *mode, *owner, *group, mtime, None)
            }
            _ => return None,
        };
        Some(New {
            object: *object,
            parent: parent.object,
            name: name.clone(),
            kind,
            mode,
            owner,
            group,
            mtime: *mtime,
            link: link.cloned(),
        })
    }

    /// Its first attributes. `version` is the server's first stamp, or empty in a cache (the
    /// server assigns it when the record arrives).
    pub fn attr(&self, volume: VolumeId, now: Timestamp, version: VersionVector) -> Attr {
        Attr {
            fid: Fid::new(volume, self.object),
            kind: self.kind,
            mode: self.mode & MODE_MASK,
            owner: self.owner,
            group: self.group,
            size: self.link.as_ref().map_or(0, |l| l.len() as u64),
            // A directory's `.` and its name in the parent.
            nlink: if self.kind == ObjectKind::Directory { 2 } else { 1 },
            mtime: self.mtime,
            ctime: now,
            version,
            parent: Some(self.parent),
            link: self.link.clone(),
        }
    }
}

/// What a mutation does to one object it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    pub object: ObjectId,
    /// Its contents, attributes or entries change: it gets a new version ([`stamp`]).
    pub stamp: bool,
    /// Its entries change: its mtime is now.
    pub listing: bool,
    /// Entries added minus entries removed (a directory's size counts its entries).
    pub entries: i64,
    /// The change of its link count: names of a file, subdirectories of a directory.
    pub links: i64,
    /// The directory it moves to.
    pub parent: Option<ObjectId>,
    /// Anything of it changes (its ctime is now). Not so for an object only reported: a new one,
    /// already in its first state, and the directory of a rename that does nothing.
    pub changes: bool,
}

impl Touch {
    fn new(object: ObjectId) -> Touch {
        Touch { object, stamp: false, listing: false, entries: 0, links: 0, parent: None, changes: false }
    }

    fn stamped(&mut self) -> &mut Touch {
        self.stamp = true;
        self.changes = true;
        self
    }

    fn entries(&mut self, n: i64) -> &mut Touch {
        self.entries += n;
        self.listing = true;
        self.stamped()
    }

    fn links(&mut self, n: i64) -> &mut Touch {
        self.links += n;
        self.changes = true;
        self
    }

    fn moved(&mut self, to: Option<ObjectId>) -> &mut Touch {
        self.parent = to.or(self.parent);
        self.changes = true;
        self
    }

    /// A link count after the touch.
    pub fn nlink(&self, nlink: u32) -> u32 {
        (i64::from(nlink) + self.links).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// A directory's size after the touch.
    pub fn size(&self, size: u64) -> u64 {
        size.saturating_add_signed(self.entries)
    }

    /// Carries the touch out on an object's attributes, all but its version (see [`stamp`]; a
    /// cache leaves versions to the server).
    pub fn apply(&self, attr: &mut Attr, now: Timestamp) {
        if !self.changes {
            return;
        }
        attr.size = self.size(attr.size);
        attr.nlink = self.nlink(attr.nlink);
        if let Some(p) = self.parent {
            attr.parent = Some(p);
        }
        if self.listing {
            attr.mtime = now;
        }
        attr.ctime = now;
    }
}

impl Plan {
    /// The touch of `object`, moved to the end: objects are reported in the order of their last
    /// change, as the server always has.
    fn touch(&mut self, object: ObjectId) -> &mut Touch {
        let t = match self.touched.iter().position(|t| t.object == object) {
            Some(i) => self.touched.remove(i),
            None => Touch::new(object),
        };
        self.touched.push(t);
        let last = self.touched.len() - 1;
        &mut self.touched[last]
    }
}

/// Gives an object that `op` changes its new version: once per operation, however many of its
/// entries the operation changes (see the module notes).
pub fn stamp(version: &mut VersionVector, last_op: &mut Option<OpId>, op: OpId, server: ServerId) {
    if *last_op != Some(op) {
        version.bump(server);
    }
    *last_op = Some(op);
}

/// The existing objects whose version a mutation moves on when it applies, known from the
/// mutation alone: what [`check`] stamps, but for the object a creation makes (it starts at its
/// first version). Not the object a rename moves or a link names: their versions stay. A client
/// holding one of these at version `v` sees `v` [directly followed](VersionVector::directly_follows)
/// if its change was the only one; any other object whose version moved was changed by someone
/// else. (A rename that does nothing stamps nothing: a client finding no move treats it as
/// someone else's change, which only costs a refetch.)
pub fn restamped(m: &Mutation) -> [Option<ObjectId>; 2] {
    match m {
        Mutation::Store { fid, .. } | Mutation::SetAttr { fid, .. } => [Some(fid.object), None],
        Mutation::Create { parent, .. }
        | Mutation::MakeDir { parent, .. }
        | Mutation::Symlink { parent, .. }
        | Mutation::MakeMountPoint { parent, .. }
        | Mutation::MakeNode { parent, .. }
        | Mutation::Link { parent, .. }
        | Mutation::Remove { parent, .. }
        | Mutation::RemoveDir { parent, .. } => [Some(parent.object), None],
        Mutation::Rename { from, to, .. } => [Some(from.object), (to != from).then_some(to.object)],
    }
}

/// What a SetAttr changes, field by field.
pub fn set_attrs(set: &SetAttrs, mode: &mut u32, owner: &mut u32, group: &mut u32, mtime: &mut Timestamp) {
    if let Some(m) = set.mode {
        *mode = m & MODE_MASK;
    }
    if let Some(o) = set.owner {
        *owner = o;
    }
    if let Some(g) = set.group {
        *group = g;
    }
    if let Some(t) = set.mtime {
        *mtime = t;
    }
}

/// Symlink targets: 1 to 4096 bytes, no NUL.
pub fn validate_link_target(target: &str) -> Result<(), RemoteError> {
    if target.is_empty() || target.len() > MAX_LINK_LEN || target.contains('\0') {
        return Err(RemoteError::Invalid("symlink target must be 1-4096 bytes without NUL".into()));
    }
    Ok(())
}

/// Mount point targets: `#volume` or `#cell:volume`, optionally ending in `.` (AFS style).
pub fn validate_mount_target(target: &str) -> Result<(), RemoteError> {
    let body = target.strip_prefix(['#', '%']).unwrap_or("");
    let body = body.strip_suffix('.').unwrap_or(body);
    let volume = body.rsplit(':').next().unwrap_or("");
    let cell_ok = match body.split_once(':') {
        Some((cell, _)) => crate::cell::validate_cell_name(cell).is_ok(),
        None => true,
    };
    let base = volume.trim_end_matches(".readonly").trim_end_matches(".backup");
    if body.is_empty() || !cell_ok || crate::msg::validate_volume_name(base).is_err() {
        return Err(RemoteError::Invalid(format!("mount point target {target:?}: use #volume or #cell:volume")));
    }
    Ok(())
}

/// Both phases: whether `m` certifies against `tree`, and what it does.
pub fn check<T: Tree + ?Sized>(tree: &T, m: &Mutation) -> Result<Plan, T::Error> {
    let located = locate(tree, m)?;
    certify(tree, located)
}

/// What [`locate`] found: the mutation, and the object it changes if it names one.
#[derive(Debug)]
pub struct Located<'m> {
    mutation: &'m Mutation,
    subject: Option<Node>,
}

/// The first phase: what the mutation names exists and is of the right kind (and its targets
/// are valid). Nothing about names or versions yet: see the module notes.
pub fn locate<'m, T: Tree + ?Sized>(tree: &T, mutation: &'m Mutation) -> Result<Located<'m>, T::Error> {
    let subject = match mutation {
        Mutation::Store { fid, .. } => Some(file(tree, fid.object)?),
        Mutation::SetAttr { fid, .. } => Some(object(tree, fid.object)?),
        Mutation::Create { parent, .. } | Mutation::MakeDir { parent, .. } | Mutation::MakeNode { parent, .. } => {
            directory(tree, parent.object)?;
            None
        }
        Mutation::Symlink { parent, target, .. } => {
            validate_link_target(target)?;
            directory(tree, parent.object)?;
            None
        }
        Mutation::MakeMountPoint { parent, target, .. } => {
            validate_mount_target(target)?;
            directory(tree, parent.object)?;
            None
        }
        Mutation::Link { parent, target, .. } => Some(linkable(tree, *target, parent.object)?),
        Mutation::Remove { parent, .. } | Mutation::RemoveDir { parent, .. } => {
            directory(tree, parent.object)?;
            None
        }
        Mutation::Rename { from, to, .. } => {
            if from.volume != to.volume {
                return Err(RemoteError::CrossVolume.into());
            }
            directory(tree, from.object)?;
            if to != from {
                directory(tree, to.object)?;
            }
            None
        }
    };
    Ok(Located { mutation, subject })
}

/// The second phase: names and versions, and the plan.
pub fn certify<T: Tree + ?Sized>(tree: &T, located: Located<'_>) -> Result<Plan, T::Error> {
    let Located { mutation, subject } = located;
    let mut plan = Plan::default();
    match mutation {
        Mutation::Store { fid, base, .. } | Mutation::SetAttr { fid, base, .. } => {
            let node = match subject {
                Some(node) => node,
                None => object(tree, fid.object)?,
            };
            require_base(tree, &node, base)?;
            plan.touch(fid.object).stamped();
        }
        Mutation::Create { .. }
        | Mutation::MakeDir { .. }
        | Mutation::Symlink { .. }
        | Mutation::MakeMountPoint { .. }
        | Mutation::MakeNode { .. } => {
            if let Some(new) = New::of(mutation) {
                create(tree, new, &mut plan)?;
            }
        }
        Mutation::Link { parent, name, target } => {
            name_free(tree, parent.object, name)?;
            plan.linked.push(Dirent {
                dir: parent.object,
                name: name.clone(),
                object: *target,
                kind: ObjectKind::File,
            });
            plan.touch(*target).links(1);
            plan.touch(parent.object).entries(1);
        }
        Mutation::Remove { parent, name, seen } => remove(tree, parent.object, name, seen, &mut plan)?,
        Mutation::RemoveDir { parent, name, object } => remove_dir(tree, parent.object, name, *object, &mut plan)?,
        Mutation::Rename { from, from_name, object, to, to_name, replaced } => {
            let names = Move { from: from.object, from_name, object: *object, to: to.object, to_name };
            rename(tree, names, replaced.as_ref(), &mut plan)?;
        }
    }
    Ok(plan)
}

fn object<T: Tree + ?Sized>(tree: &T, id: ObjectId) -> Result<Node, T::Error> {
    Ok(tree.node(id)?.ok_or_else(|| conflict(ConflictKind::ObjectGone))?)
}

fn directory<T: Tree + ?Sized>(tree: &T, id: ObjectId) -> Result<Node, T::Error> {
    let dir = tree.node(id)?.ok_or_else(|| conflict(ConflictKind::ParentGone))?;
    if dir.kind != ObjectKind::Directory {
        return Err(RemoteError::NotDirectory.into());
    }
    Ok(dir)
}

/// Only regular files have contents to store.
fn file<T: Tree + ?Sized>(tree: &T, id: ObjectId) -> Result<Node, T::Error> {
    let node = object(tree, id)?;
    match node.kind {
        ObjectKind::File => Ok(node),
        ObjectKind::Directory => Err(RemoteError::IsDirectory.into()),
        ObjectKind::Symlink | ObjectKind::MountPoint | ObjectKind::Fifo | ObjectKind::Socket => {
            Err(RemoteError::Invalid("not a regular file".into()).into())
        }
    }
}

/// A file that may take another name in `dir`: one directory's ACL governs a file, so all its
/// names live in that directory.
fn linkable<T: Tree + ?Sized>(tree: &T, target: ObjectId, dir: ObjectId) -> Result<Node, T::Error> {
    let node = object(tree, target)?;
    if node.kind != ObjectKind::File {
        return Err(RemoteError::Invalid("only files can have several names".into()).into());
    }
    if node.parent != Some(dir) {
        return Err(RemoteError::CrossDirectoryLink.into());
    }
    directory(tree, dir)?;
    Ok(node)
}

fn conflict(kind: ConflictKind) -> RemoteError {
    RemoteError::Conflict(kind)
}

fn require_base<T: Tree + ?Sized>(tree: &T, node: &Node, base: &Base) -> Result<(), T::Error> {
    if tree.certifies(node, base) {
        return Ok(());
    }
    Err(conflict(ConflictKind::VersionChanged { current: node.version.clone() }).into())
}

fn name_free<T: Tree + ?Sized>(tree: &T, dir: ObjectId, name: &Name) -> Result<(), T::Error> {
    match tree.entry(dir, name)? {
        Some(e) => Err(conflict(ConflictKind::NameTaken { existing: e.object }).into()),
        None => Ok(()),
    }
}

/// What `name` names in `dir`, which must be what the client saw there.
fn named<T: Tree + ?Sized>(tree: &T, dir: ObjectId, name: &Name, seen: ObjectId) -> Result<Entry, T::Error> {
    let e = tree.entry(dir, name)?.ok_or(RemoteError::NotFound)?;
    if e.object != seen {
        return Err(conflict(ConflictKind::NameChanged).into());
    }
    Ok(e)
}

fn create<T: Tree + ?Sized>(tree: &T, new: New, plan: &mut Plan) -> Result<(), T::Error> {
    if new.object.0 <= LAST_RESERVED_ID {
        return Err(RemoteError::Invalid("object ids up to 0xffff are reserved".into()).into());
    }
    if !tree.is_free(new.object)? {
        return Err(RemoteError::DuplicateObject.into());
    }
    name_free(tree, new.parent, &new.name)?;
    plan.linked.push(Dirent { dir: new.parent, name: new.name.clone(), object: new.object, kind: new.kind });
    plan.touch(new.object);
    let dir = plan.touch(new.parent).entries(1);
    if new.kind == ObjectKind::Directory {
        dir.links(1);
    }
    plan.created = Some(new);
    Ok(())
}

/// One name of `node` goes; the object goes with its last name. A directory has one name, and
/// must be empty to go.
fn unlink<T: Tree + ?Sized>(tree: &T, id: ObjectId, node: &Node, plan: &mut Plan) -> Result<(), T::Error> {
    if node.kind == ObjectKind::Directory {
        if !tree.is_empty(id)? {
            return Err(conflict(ConflictKind::DirectoryNotEmpty).into());
        }
        plan.deleted.push(id);
    } else if node.nlink <= 1 {
        plan.deleted.push(id);
    } else {
        // Another name remains: the object is the same, only its link count changes.
        plan.touch(id).links(-1);
    }
    Ok(())
}

fn remove<T: Tree + ?Sized>(
    tree: &T,
    dir: ObjectId,
    name: &Name,
    seen: &Seen,
    plan: &mut Plan,
) -> Result<(), T::Error> {
    let e = named(tree, dir, name, seen.object)?;
    if e.kind == ObjectKind::Directory {
        return Err(RemoteError::IsDirectory.into());
    }
    let node = object(tree, e.object)?;
    require_base(tree, &node, &seen.base)?;
    plan.unlinked.push(Dirent { dir, name: name.clone(), object: e.object, kind: e.kind });
    unlink(tree, e.object, &node, plan)?;
    plan.touch(dir).entries(-1);
    Ok(())
}

fn remove_dir<T: Tree + ?Sized>(
    tree: &T,
    dir: ObjectId,
    name: &Name,
    object_seen: ObjectId,
    plan: &mut Plan,
) -> Result<(), T::Error> {
    let e = named(tree, dir, name, object_seen)?;
    if e.kind != ObjectKind::Directory {
        return Err(RemoteError::NotDirectory.into());
    }
    let node = object(tree, e.object)?;
    plan.unlinked.push(Dirent { dir, name: name.clone(), object: e.object, kind: e.kind });
    unlink(tree, e.object, &node, plan)?;
    plan.touch(dir).entries(-1).links(-1);
    Ok(())
}

/// The names of a rename.
struct Move<'a> {
    from: ObjectId,
    from_name: &'a Name,
    object: ObjectId,
    to: ObjectId,
    to_name: &'a Name,
}

fn rename<T: Tree + ?Sized>(tree: &T, mv: Move<'_>, replaced: Option<&Seen>, plan: &mut Plan) -> Result<(), T::Error> {
    let e = named(tree, mv.from, mv.from_name, mv.object)?;
    if mv.from == mv.to && mv.from_name == mv.to_name {
        // POSIX: a rename onto itself does nothing.
        plan.touch(mv.from);
        return Ok(());
    }
    let is_dir = e.kind == ObjectKind::Directory;
    if is_dir {
        no_loop(tree, mv.object, mv.to)?;
    }
    if let Some(there) = tree.entry(mv.to, mv.to_name)? {
        if there.object == mv.object {
            // Two names of one file: POSIX says rename does nothing.
            plan.touch(mv.from);
            return Ok(());
        }
        replace(tree, &mv, there, is_dir, replaced, plan)?;
    }
    let moved = object(tree, mv.object)?;
    plan.unlinked.push(Dirent { dir: mv.from, name: mv.from_name.clone(), object: mv.object, kind: e.kind });
    plan.linked.push(Dirent { dir: mv.to, name: mv.to_name.clone(), object: mv.object, kind: e.kind });
    let across = mv.from != mv.to;
    if across && e.kind == ObjectKind::File && moved.nlink > 1 {
        // Its other names stay behind: one directory must govern all of them.
        return Err(RemoteError::CrossDirectoryLink.into());
    }
    plan.touch(mv.object).moved(across.then_some(mv.to));
    let subdir = i64::from(is_dir && across);
    plan.touch(mv.from).entries(-1).links(-subdir);
    plan.touch(mv.to).entries(1).links(subdir);
    Ok(())
}

/// A rename onto a taken name replaces what the client saw there, if it is still there as the
/// client saw it, is of the same sort (directory or not) and, being a directory, is empty.
fn replace<T: Tree + ?Sized>(
    tree: &T,
    mv: &Move<'_>,
    there: Entry,
    is_dir: bool,
    replaced: Option<&Seen>,
    plan: &mut Plan,
) -> Result<(), T::Error> {
    let seen = match replaced {
        Some(seen) if seen.object == there.object => seen,
        _ => return Err(conflict(ConflictKind::NameTaken { existing: there.object }).into()),
    };
    let victim = object(tree, there.object)?;
    require_base(tree, &victim, &seen.base)?;
    let victim_dir = there.kind == ObjectKind::Directory;
    match (is_dir, victim_dir) {
        (true, false) => return Err(RemoteError::NotDirectory.into()),
        (false, true) => return Err(RemoteError::IsDirectory.into()),
        _ => {}
    }
    plan.unlinked.push(Dirent { dir: mv.to, name: mv.to_name.clone(), object: there.object, kind: there.kind });
    plan.touch(mv.to).entries(-1).links(-i64::from(victim_dir));
    unlink(tree, there.object, &victim, plan)
}

/// A directory may not move into itself or below itself.
fn no_loop<T: Tree + ?Sized>(tree: &T, moving: ObjectId, target: ObjectId) -> Result<(), T::Error> {
    let mut at = target;
    for _ in 0..MAX_DEPTH {
        if at == moving {
            return Err(RemoteError::WouldLoop.into());
        }
        if at == ObjectId::ROOT {
            return Ok(());
        }
        match tree.parent(at)? {
            Some(p) => at = p,
            None => return Ok(()),
        }
    }
    Err(Cycle.into())
}

#[cfg(test)]
mod tests;
