//! The store's side of replicated read-write volumes: applying a batch exactly as the group's
//! leader decided it, so every member makes the same change, and snapshots of one volume for a
//! member that is new or fell too far behind.
//!
//! A batch's outcome may depend only on the volume's rows and on what travels in the log
//! entry. Everything else a server would decide alone is decided once, by the leader, and
//! carried in [`Decided`]: the clock, whether the disk has room (the leader's measurement), and
//! which chunks a store named that the leader does not hold. Version vectors of a replicated
//! volume carry one entry, [`GROUP_STAMP`]: the group is one copy as far as clients can tell.
//!
//! Each member records the log position it applied last (an opaque blob of the replication
//! layer) in the transaction of the change itself, so after a crash the volume and its
//! position agree and nothing is applied twice.
//!
//! A snapshot is the volume's dump (the format of `vos dump`), then the results remembered for
//! the volume's OpIds, then the log position, read from one snapshot of the database.

use std::io::{Read, Seek, SeekFrom, Write};

use proto::msg::{VolumeInfo, VolumeKind};
use proto::{Acl, ChunkHash, ChunkRef, ClientId, Mutation, Record, ServerId, Timestamp, VolumeId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::Caller;
use crate::apply::{BatchOutcome, How};
use crate::error::{Result, StoreError};
use crate::space::Budget;
use crate::store::{SmallChunk, Store};

/// The version-vector entry every member of a group stamps changes with.
pub const GROUP_STAMP: ServerId = ServerId(0);

/// How a volume is born: the same on every member of its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Birth {
    pub incarnation: u64,
    pub now: Timestamp,
    pub stamp: ServerId,
}

impl Birth {
    /// A new replicated volume's birth, chosen by the member that proposes it.
    pub fn new_replicated() -> Birth {
        Birth { incarnation: rand::random::<u64>() >> 1, now: Timestamp::now(), stamp: GROUP_STAMP }
    }
}

/// What a replicated volume's leader decided about a batch before proposing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The leader's clock.
    pub now: Timestamp,
    /// The leader's free space above its low-water mark (`None`: not measured).
    pub headroom: Option<i128>,
    /// Per record: how many chunks of its Store the leader lacked (0 for other records).
    pub missing: Vec<u32>,
}

/// One remembered result, as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OpRow {
    #[serde(with = "serde_bytes")]
    op: Vec<u8>,
    #[serde(with = "serde_bytes")]
    client: Vec<u8>,
    at: i64,
    #[serde(with = "serde_bytes")]
    result: Vec<u8>,
}

/// What follows the dump in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trailer {
    name: String,
    ops: Vec<OpRow>,
    #[serde(with = "serde_bytes")]
    applied: Vec<u8>,
}

/// The largest trailer read back (the remembered results of a busy week).
const MAX_TRAILER: u64 = 512 * 1024 * 1024;

pub(crate) fn note_applied(c: &Connection, volume: VolumeId, applied: &[u8]) -> Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO replicated (volume, applied) VALUES (?1, ?2)")?
        .execute(params![volume.0 as i64, applied])?;
    Ok(())
}

fn read_applied(c: &Connection, volume: VolumeId) -> Result<Option<Vec<u8>>> {
    Ok(c.prepare_cached("SELECT applied FROM replicated WHERE volume = ?1")?
        .query_row(params![volume.0 as i64], |r| r.get(0))
        .optional()?)
}

impl Store {
    /// The leader's decisions about a batch (see [`Decided`]); `inline` are the chunks that
    /// travel with it.
    pub fn decide(&self, inline: &[ChunkRef], records: &[Record]) -> Result<Decided> {
        let headroom = self.space.budget().headroom();
        let missing = self.read(|c| {
            let mut have = c.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1 AND len = ?2")?;
            let mut missing = Vec::with_capacity(records.len());
            for r in records {
                let mut n = 0u32;
                if let Mutation::Store { chunks, .. } = &r.mutation {
                    for ch in chunks {
                        let carried = inline.iter().any(|i| i.hash == ch.hash && i.len == ch.len);
                        if !carried && !have.exists(params![&ch.hash.0[..], ch.len])? {
                            n += 1;
                        }
                    }
                }
                missing.push(n);
            }
            Ok(missing)
        })?;
        Ok(Decided { now: Timestamp::now(), headroom, missing })
    }

