//! The namespace as the kernel sees it: inode numbers for objects, the mount root, and what
//! the kernel is told about each node.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::{ObjectKind, Timestamp};

use super::lock;
use crate::error::{Result, VenusError};
use crate::ids::{GFid, ROOT_INO};

/// What the kernel is told about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    /// `Directory` for directories and crossed mount points, `File`, or `Symlink`.
    pub kind: ObjectKind,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Anyone may look this up: the kernel may cache it for everyone.
    pub public: bool,
}

/// A node of the namespace: the mount root (listing cells) or an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Root,
    Object(GFid),
}

/// Inode numbers the kernel was given, and the objects they name. An object's number is
/// derived from its id, so it is the same after a restart; the table only answers "which
/// object is inode N".
#[derive(Default)]
pub struct Inodes {
    known: Mutex<HashMap<u64, GFid>>,
}

impl Inodes {
    pub fn node(&self, ino: u64) -> Result<Node> {
        if ino == ROOT_INO {
            return Ok(Node::Root);
        }
        lock(&self.known).get(&ino).copied().map(Node::Object).ok_or(VenusError::NotFound)
    }

    /// The inode number the kernel is given for `g`.
    pub fn register(&self, g: GFid) -> u64 {
        let ino = g.ino();
        lock(&self.known).insert(ino, g);
        ino
    }
}
