//! The volume location database: which volumes exist and which servers hold them.
//!
//! ```text
//! counter/volume      the next volume id (JSON number)
//! vldb/name/NAME      the location entry of volume NAME (JSON VldbEntry)
//! vldb/id/ID          the name of the entry holding volume id ID (read-write, read-only or backup)
//! ```
//!
//! Every change is one transaction conditioned on what it read, so two servers (or two `vos`)
//! changing one entry cannot undo each other: the later one is refused and says so.

use std::sync::Arc;

use proto::msg::{VldbEntry, VolumeRef};
use proto::{RemoteError, VolumeId};

use super::{CellDb, Committed, Compare, Op, Txn, get_json, retrying, unchanged};
use crate::error::{Result, refuse};

const VOLUME_COUNTER: &str = "counter/volume";

fn name_key(name: &str) -> String {
    format!("vldb/name/{name}")
}

fn id_key(id: VolumeId) -> String {
    format!("vldb/id/{}", id.0)
}

/// The ids an entry names.
fn ids(e: &VldbEntry) -> impl Iterator<Item = VolumeId> {
    std::iter::once(e.rw).chain(e.ro).chain(e.backup)
}

#[derive(Clone)]
pub struct Vldb {
    db: Arc<dyn CellDb>,
}

/// Allocates from a counter that starts at 1: reads it, and takes the value if no one else
/// took it meanwhile.
pub(crate) fn next_from(db: &dyn CellDb, counter: &str) -> Result<u64> {
    retrying(db, counter, || {
        let seen = get_json::<u64>(db, counter)?;
        let next = seen.map_or(1, |(n, _)| n);
        let txn = Txn::new().when(unchanged(counter, seen.map(|(_, r)| r))).then(Op::put(counter, &(next + 1)));
        Ok((txn, next))
    })
    .map(|(n, _)| n)
}

impl Vldb {
    pub fn new(db: Arc<dyn CellDb>) -> Self {
        Vldb { db }
    }

    /// A volume id never used before in this cell.
    pub fn allocate_volume_id(&self) -> Result<VolumeId> {
        next_from(&*self.db, VOLUME_COUNTER).map(VolumeId)
    }

    /// Adds an entry; refuses a name or an id that exists.
    pub fn create(&self, e: &VldbEntry) -> Result<()> {
        let mut txn = Txn::new().when(Compare::Missing(name_key(&e.name))).then(Op::put(name_key(&e.name), e));
        for id in ids(e) {
            txn = txn.when(Compare::Missing(id_key(id))).then(Op::put(id_key(id), &e.name));
        }
        match self.db.txn(txn)? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed => refuse(RemoteError::Exists),
        }
    }

    /// An entry with the revision it was read at.
    fn read(&self, name: &str) -> Result<Option<(VldbEntry, i64)>> {
        get_json(&*self.db, &name_key(name))
    }

    pub fn lookup(&self, volume: &VolumeRef) -> Result<Option<VldbEntry>> {
        let name = match volume {
            VolumeRef::Name(name) => name.trim_end_matches(".readonly").trim_end_matches(".backup").to_string(),
            VolumeRef::Id(id) => match get_json::<String>(&*self.db, &id_key(*id))? {
                Some((name, _)) => name,
                None => return Ok(None),
            },
        };
        Ok(self.read(&name)?.map(|(e, _)| e))
    }

    pub fn list(&self) -> Result<Vec<VldbEntry>> {
        self.db.range("vldb/name/")?.iter().map(|kv| kv.json()).collect()
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        retrying(&*self.db, "removing a location entry", || {
            let Some((e, rev)) = self.read(name)? else { return refuse(RemoteError::NoSuchVolume) };
            let mut txn = Txn::new().when(Compare::ModRev(name_key(name), rev)).then(Op::delete(name_key(name)));
            for id in ids(&e) {
                txn = txn.then(Op::delete(id_key(id)));
            }
            Ok((txn, ()))
        })
        .map(|_| ())
    }

    /// Replaces `old` by `new` only if the entry is still `old` (compare-and-swap); with
    /// `fence`, only while that lock is held too (see [`super::locks`]).
    pub fn update(&self, old: &VldbEntry, new: &VldbEntry, fence: Option<&proto::msg::Fence>) -> Result<()> {
        if old.name != new.name {
            return refuse(RemoteError::Invalid("an update cannot rename".into()));
        }
        let Some((now, rev)) = self.read(&new.name)? else { return refuse(RemoteError::NoSuchVolume) };
        if now != *old {
            return refuse(changed_meanwhile(&new.name));
        }
        let mut txn =
            Txn::new().when(Compare::ModRev(name_key(&new.name), rev)).then(Op::put(name_key(&new.name), new));
        // An admin's change holds the volume's lock; any other waits until no admin holds it.
        txn = txn.when(match fence {
            Some(f) => super::locks::still_held(f),
            None => super::locks::unlocked(&new.name),
        });
        for id in ids(old).filter(|id| !ids(new).any(|n| n == *id)) {
            txn = txn.then(Op::delete(id_key(id)));
        }
        for id in ids(new).filter(|id| !ids(old).any(|o| o == *id)) {
            txn = txn.when(Compare::Missing(id_key(id))).then(Op::put(id_key(id), &new.name));
        }
        match self.db.txn(txn)? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed => {
                let locks = super::locks::Locks::new(self.db.clone());
                match fence {
                    Some(f) if !locks.holds(f)? => refuse(super::locks::stale(f)),
                    None if locks.is_locked(&new.name)? => refuse(super::locks::locked_by_another(&new.name)),
                    _ => refuse(changed_meanwhile(&new.name)),
                }
            }
        }
    }

    /// Renames an entry; refuses a name that exists.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        let Some((mut e, rev)) = self.read(name)? else { return refuse(RemoteError::NoSuchVolume) };
        e.name = new_name.to_string();
        let mut txn = Txn::new()
            .when(Compare::ModRev(name_key(name), rev))
            .when(Compare::Missing(name_key(new_name)))
            .then(Op::delete(name_key(name)))
            .then(Op::put(name_key(new_name), &e));
        for id in ids(&e) {
            txn = txn.then(Op::put(id_key(id), new_name));
        }
        match self.db.txn(txn)? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed if self.read(new_name)?.is_some() => refuse(RemoteError::Exists),
            Committed::ConditionFailed => refuse(changed_meanwhile(name)),
        }
    }
}

fn changed_meanwhile(name: &str) -> RemoteError {
    RemoteError::Invalid(format!(
        "the location entry of {name} changed meanwhile (another vos at work?); nothing was changed"
    ))
}
