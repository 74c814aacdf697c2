//! Reclaiming space: chunks no file references any more, packs they leave empty or mostly dead,
//! and old remembered op results.
//!
//! Mark and sweep rather than reference counts: the truth is always `file_chunks`, so there is no
//! counter to drift after a crash. A chunk is swept only after a grace period unreferenced, so a
//! client that was just told the server holds it has time to commit a store that uses it; if it
//! is late, its store fails with `MissingChunks` and it uploads again.
//!
//! Packs: a pack no row names (all its chunks swept, or a crash before its rows committed) is
//! deleted; a pack whose live chunks fill less than half of it is rewritten: its live chunks
//! are copied to a new pack, made durable, their rows moved in one transaction, and only then
//! the old pack deleted. A reader that looked up the old place finds the pack gone and looks
//! again (`Store::read_chunk`). The sweep holds the upload lock exclusively, so no pack is
//! being written while it looks.

use std::collections::HashMap;
use std::time::Duration;

use proto::{ChunkHash, Timestamp};
use rusqlite::{OptionalExtension, params};

use crate::chunks::PackId;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// How long remembered op results are kept: a client that lost a reply retries well within this.
pub const OP_RESULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    /// Chunk files and packs no row names (a crash between writing them and recording them).
    pub orphan_files_removed: u64,
    /// Packs deleted because none of their chunks is used any more.
    pub packs_removed: u64,
    /// Packs rewritten because most of their bytes were dead.
    pub packs_rewritten: u64,
    /// Bytes of pack files given back to the file system.
    pub pack_bytes_freed: u64,
    /// Packs that could not be rewritten (unreadable, or a chunk that no longer matches its
    /// hash): left as they are, for an administrator to look at; the sweep goes on without them.
    pub pack_errors: Vec<String>,
    pub op_results_pruned: u64,
}

impl SweepReport {
    /// Whether the sweep changed anything or met a pack it had to leave alone.
    pub fn did_anything(&self) -> bool {
        self.chunks_removed + self.orphan_files_removed + self.packs_removed + self.packs_rewritten > 0
            || !self.pack_errors.is_empty()
    }

    /// Logs what the sweep did, `why` saying which sweep it was.
    pub fn log(&self, why: &str) {
        for e in &self.pack_errors {
            tracing::error!(error = %e, why, "sweep left a pack alone");
        }
        tracing::info!(
            chunks = self.chunks_removed,
            bytes = self.bytes_removed,
            orphans = self.orphan_files_removed,
            packs_removed = self.packs_removed,
            packs_rewritten = self.packs_rewritten,
            pack_bytes_freed = self.pack_bytes_freed,
            why,
            "swept"
        );
    }
}