    /// Applies a batch of replicated volume `group` as its leader decided it, recording
    /// `applied` in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_decided(
        &self,
        caller: &Caller,
        client: ClientId,
        only: Option<VolumeId>,
        group: VolumeId,
        chunks: &[SmallChunk],
        records: &[Record],
        decided: &Decided,
        applied: &[u8],
    ) -> Result<BatchOutcome> {
        let how = How {
            now: decided.now,
            stamp: GROUP_STAMP,
            budget: Budget::from_headroom(decided.headroom),
            missing: Some(&decided.missing),
            applied: Some((group, applied)),
        };
        let out = match self.apply_batch(caller, client, only, chunks, records, how) {
            // The leader found room and this disk has none: the reserve lets it commit.
            Err(e) if e.is_no_space() && self.space.release_reserve() => {
                self.apply_batch(caller, client, only, chunks, records, how)
            }
            other => other,
        }?;
        if out.results.iter().any(|r| r.as_ref().is_ok_and(|a| !a.removed.is_empty())) {
            self.space.note_freed();
        }
        Ok(out)
    }

    /// Creates replicated volume `id` as its group's first entry said.
    pub fn create_replicated(
        &self,
        id: VolumeId,
        name: &str,
        quota: u64,
        root_acl: &Acl,
        birth: Birth,
        applied: &[u8],
    ) -> Result<VolumeInfo> {
        self.create_volume_as(id, name, VolumeKind::ReadWrite, quota, root_acl, birth, Some(applied))
    }

    /// Sets one ACL entry of a replicated volume's directory as its log entry says.
    pub fn set_acl_replicated(
        &self,
        caller: &Caller,
        fid: proto::Fid,
        entry: (proto::auth::PtsId, proto::auth::Rights, bool),
        now: Timestamp,
        applied: &[u8],
    ) -> Result<(proto::Attr, proto::auth::Access)> {
        self.set_acl_entry_as(caller, fid, entry, now, GROUP_STAMP, Some(applied))
    }

    /// Records a log position that changed nothing in the volume (a membership change).
    pub fn note_applied(&self, volume: VolumeId, applied: &[u8]) -> Result<()> {
        note_applied(&self.lock_writer(), volume, applied)
    }

    /// The log position recorded for `volume`, if it is replicated here.
    pub fn applied(&self, volume: VolumeId) -> Result<Option<Vec<u8>>> {
        self.read(|c| read_applied(c, volume))
    }

    /// Which of `chunks` this store lacks (a member pulls them before applying an entry).
    pub fn lacking(&self, chunks: &[ChunkRef]) -> Result<Vec<ChunkRef>> {
        let hashes: Vec<ChunkHash> = chunks.iter().map(|c| c.hash).collect();
        let missing = self.missing_chunks(&hashes)?;
        Ok(missing.into_iter().filter_map(|i| chunks.get(i as usize).copied()).collect())
    }

    /// Writes a snapshot of replicated volume `id` to `out`; returns the log position it holds.
    pub fn snapshot(&self, id: VolumeId, out: &mut dyn Write) -> Result<Vec<u8>> {
        let ((applied, ops, name), _) = self.dump_with(id, None, out, |c| {
            let applied = read_applied(c, id)?.unwrap_or_default();
            let mut stmt = c.prepare_cached("SELECT op, client, at, result FROM op_results WHERE volume = ?1")?;
            let ops = stmt
                .query_map(params![id.0 as i64], |r| {
                    Ok(OpRow { op: r.get(0)?, client: r.get(1)?, at: r.get(2)?, result: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let name: String =
                c.query_row("SELECT name FROM volumes WHERE id = ?1", params![id.0 as i64], |r| r.get(0))?;
            Ok((applied, ops, name))
        })?;
        let trailer = Trailer { name, ops, applied: applied.clone() };
        let body =
            postcard::to_stdvec(&trailer).map_err(|e| StoreError::Corrupt(format!("encoding a snapshot: {e}")))?;
        out.write_all(&body)?;
        out.write_all(&(body.len() as u64).to_le_bytes())?;
        out.flush()?;
        Ok(applied)
    }

    /// Replaces volume `id` by a snapshot [`Store::snapshot`] wrote; returns its log position.
    pub fn install_snapshot<R: Read + Seek>(&self, id: VolumeId, input: &mut R) -> Result<Vec<u8>> {
        let end = input.seek(SeekFrom::End(0))?;
        if end < 8 {
            return Err(StoreError::Corrupt("snapshot too short".into()));
        }
        input.seek(SeekFrom::End(-8))?;
        let mut len = [0u8; 8];
        input.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > MAX_TRAILER || len + 8 > end {
            return Err(StoreError::Corrupt(format!("snapshot trailer of {len} bytes")));
        }
        let dump_len = end - 8 - len;
        input.seek(SeekFrom::Start(dump_len))?;
        let mut body = vec![0u8; len as usize];
        input.read_exact(&mut body)?;
        let trailer: Trailer =
            postcard::from_bytes(&body).map_err(|e| StoreError::Corrupt(format!("snapshot trailer: {e}")))?;
        // The remembered results first: if the restore does not happen (a crash), the snapshot
        // is installed again, and results of OpIds the volume never saw answer nothing.
        {
            let mut conn = self.lock_writer();
            let tx = conn.transaction()?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT OR REPLACE INTO op_results (op, client, at, result, volume) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for o in &trailer.ops {
                    ins.execute(params![o.op, o.client, o.at, o.result, id.0 as i64])?;
                }
            }
            tx.commit()?;
        }
        input.seek(SeekFrom::Start(0))?;
        let mut dump = input.take(dump_len);
        self.restore_as(&mut dump, id, &trailer.name, VolumeKind::ReadWrite, true, Some(&trailer.applied))?;
        Ok(trailer.applied)
    }
}
