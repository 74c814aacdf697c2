//! What a record touches, and how, as the server sees it.
//!
//! The optimiser reasons about records through these facts alone, and they follow the server's
//! certification (`volumes/src/apply.rs`):
//!
//! - **subject**: the object the record is about (the file stored, the object created, linked,
//!   removed or renamed);
//! - **dir**: a directory whose entries the record changes;
//! - **stamp**: an object whose `last_op` the record sets, so that later records can name it with
//!   `Base::AfterOp(op)`. Contents and attribute changes and creation stamp the object itself;
//!   every entry change stamps the directory. Links and renames do not stamp the object they
//!   name, and a removal leaves a surviving object (another name remains) unstamped;
//! - **ref**: the object whose state the record carries a [`Base`] for (at most one per record:
//!   a Store's or SetAttr's file, a Remove's `seen`, a Rename's `replaced`);
//! - **victim**: the object a Rename replaces.

use proto::{Base, Fid, Mutation, Name, ObjectId, OpId};

pub(crate) const SUBJECT: i64 = 1;
pub(crate) const DIR: i64 = 2;
pub(crate) const STAMP: i64 = 4;
pub(crate) const REF: i64 = 8;
pub(crate) const VICTIM: i64 = 16;

/// The kind column: one code per mutation verb. Stored in the database, so never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Store = 0,
    SetAttr = 1,
    Create = 2,
    MakeDir = 3,
    Symlink = 4,
    Link = 5,
    Remove = 6,
    RemoveDir = 7,
    Rename = 8,
    MakeMountPoint = 9,
    MakeNode = 10,
}

pub(crate) fn kind(m: &Mutation) -> Kind {
    match m {
        Mutation::Store { .. } => Kind::Store,
        Mutation::SetAttr { .. } => Kind::SetAttr,
        Mutation::Create { .. } => Kind::Create,
        Mutation::MakeDir { .. } => Kind::MakeDir,
        Mutation::Symlink { .. } => Kind::Symlink,
        Mutation::Link { .. } => Kind::Link,
        Mutation::Remove { .. } => Kind::Remove,
        Mutation::RemoveDir { .. } => Kind::RemoveDir,
        Mutation::Rename { .. } => Kind::Rename,
        Mutation::MakeMountPoint { .. } => Kind::MakeMountPoint,
        Mutation::MakeNode { .. } => Kind::MakeNode,
    }
}

/// The object the record is about.
pub(crate) fn subject(m: &Mutation) -> ObjectId {
    match m {
        Mutation::Store { fid, .. } | Mutation::SetAttr { fid, .. } => fid.object,
        Mutation::Create { object, .. }
        | Mutation::MakeDir { object, .. }
        | Mutation::Symlink { object, .. }
        | Mutation::MakeMountPoint { object, .. }
        | Mutation::MakeNode { object, .. }
        | Mutation::RemoveDir { object, .. }
        | Mutation::Rename { object, .. } => *object,
        Mutation::Link { target, .. } => *target,
        Mutation::Remove { seen, .. } => seen.object,
    }
}

/// Whether the record brings its subject into existence.
pub(crate) fn is_creation(m: &Mutation) -> bool {
    m.created().is_some()
}

/// A Rename that names the same entry twice changes nothing on the server (not even stamps).
fn is_null_rename(m: &Mutation) -> bool {
    matches!(m, Mutation::Rename { from, from_name, to, to_name, .. } if from == to && from_name == to_name)
}

/// Every object the record touches, each once, with its roles.
pub(crate) fn touches(m: &Mutation) -> Vec<(ObjectId, i64)> {
    let mut out: Vec<(ObjectId, i64)> = Vec::with_capacity(4);
    let mut add = |o: ObjectId, roles: i64| match out.iter_mut().find(|(x, _)| *x == o) {
        Some((_, r)) => *r |= roles,
        None => out.push((o, roles)),
    };
    match m {
        Mutation::Store { fid, .. } | Mutation::SetAttr { fid, .. } => add(fid.object, SUBJECT | STAMP | REF),
        Mutation::Create { parent, object, .. }
        | Mutation::MakeDir { parent, object, .. }
        | Mutation::Symlink { parent, object, .. }
        | Mutation::MakeMountPoint { parent, object, .. }
        | Mutation::MakeNode { parent, object, .. } => {
            add(*object, SUBJECT | STAMP);
            add(parent.object, DIR | STAMP);
        }
        Mutation::Link { parent, target, .. } => {
            add(*target, SUBJECT);
            add(parent.object, DIR | STAMP);
        }
        Mutation::Remove { parent, seen, .. } => {
            add(seen.object, SUBJECT | REF);
            add(parent.object, DIR | STAMP);
        }
        Mutation::RemoveDir { parent, object, .. } => {
            add(*object, SUBJECT);
            add(parent.object, DIR | STAMP);
        }
        Mutation::Rename { from, object, to, replaced, .. } => {
            let stamp = if is_null_rename(m) { 0 } else { STAMP };
            add(*object, SUBJECT);
            add(from.object, DIR | stamp);
            add(to.object, DIR | stamp);
            if let Some(seen) = replaced {
                add(seen.object, VICTIM | REF);
            }
        }
    }
    out
}