impl Store {
    /// Removes unreferenced chunks older than `grace`, chunk files and packs with no record,
    /// rewrites mostly dead packs, and prunes op results older than [`OP_RESULT_TTL`].
    pub fn sweep(&self, grace: Duration) -> Result<SweepReport> {
        let _exclusive = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let mut report = SweepReport::default();
        let now = Timestamp::now().as_nanos();
        let cutoff = now - grace.as_nanos() as i64;
        // (hash, len, whether it is a file of its own)
        let dead: Vec<(Vec<u8>, i64, bool)> = {
            let mut conn = self.lock_writer();
            let tx = conn.transaction()?;
            let dead = {
                let mut stmt = tx.prepare(
                    "SELECT hash, len, data IS NULL AND pack IS NULL FROM chunks c WHERE added_at <= ?1
                     AND NOT EXISTS (SELECT 1 FROM file_chunks f WHERE f.hash = c.hash)",
                )?;
                stmt.query_map(params![cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            {
                let mut del = tx.prepare("DELETE FROM chunks WHERE hash = ?1")?;
                for (h, _, _) in &dead {
                    del.execute(params![h])?;
                }
            }
            let ttl_cutoff = now - OP_RESULT_TTL.as_nanos() as i64;
            // Not a replicated volume's: whether a retry is answered or applied must be the same
            // on every member, and each member sweeps at its own time. (They are kept; a
            // snapshot carries them.)
            report.op_results_pruned = tx.execute(
                "DELETE FROM op_results WHERE at < ?1
                 AND (volume IS NULL OR volume NOT IN (SELECT volume FROM replicated))",
                params![ttl_cutoff],
            )? as u64;
            tx.commit()?;
            dead
        };
        for (h, len, own_file) in &dead {
            if let Ok(arr) = <[u8; 32]>::try_from(h.as_slice()) {
                if *own_file {
                    self.chunks.remove(&ChunkHash(arr));
                }
                report.chunks_removed += 1;
                report.bytes_removed += *len as u64;
            }
        }
        self.sweep_chunk_files(&mut report)?;
        self.sweep_packs(&mut report)?;
        Ok(report)
    }

    /// Chunk files (from before packs) that no row says are their chunk's place.
    fn sweep_chunk_files(&self, report: &mut SweepReport) -> Result<()> {
        let on_disk = self.chunks.list()?;
        let orphans = self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT data IS NULL AND pack IS NULL FROM chunks WHERE hash = ?1")?;
            let mut orphans = Vec::new();
            for h in &on_disk {
                let own_file: Option<bool> = stmt.query_row(params![&h.0[..]], |r| r.get(0)).optional()?;
                if own_file != Some(true) {
                    orphans.push(*h);
                }
            }
            Ok(orphans)
        })?;
        for h in orphans {
            self.chunks.remove(&h);
            report.orphan_files_removed += 1;
        }
        Ok(())
    }

    fn sweep_packs(&self, report: &mut SweepReport) -> Result<()> {
        // Live bytes per pack. Read after the dead rows went: a pack missing here is unused.
        let live: HashMap<PackId, u64> = self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT pack, SUM(len) FROM chunks WHERE pack IS NOT NULL GROUP BY pack")?;
            let rows = stmt.query_map([], |r| Ok((PackId(r.get(0)?), r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        for (pack, size) in self.chunks.packs()? {
            match live.get(&pack) {
                None => {
                    self.chunks.remove_pack(pack);
                    report.packs_removed += 1;
                    report.pack_bytes_freed += size;
                }
                Some(&bytes) if bytes * 2 < size => match self.rewrite_pack(pack) {
                    Ok(written) => {
                        report.packs_rewritten += 1;
                        report.pack_bytes_freed += size.saturating_sub(written);
                    }
                    Err(e) => report.pack_errors.push(format!("pack {:016x}: {e}", pack.0)),
                },
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Copies a pack's live chunks to a new pack and moves their rows; returns the new pack's
    /// size. A chunk whose bytes no longer match its hash is not copied: the error says so, the
    /// new pack is deleted, and the old one stays for an administrator to look at.
    fn rewrite_pack(&self, old: PackId) -> Result<u64> {
        let chunks: Vec<(Vec<u8>, u32, i64)> = self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT hash, len, pack_offset FROM chunks WHERE pack = ?1")?;
            let rows = stmt.query_map(params![old.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        let mut new = self.chunks.new_pack()?;
        let new_id = new.id();
        let mut moved = Vec::with_capacity(chunks.len());
        let mut written = 0u64;
        let copied = chunks.into_iter().try_for_each(|(hash, len, offset)| -> Result<()> {
            let data = self.chunks.read_packed(old, offset as u64, len)?;
            if ChunkHash::of(&data).0[..] != hash[..] {
                return Err(StoreError::Corrupt("a chunk does not match its hash".into()));
            }
            moved.push((hash, new.append(&data)?));
            written += u64::from(len);
            Ok(())
        });
        let new = match copied.and_then(|()| new.finish()) {
            Ok(id) => id,
            Err(e) => {
                self.chunks.remove_pack(new_id);
                return Err(e);
            }
        };
        {
            let mut conn = self.lock_writer();
            let tx = conn.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE chunks SET pack = ?1, pack_offset = ?2 WHERE hash = ?3 AND pack = ?4")?;
                for (hash, at) in &moved {
                    stmt.execute(params![new.0, *at as i64, hash, old.0])?;
                }
            }
            tx.commit()?;
        }
        self.chunks.remove_pack(old);
        Ok(written)
    }

    /// Number of chunks recorded and their total bytes.
    pub fn chunk_usage(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*), COALESCE(SUM(len), 0) FROM chunks", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?)
        })
    }
}
