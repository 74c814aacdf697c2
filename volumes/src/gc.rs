//! Reclaiming space: chunks no file references any more, and old remembered op results.
//!
//! Mark and sweep rather than reference counts: the truth is always `file_chunks`, so there is no
//! counter to drift after a crash. A chunk is swept only after a grace period unreferenced, so a
//! client that was just told the server holds it has time to commit a store that uses it; if it
//! is late, its store fails with `MissingChunks` and it uploads again.

use std::time::Duration;

use proto::{ChunkHash, Timestamp};
use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::store::Store;

/// How long remembered op results are kept: a client that lost a reply retries well within this.
pub const OP_RESULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    pub orphan_files_removed: u64,
    pub op_results_pruned: u64,
}

impl Store {
    /// Removes unreferenced chunks older than `grace`, chunk files with no record, and op results
    /// older than [`OP_RESULT_TTL`].
    pub fn sweep(&self, grace: Duration) -> Result<SweepReport> {
        let _exclusive = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let mut report = SweepReport::default();
        let now = Timestamp::now().as_nanos();
        let cutoff = now - grace.as_nanos() as i64;
        let dead: Vec<(Vec<u8>, i64, bool)> = {
            let mut conn = self.lock_writer();
            let tx = conn.transaction()?;
            let dead = {
                let mut stmt = tx.prepare(
                    "SELECT hash, len, data IS NULL FROM chunks c WHERE added_at <= ?1
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
            report.op_results_pruned = tx.execute("DELETE FROM op_results WHERE at < ?1", params![ttl_cutoff])? as u64;
            tx.commit()?;
            dead
        };
        for (h, len, in_file) in &dead {
            if let Ok(arr) = <[u8; 32]>::try_from(h.as_slice()) {
                if *in_file {
                    self.chunks.remove(&ChunkHash(arr));
                }
                report.chunks_removed += 1;
                report.bytes_removed += *len as u64;
            }
        }
        // Files a crash left without a record (written, never committed), and files of chunks
        // recorded since with their bytes in the database.
        let on_disk = self.chunks.list()?;
        let orphans = self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT data IS NULL FROM chunks WHERE hash = ?1")?;
            let mut orphans = Vec::new();
            for h in &on_disk {
                let in_file: Option<bool> = stmt.query_row(params![&h.0[..]], |r| r.get(0)).optional()?;
                if in_file != Some(true) {
                    orphans.push(*h);
                }
            }
            Ok(orphans)
        })?;
        for h in orphans {
            self.chunks.remove(&h);
            report.orphan_files_removed += 1;
        }
        Ok(report)
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
