//! Storing a file: cut the container into content-defined chunks, send only the chunks the
//! server lacks, then commit the new chunk list with the version the change was based on.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use proto::chunk::chunk_stream;
use proto::{Attr, Base, ChunkRef, Mutation, Timestamp};

use super::Venus;
use crate::counters;
use crate::error::{Result, VenusError};
use crate::ids::GFid;

/// Chunks per upload request: a lost connection loses at most this much work.
const UPLOAD_BATCH: usize = 256;
/// Files up to this size are sent whole, without asking which chunks the server has.
const SEND_WITHOUT_ASKING: u64 = 64 * 1024;

impl Venus {
    /// Stores the container of `g`. Callers hold the object's lock (`fetch_lock`), so stores
    /// and fetches of one object never overlap and the base is the version last stored.
    pub(crate) async fn store(&self, g: GFid) -> Result<Attr> {
        let path = self.cache.container(&g);
        let base = self.cache.attr(&g).ok_or(VenusError::NotFound)?.version;
        // A small file is cut and hashed in microseconds, right here; a large one off the
        // runtime's threads.
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= SEND_WITHOUT_ASKING);
        let (chunks, offsets, size, mtime) = if small {
            scan(&path)?
        } else {
            let scan_path = path.clone();
            tokio::task::spawn_blocking(move || scan(&scan_path))
                .await
                .map_err(|e| VenusError::Io(std::io::Error::other(e.to_string())))??
        };
        if !self.emulating(g.cell, g.fid.volume) {
            match self.upload(g, &path, &chunks, &offsets).await {
                // Gone while uploading: the store is logged below and uploaded at reintegration.
                Ok(()) | Err(VenusError::Unreachable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (applied, logged) =
            self.commit_ex(g.cell, Mutation::Store { fid: g.fid, base: Base::Version(base), chunks, mtime }).await?;
        // Logged only: the container stays dirty (never evicted) until reintegrated.
        self.cache.set_local(&g, size, logged)?;
        applied
            .attrs
            .into_iter()
            .find(|a| a.fid == g.fid)
            .ok_or_else(|| VenusError::Protocol("the store did not return the file".into()))
    }

    /// Sends the chunks of the container that the server lacks (all of them, for small files).
    pub(crate) async fn upload(
        &self,
        g: GFid,
        path: &std::path::Path,
        chunks: &[ChunkRef],
        offsets: &[u64],
    ) -> Result<()> {
        let conn = self.cell(g.cell)?.clone();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        let missing: Vec<u32> = if total <= SEND_WITHOUT_ASKING {
            // Asking which chunks the server lacks costs a round trip; for a small file,
            // sending it is cheaper than asking.
            (0..chunks.len() as u32).collect()
        } else {
            conn.missing_chunks(g.fid.volume, chunks.iter().map(|c| c.hash).collect()).await?
        };
        let file = Arc::new(std::fs::File::open(path)?);
        let mut sent = 0u64;
        for batch in missing.chunks(UPLOAD_BATCH) {
            let refs: Vec<ChunkRef> = batch.iter().map(|&i| chunks[i as usize]).collect();
            let offs: Vec<u64> = batch.iter().map(|&i| offsets[i as usize]).collect();
            sent += refs.iter().map(|c| u64::from(c.len)).sum::<u64>();
            let file = file.clone();
            let lens: Vec<u32> = refs.iter().map(|c| c.len).collect();
            let hashes: Vec<proto::ChunkHash> = refs.iter().map(|c| c.hash).collect();
            let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = changed.clone();
            let result = conn
                .put_chunks(g.fid.volume, refs, move |i| {
                    let mut buf = vec![0u8; lens[i] as usize];
                    file.read_exact_at(&mut buf, offs[i])?;
                    // The container may be written while we store it; never send bytes that do
                    // not match the chunk list we are about to commit.
                    if proto::ChunkHash::of(&buf) != hashes[i] {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(std::io::Error::other("file changed during store"));
                    }
                    Ok(buf)
                })
                .await;
            if changed.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(VenusError::ChangedDuringStore);
            }
            result?;
        }
        self.counters.add(counters::BYTES_STORED, sent);
        Ok(())
    }
}

/// The container's chunk list, each chunk's offset, its size and mtime.
pub(crate) fn scan(path: &std::path::Path) -> Result<(Vec<ChunkRef>, Vec<u64>, u64, Timestamp)> {
    let file = std::fs::File::open(path)?;
    let mtime = Timestamp::from_system(file.metadata()?.modified()?);
    let mut chunks = Vec::new();
    let mut offsets = Vec::new();
    let mut at = 0u64;
    chunk_stream::<_, std::io::Error>(std::io::BufReader::with_capacity(1 << 20, file), |c, _| {
        offsets.push(at);
        at += u64::from(c.len);
        chunks.push(c);
        Ok(())
    })?;
    Ok((chunks, offsets, at, mtime))
}