/// Whether the record stamps `o` (sets its `last_op` on the server).
pub(crate) fn stamps(m: &Mutation, o: ObjectId) -> bool {
    touches(m).iter().any(|&(x, roles)| x == o && roles & STAMP != 0)
}

/// The objects the record stamps.
pub fn stamped(m: &Mutation) -> Vec<ObjectId> {
    touches(m).into_iter().filter(|&(_, roles)| roles & STAMP != 0).map(|(o, _)| o).collect()
}

/// The object the record carries a base for, and that base.
pub(crate) fn reference(m: &Mutation) -> Option<(ObjectId, &Base)> {
    match m {
        Mutation::Store { fid, base, .. } | Mutation::SetAttr { fid, base, .. } => Some((fid.object, base)),
        Mutation::Remove { seen, .. } => Some((seen.object, &seen.base)),
        Mutation::Rename { replaced: Some(seen), .. } => Some((seen.object, &seen.base)),
        _ => None,
    }
}

pub(crate) fn reference_mut(m: &mut Mutation) -> Option<&mut Base> {
    match m {
        Mutation::Store { base, .. } | Mutation::SetAttr { base, .. } => Some(base),
        Mutation::Remove { seen, .. } => Some(&mut seen.base),
        Mutation::Rename { replaced: Some(seen), .. } => Some(&mut seen.base),
        _ => None,
    }
}

/// The directory entries (directory, name) the record reads or changes.
pub(crate) fn entries(m: &Mutation) -> Vec<(ObjectId, &Name)> {
    match m {
        Mutation::Store { .. } | Mutation::SetAttr { .. } => Vec::new(),
        Mutation::Create { parent, name, .. }
        | Mutation::MakeDir { parent, name, .. }
        | Mutation::Symlink { parent, name, .. }
        | Mutation::MakeMountPoint { parent, name, .. }
        | Mutation::MakeNode { parent, name, .. }
        | Mutation::Link { parent, name, .. }
        | Mutation::Remove { parent, name, .. }
        | Mutation::RemoveDir { parent, name, .. } => vec![(parent.object, name)],
        Mutation::Rename { from, from_name, to, to_name, .. } => vec![(from.object, from_name), (to.object, to_name)],
    }
}

/// Where a creation record puts its object.
pub(crate) fn location(m: &Mutation) -> Option<(Fid, &Name)> {
    match m {
        Mutation::Create { parent, name, .. }
        | Mutation::MakeDir { parent, name, .. }
        | Mutation::Symlink { parent, name, .. }
        | Mutation::MakeMountPoint { parent, name, .. }
        | Mutation::MakeNode { parent, name, .. } => Some((*parent, name)),
        _ => None,
    }
}

/// Moves a creation record's object to another directory entry.
pub(crate) fn relocate(m: &mut Mutation, to: Fid, to_name: &Name) {
    match m {
        Mutation::Create { parent, name, .. }
        | Mutation::MakeDir { parent, name, .. }
        | Mutation::Symlink { parent, name, .. }
        | Mutation::MakeMountPoint { parent, name, .. }
        | Mutation::MakeNode { parent, name, .. } => {
            *parent = to;
            *name = to_name.clone();
        }
        _ => {}
    }
}

pub(crate) fn object_bytes(o: ObjectId) -> [u8; 16] {
    o.0.to_be_bytes()
}

pub(crate) fn op_bytes(op: OpId) -> [u8; 16] {
    op.0.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use proto::{Seen, VolumeId};

    use super::*;

    fn fid(o: u128) -> Fid {
        Fid::new(VolumeId(1), ObjectId(o))
    }

    #[test]
    fn rename_stamps_both_directories_but_not_the_object() {
        let m = Mutation::Rename {
            from: fid(10),
            from_name: Name::new("a").unwrap(),
            object: ObjectId(11),
            to: fid(12),
            to_name: Name::new("b").unwrap(),
            replaced: Some(Seen { object: ObjectId(13), base: Base::AfterOp(OpId(5)) }),
        };
        assert_eq!(stamped(&m), vec![ObjectId(10), ObjectId(12)]);
        assert_eq!(reference(&m).map(|(o, _)| o), Some(ObjectId(13)));
        assert_eq!(subject(&m), ObjectId(11));
    }

    #[test]
    fn null_rename_stamps_nothing() {
        let a = Name::new("a").unwrap();
        let m = Mutation::Rename {
            from: fid(10),
            from_name: a.clone(),
            object: ObjectId(11),
            to: fid(10),
            to_name: a,
            replaced: None,
        };
        assert!(stamped(&m).is_empty());
        assert_eq!(touches(&m), vec![(ObjectId(11), SUBJECT), (ObjectId(10), DIR)]);
    }
}
