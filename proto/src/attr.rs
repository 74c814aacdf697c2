//! Object attributes as the protocol carries them.

use serde::{Deserialize, Serialize};

use crate::ids::{Fid, ObjectId};
use crate::name::Name;
use crate::version::VersionVector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    File,
    Directory,
    Symlink,
    /// A directory entry that names another volume (`#cell:volume`); clients cross it.
    MountPoint,
    /// A named pipe: only its name and attributes are stored; the pipe itself lives in each
    /// client's kernel, as on NFS.
    Fifo,
    /// A UNIX-domain socket's name (`bind(2)`); the socket lives in the kernel that bound it.
    Socket,
}

/// The kinds of special file a client may make (`mknod(2)`): device nodes are not among them
/// (the mount is `nodev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    Fifo,
    Socket,
}

impl From<NodeKind> for ObjectKind {
    fn from(k: NodeKind) -> ObjectKind {
        match k {
            NodeKind::Fifo => ObjectKind::Fifo,
            NodeKind::Socket => ObjectKind::Socket,
        }
    }
}

/// Wall-clock time since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(std::time::SystemTime::now())
    }

    pub fn from_system(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp { secs: -(d.as_secs() as i64), nanos: 0 }
                } else {
                    Timestamp { secs: -(d.as_secs() as i64) - 1, nanos: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }

    pub fn to_system(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.secs >= 0 {
            base + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            base - std::time::Duration::from_secs(self.secs.unsigned_abs())
                + std::time::Duration::from_nanos(u64::from(self.nanos))
        }
    }

    /// Nanoseconds since the epoch, as SQLite stores it.
    pub fn as_nanos(self) -> i64 {
        self.secs.saturating_mul(1_000_000_000).saturating_add(i64::from(self.nanos))
    }

    pub fn from_nanos(n: i64) -> Self {
        Timestamp { secs: n.div_euclid(1_000_000_000), nanos: n.rem_euclid(1_000_000_000) as u32 }
    }
}

/// Permission bits a client may set (`rwx` for owner, group, other, plus setgid/sticky).
pub const MODE_MASK: u32 = 0o7777;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub fid: Fid,
    pub kind: ObjectKind,
    /// Permission bits only (`MODE_MASK`); the kind says what file type it is.
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    pub size: u64,
    pub nlink: u32,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub version: VersionVector,
    /// For directories: the parent directory (the root's parent is itself).
    pub parent: Option<ObjectId>,
    /// For symlinks: the target; for mount points: `#cell:volume` or `#volume`.
    pub link: Option<String>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Name,
    pub object: ObjectId,
    pub kind: ObjectKind,
}

/// The attribute changes a `SetAttr` record may carry. Size changes are stores, because the
/// client always holds the whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mtime: Option<Timestamp>,
}

impl SetAttrs {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.owner.is_none() && self.group.is_none() && self.mtime.is_none()
    }

    /// Later changes win field by field: what the CML does when it merges setattrs.
    pub fn merge(&mut self, later: &SetAttrs) {
        if later.mode.is_some() {
            self.mode = later.mode;
        }
        if later.owner.is_some() {
            self.owner = later.owner;
        }
        if later.group.is_some() {
            self.group = later.group;
        }
        if later.mtime.is_some() {
            self.mtime = later.mtime;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips() {
        for n in [0i64, 1, -1, 1_700_000_000_123_456_789, -1_500_000_000] {
            assert_eq!(Timestamp::from_nanos(n).as_nanos(), n);
        }
        let now = std::time::SystemTime::now();
        assert_eq!(Timestamp::from_system(now).to_system(), now);
        let before = std::time::UNIX_EPOCH - std::time::Duration::new(5, 250);
        assert_eq!(Timestamp::from_system(before).to_system(), before);
    }

    #[test]
    fn setattrs_merge_field_by_field() {
        let mut a = SetAttrs { mode: Some(0o600), owner: Some(1), ..Default::default() };
        a.merge(&SetAttrs { mode: Some(0o644), group: Some(2), ..Default::default() });
        assert_eq!(a, SetAttrs { mode: Some(0o644), owner: Some(1), group: Some(2), mtime: None });
    }
}
