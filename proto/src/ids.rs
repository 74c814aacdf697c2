//! Identifiers shared by clients and servers.
//!
//! Object ids are random 128-bit numbers chosen by whoever creates the object, so a client that
//! creates files while disconnected needs no server round trip and no id remapping when it
//! reintegrates; the server rejects a duplicate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A volume: a subtree of the namespace stored and moved as a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VolumeId(pub u64);

/// An object (file, directory, symlink or mount point) inside a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub u128);

/// The full name of an object: its volume and its id in that volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fid {
    pub volume: VolumeId,
    pub object: ObjectId,
}

/// A vice server within a cell; the key of version-vector entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerId(pub u32);

/// A client-chosen id for one mutation, so a retry after a lost reply is answered from the
/// server's memory instead of being applied twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId(pub u128);

/// A client cache manager (one venus), stable across its restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientId(pub u128);

impl ObjectId {
    /// The root directory of every volume has this well-known id.
    pub const ROOT: ObjectId = ObjectId(1);

    /// A fresh random id. Collisions are astronomically unlikely and rejected by the server.
    pub fn random() -> Self {
        loop {
            let id: u128 = rand::random();
            // Small ids are reserved for well-known objects.
            if id > 0xffff {
                return ObjectId(id);
            }
        }
    }
}

impl OpId {
    pub fn random() -> Self {
        OpId(rand::random())
    }
}

impl ClientId {
    pub fn random() -> Self {
        ClientId(rand::random())
    }
}

impl Fid {
    pub fn new(volume: VolumeId, object: ObjectId) -> Self {
        Fid { volume, object }
    }

    pub fn root(volume: VolumeId) -> Self {
        Fid::new(volume, ObjectId::ROOT)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.volume, self.object)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for Fid {
    type Err = String;

    /// Parses the `volume.object` form printed by `Display` (object in hex).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (v, o) = s.split_once('.').ok_or_else(|| format!("not a fid: {s:?}"))?;
        let volume = v.parse().map_err(|_| format!("bad volume id in fid {s:?}"))?;
        let object = u128::from_str_radix(o, 16).map_err(|_| format!("bad object id in fid {s:?}"))?;
        Ok(Fid::new(VolumeId(volume), ObjectId(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_display_parses_back() {
        let fid = Fid::new(VolumeId(7), ObjectId::random());
        assert_eq!(fid.to_string().parse::<Fid>().unwrap(), fid);
        assert!("7".parse::<Fid>().is_err());
        assert!("x.1".parse::<Fid>().is_err());
    }

    #[test]
    fn random_ids_avoid_reserved_range() {
        for _ in 0..1000 {
            assert!(ObjectId::random().0 > 0xffff);
        }
    }
}
