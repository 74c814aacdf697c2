//! Mutation records: the one shape every change takes.
//!
//! A connected client sends one record at a time (`Request::Mutate`); a client coming back from a
//! disconnection replays its modification log as an ordered batch (`Request::Reintegrate`). Both
//! go through the same certification on the server: a record carries what the client saw (an
//! object's version, or which object a name named), and is applied only if that still holds.
//! A record that does not certify is a conflict, never a silent overwrite.

use serde::{Deserialize, Serialize};

use crate::attr::{Attr, NodeKind, SetAttrs, Timestamp};
use crate::chunk::ChunkRef;
use crate::ids::{Fid, ObjectId, OpId, VolumeId};
use crate::name::Name;
use crate::version::{VersionVector, VolumeStamp};

/// One mutation with the id that makes its replay idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub op: OpId,
    pub mutation: Mutation,
}

/// The state of an object a record was based on.
///
/// Connected, the client knows the version vector the server gave it. Offline, a second change
/// to an object cannot know the version the server will assign to the first one, so it names the
/// record it follows instead (Coda's "store id"): the server remembers each object's last op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Base {
    Version(VersionVector),
    AfterOp(OpId),
}

/// What the client saw of an object a mutation replaces or removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub object: ObjectId,
    pub base: Base,
}

/// Append-only: postcard encodes variants by position (pinned by golden tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// New contents for a file, as a chunk list (the chunks were sent with `PutChunks`).
    Store {
        fid: Fid,
        base: Base,
        chunks: Vec<ChunkRef>,
        mtime: Timestamp,
    },
    SetAttr {
        fid: Fid,
        base: Base,
        set: SetAttrs,
    },
    /// A new, empty file with a client-chosen id.
    Create {
        parent: Fid,
        name: Name,
        object: ObjectId,
        mode: u32,
        owner: u32,
        group: u32,
        mtime: Timestamp,
    },
    MakeDir {
        parent: Fid,
        name: Name,
        object: ObjectId,
        mode: u32,
        owner: u32,
        group: u32,
        mtime: Timestamp,
    },
    Symlink {
        parent: Fid,
        name: Name,
        object: ObjectId,
        target: String,
        owner: u32,
        group: u32,
        mtime: Timestamp,
    },
    /// A second name for an existing file, in the same volume.
    Link {
        parent: Fid,
        name: Name,
        target: ObjectId,
    },
    /// Removes a name of a file, symlink or mount point.
    Remove {
        parent: Fid,
        name: Name,
        seen: Seen,
    },
    /// Removes an empty directory.
    RemoveDir {
        parent: Fid,
        name: Name,
        object: ObjectId,
    },
    /// Moves `from/from_name` (which named `object`) to `to/to_name`, replacing what the client
    /// saw there (`replaced`), or requiring the name to be free.
    Rename {
        from: Fid,
        from_name: Name,
        object: ObjectId,
        to: Fid,
        to_name: Name,
        replaced: Option<Seen>,
    },
    /// A mount point naming another volume (`#volume` or `#cell:volume`).
    MakeMountPoint {
        parent: Fid,
        name: Name,
        object: ObjectId,
        target: String,
        owner: u32,
        mtime: Timestamp,
    },
    /// A named pipe or a socket's name (`mknod(2)`, `mkfifo(3)`, `bind(2)`).
    MakeNode {
        parent: Fid,
        name: Name,
        object: ObjectId,
        kind: NodeKind,
        mode: u32,
        owner: u32,
        group: u32,
        mtime: Timestamp,
    },
}

impl Mutation {
    /// The volume the mutation changes. Every record touches exactly one volume.
    pub fn volume(&self) -> VolumeId {
        match self {
            Mutation::Store { fid, .. } | Mutation::SetAttr { fid, .. } => fid.volume,
            Mutation::Create { parent, .. }
            | Mutation::MakeDir { parent, .. }
            | Mutation::Symlink { parent, .. }
            | Mutation::Link { parent, .. }
            | Mutation::Remove { parent, .. }
            | Mutation::RemoveDir { parent, .. }
            | Mutation::MakeMountPoint { parent, .. }
            | Mutation::MakeNode { parent, .. } => parent.volume,
            Mutation::Rename { from, .. } => from.volume,
        }
    }

    /// The directory entry a mutation creates, removes or moves to (for renames: the target),
    /// if it names one.
    pub fn target(&self) -> Option<(Fid, &Name)> {
        match self {
            Mutation::Create { parent, name, .. }
            | Mutation::MakeDir { parent, name, .. }
            | Mutation::Symlink { parent, name, .. }
            | Mutation::MakeMountPoint { parent, name, .. }
            | Mutation::MakeNode { parent, name, .. }
            | Mutation::Link { parent, name, .. }
            | Mutation::Remove { parent, name, .. }
            | Mutation::RemoveDir { parent, name, .. } => Some((*parent, name)),
            Mutation::Rename { to, to_name, .. } => Some((*to, to_name)),
            Mutation::Store { .. } | Mutation::SetAttr { .. } => None,
        }
    }

    /// A short name for logs and counters.
    pub fn verb(&self) -> &'static str {
        match self {
            Mutation::Store { .. } => "Store",
            Mutation::SetAttr { .. } => "SetAttr",
            Mutation::Create { .. } => "Create",
            Mutation::MakeDir { .. } => "MakeDir",
            Mutation::Symlink { .. } => "Symlink",
            Mutation::Link { .. } => "Link",
            Mutation::Remove { .. } => "Remove",
            Mutation::RemoveDir { .. } => "RemoveDir",
            Mutation::Rename { .. } => "Rename",
            Mutation::MakeMountPoint { .. } => "MakeMountPoint",
            Mutation::MakeNode { .. } => "MakeNode",
        }
    }

    /// The object a mutation creates, if it creates one.
    pub fn created(&self) -> Option<ObjectId> {
        match self {
            Mutation::Create { object, .. }
            | Mutation::MakeDir { object, .. }
            | Mutation::Symlink { object, .. }
            | Mutation::MakeMountPoint { object, .. }
            | Mutation::MakeNode { object, .. } => Some(*object),
            Mutation::Store { .. }
            | Mutation::SetAttr { .. }
            | Mutation::Link { .. }
            | Mutation::Remove { .. }
            | Mutation::RemoveDir { .. }
            | Mutation::Rename { .. } => None,
        }
    }
}

/// Why a record did not certify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConflictKind {
    #[error("the object changed on the server (now {current})")]
    VersionChanged { current: VersionVector },
    #[error("the object no longer exists on the server")]
    ObjectGone,
    #[error("the name is taken on the server")]
    NameTaken { existing: ObjectId },
    #[error("the name no longer names the object the client saw")]
    NameChanged,
    #[error("the directory is no longer empty on the server")]
    DirectoryNotEmpty,
    #[error("the directory no longer exists on the server")]
    ParentGone,
    #[error("the volume's history changed (restored from an older dump)")]
    VolumeRewound,
}

/// What an applied record changed: the new attributes of every object it touched (the object
/// itself and the directories whose entries changed), and the volume stamp after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub attrs: Vec<Attr>,
    /// Objects the record removed for good (their last name went away).
    pub removed: Vec<ObjectId>,
    pub stamp: VolumeStamp,
}

pub type RecordResult = Result<Applied, crate::msg::RemoteError>;
