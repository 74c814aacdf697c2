//! Storing a file: cut the container into content-defined chunks, send only the chunks the
//! server lacks, then commit the new chunk list with the version the change was based on.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        let store = Mutation::Store { fid: g.fid, base: Base::Version(base), chunks: chunks.clone(), mtime };
        let (applied, logged) = if self.emulating(g.cell, g.fid.volume) {
            // Logged; the chunks travel at reintegration.
            self.commit_ex(g.cell, store).await?
        } else if size <= SEND_WITHOUT_ASKING {
            // Sent whole, with the Store, in one request.
            let (read, changed) = ChunkReader::new(&path, &chunks, &offsets)?;
            let result = self.commit_with(g.cell, store, Some((chunks, read))).await;
            if changed.load(Ordering::Relaxed) {
                return Err(VenusError::ChangedDuringStore);
            }
            let (applied, logged) = result?;
            if !logged {
                self.counters.add(counters::BYTES_STORED, size);
            }
            (applied, logged)
        } else {
            match self.upload(g, &path, &chunks, &offsets).await {
                // Gone while uploading: the store is logged and uploaded at reintegration.
                Ok(()) | Err(VenusError::Unreachable(_)) => {}
                Err(e) => return Err(e),
            }
            self.commit_ex(g.cell, store).await?
        };
        // Logged only: the container stays dirty (never evicted) until reintegrated.
        self.cache.set_local(&g, size, logged)?;
        applied
            .attrs
            .into_iter()
            .find(|a| a.fid == g.fid)
            .ok_or_else(|| VenusError::Protocol("the store did not return the file".into()))
    }

    /// Sends the chunks of the container that the server lacks (all of them, for small files:
    /// asking would cost a round trip).
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
        let mut sent = 0u64;
        for batch in missing.chunks(UPLOAD_BATCH) {
            let refs: Vec<ChunkRef> = batch.iter().map(|&i| chunks[i as usize]).collect();
            let offs: Vec<u64> = batch.iter().map(|&i| offsets[i as usize]).collect();
            sent += refs.iter().map(|c| u64::from(c.len)).sum::<u64>();
            let (read, changed) = ChunkReader::new(path, &refs, &offs)?;
            let mut read = read;
            let result = conn.put_chunks(g.fid.volume, refs, move |i| read.read(i)).await;
            if changed.load(Ordering::Relaxed) {
                return Err(VenusError::ChangedDuringStore);
            }
            result?;
        }
        self.counters.add(counters::BYTES_STORED, sent);
        Ok(())
    }
}

/// Reads chunk `i` of a list from the container, refusing bytes that no longer match the
/// chunk's hash: the container may be written while it is stored, and what is sent must be
/// what the committed chunk list says. The flag tells the caller that happened.
pub(crate) struct ChunkReader {
    file: std::fs::File,
    chunks: Vec<(u64, u32, proto::ChunkHash)>,
    changed: Arc<AtomicBool>,
}

impl ChunkReader {
    pub(crate) fn new(path: &std::path::Path, chunks: &[ChunkRef], offsets: &[u64]) -> Result<(Self, Arc<AtomicBool>)> {
        let changed = Arc::new(AtomicBool::new(false));
        let chunks = chunks.iter().zip(offsets).map(|(c, &at)| (at, c.len, c.hash)).collect();
        let reader = ChunkReader { file: std::fs::File::open(path)?, chunks, changed: changed.clone() };
        Ok((reader, changed))
    }

    pub(crate) fn read(&mut self, i: usize) -> std::io::Result<Vec<u8>> {
        let (at, len, hash) = *self.chunks.get(i).ok_or_else(|| std::io::Error::other("no such chunk"))?;
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at)?;
        if proto::ChunkHash::of(&buf) != hash {
            self.changed.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("file changed during store"));
        }
        Ok(buf)
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
