//! Client-side identifiers: which cell an object belongs to, and the inode numbers the kernel
//! sees.
//!
//! Volume ids are unique within a cell only, so venus names objects by cell and Fid together.
//! Inode numbers are derived from that name by hashing, so the same object always has the same
//! inode (also across restarts, and in `readdir` without a lookup).

use proto::Fid;
use serde::{Deserialize, Serialize};

/// Index of a cell in this venus's list of cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellId(pub u16);

/// A globally unique object name: cell and Fid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GFid {
    pub cell: CellId,
    pub fid: Fid,
}

/// The mount root, which lists the cells.
pub const ROOT_INO: u64 = 1;

impl GFid {
    pub fn new(cell: CellId, fid: Fid) -> Self {
        GFid { cell, fid }
    }

    pub fn ino(&self) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&self.cell.0.to_le_bytes());
        h.update(&self.fid.volume.0.to_le_bytes());
        h.update(&self.fid.object.0.to_le_bytes());
        let b = h.finalize();
        let mut n = [0u8; 8];
        n.copy_from_slice(&b.as_bytes()[..8]);
        // Keep clear of 0 and the root, and of the top bit (some tools treat inodes as signed).
        (u64::from_le_bytes(n) >> 1).max(2)
    }
}

impl std::fmt::Display for GFid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.cell.0, self.fid)
    }
}
