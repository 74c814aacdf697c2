//! Version vectors for objects and version stamps for volumes.
//!
//! An object's version vector has one counter per replica of its volume (one entry for an
//! unreplicated volume). Comparing two vectors says whether they are the same version, one is
//! newer, or they were changed concurrently (a conflict). A volume's stamp is bumped on every
//! change inside the volume, so a client can revalidate a whole volume with one comparison.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ServerId;

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VvOrder {
    Equal,
    /// The left vector has seen everything the right one has, and more.
    Dominates,
    /// The right vector is strictly newer.
    Dominated,
    /// Each has changes the other lacks: concurrent updates.
    Concurrent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ServerId, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh object's vector: one update at `server`.
    pub fn first(server: ServerId) -> Self {
        let mut v = Self::new();
        v.bump(server);
        v
    }

    pub fn get(&self, server: ServerId) -> u64 {
        self.0.get(&server).copied().unwrap_or(0)
    }

    pub fn bump(&mut self, server: ServerId) {
        *self.0.entry(server).or_insert(0) += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|&n| n == 0)
    }

    /// Sum of all counters: a convenient scalar for display.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn compare(&self, other: &VersionVector) -> VvOrder {
        let mut ge = true;
        let mut le = true;
        for key in self.0.keys().chain(other.0.keys()) {
            match self.get(*key).cmp(&other.get(*key)) {
                Ordering::Less => ge = false,
                Ordering::Greater => le = false,
                Ordering::Equal => {}
            }
        }
        match (ge, le) {
            (true, true) => VvOrder::Equal,
            (true, false) => VvOrder::Dominates,
            (false, true) => VvOrder::Dominated,
            (false, false) => VvOrder::Concurrent,
        }
    }

    pub fn same_as(&self, other: &VersionVector) -> bool {
        self.compare(other) == VvOrder::Equal
    }

    /// Whether `self` is `earlier` changed by exactly one operation: a server bumps an object's
    /// vector once per operation that touches it, so nobody else's change came in between.
    pub fn directly_follows(&self, earlier: &VersionVector) -> bool {
        self.compare(earlier) == VvOrder::Dominates && self.total() == earlier.total() + 1
    }

    pub fn entries(&self) -> impl Iterator<Item = (ServerId, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }
}

impl std::fmt::Display for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        write!(f, "[{}]", parts.join(","))
    }
}

/// A volume's version stamp. `incarnation` changes whenever the volume is restored from a dump
/// or recreated, so a client can tell "the same volume, later" from "a different history".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VolumeStamp {
    pub incarnation: u64,
    pub counter: u64,
}

impl VolumeStamp {
    /// Whether `self` is the direct successor of `earlier` by exactly `n` changes.
    pub fn follows(&self, earlier: &VolumeStamp, n: u64) -> bool {
        self.incarnation == earlier.incarnation && self.counter == earlier.counter + n
    }

    /// A stamp that went backwards (or changed history) cannot be trusted to overwrite newer
    /// local data.
    pub fn went_backwards_from(&self, known: &VolumeStamp) -> bool {
        self.incarnation != known.incarnation || self.counter < known.counter
    }
}

impl std::fmt::Display for VolumeStamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}/{}", self.incarnation, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u32, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(s, n) in pairs {
            for _ in 0..n {
                v.bump(ServerId(s));
            }
        }
        v
    }

    #[test]
    fn ordering() {
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(1, 2)])), VvOrder::Equal);
        assert_eq!(vv(&[(1, 3)]).compare(&vv(&[(1, 2)])), VvOrder::Dominates);
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(1, 3)])), VvOrder::Dominated);
        assert_eq!(vv(&[(1, 2), (2, 1)]).compare(&vv(&[(1, 3)])), VvOrder::Concurrent);
        // A missing entry counts as zero.
        assert_eq!(vv(&[(1, 1), (2, 0)]).compare(&vv(&[(1, 1)])), VvOrder::Equal);
        assert_eq!(vv(&[]).compare(&vv(&[(1, 1)])), VvOrder::Dominated);
    }

    #[test]
    fn stamps() {
        let a = VolumeStamp { incarnation: 5, counter: 10 };
        let b = VolumeStamp { incarnation: 5, counter: 11 };
        assert!(b.follows(&a, 1));
        assert!(!a.follows(&b, 1));
        assert!(a.went_backwards_from(&b));
        assert!(!b.went_backwards_from(&a));
        let other = VolumeStamp { incarnation: 6, counter: 99 };
        assert!(other.went_backwards_from(&b));
    }
}
