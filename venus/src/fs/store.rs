//! Storing a file: cut the container into content-defined chunks, send only the chunks the
//! server lacks, then commit the new chunk list with the version the change was based on.
//!
//! A large file is cut and uploaded at once: each batch of chunks is offered to the server as
//! soon as it is cut, with two batches in flight (the server makes one durable while the next
//! arrives), so a store costs about its transfer time rather than cut + transfer + syncs.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::io::Read;

use futures_util::StreamExt;
use proto::chunk::{chunk_bytes, chunk_stream};
use proto::{Attr, Base, ChunkRef, Mutation, Timestamp};

use super::Venus;
use super::write::{Change, Committed};
use crate::counters;
use crate::error::{Result, VenusError};
use crate::ids::GFid;
use crate::remote::Remote;

/// Chunks per upload request: a lost connection loses at most this much work.
const UPLOAD_BATCH: usize = 256;
/// Upload requests in flight at once.
const UPLOADS_IN_FLIGHT: usize = 2;
/// Files up to this size are sent whole, without asking which chunks the server has.
pub(crate) const SEND_WITHOUT_ASKING: u64 = 64 * 1024;
/// Files up to this size are read whole and cut in memory. The streaming cutter allocates and
/// zeroes a buffer of the largest chunk's size (1 MiB) for every file: for the small files most
/// stores are, that cost more than the cut (5 % of venus's CPU in an offline Copy).
pub(crate) const CUT_IN_MEMORY: u64 = 1 << 20;
/// Bytes of small files' chunks collected before they are uploaded together.
const COLLECT_MAX: u64 = 16 << 20;

/// A container cut into chunks: the chunk list, each chunk's offset, the size and mtime.
pub(crate) struct Scanned {
    pub chunks: Vec<ChunkRef>,
    pub offsets: Vec<u64>,
    pub size: u64,
    pub mtime: Timestamp,
    /// The whole contents, when the file was small enough to be cut in memory: then what was
    /// cut is what is sent, with no second read.
    pub bytes: Option<Vec<u8>>,
}

/// How far an upload got.
pub(crate) enum Uploaded {
    /// The server has every chunk.
    All,
    /// The server went away during the upload; the chunk list is whole all the same.
    ServerGone(VenusError),
}

impl Venus {
    /// Stores the container of `g`. Callers hold the object's lock (`fetch_lock`), so stores
    /// and fetches of one object never overlap and the base is the version last stored.
    pub(crate) async fn store(&self, g: GFid) -> Result<Attr> {
        let result = self.try_store(g).await;
        match result {
            Err(VenusError::Remote(refusal)) if refused_for_good(&refusal) => {
                self.keep_refused(g, refusal.clone()).await;
                Err(VenusError::Remote(refusal))
            }
            other => other,
        }
    }

    /// A store the server refused for good (another client changed the file, quota, space,
    /// rights): the local version is kept as a conflict, the way reintegration keeps it — beside
    /// the server's as `NAME.conflict-…`, or in `CACHE/kept/` when the server takes nothing —
    /// and listed by `venus conflicts`; the file shows the server's version again. `close`
    /// still returns the refusal. A container left dirty instead would never be stored, never
    /// evicted, and would hide every later version of the file.
    async fn keep_refused(&self, g: GFid, refusal: proto::RemoteError) {
        let path = self.cache.container(&g);
        let Some(base) = self.cache.base(&g) else { return };
        let kept = async {
            // A copy on the server needs the chunks there (a refused small store took its
            // chunks back with it); a refusal for space or quota keeps the copy here instead.
            let scanned = match refusal {
                proto::RemoteError::Conflict(_) => self.scan_and_upload(g, &path).await?.0,
                _ => scan_off_runtime(&path, false).await?,
            };
            let record = proto::Record { op: proto::OpId::random(), mutation: store_of(g, base, &scanned) };
            self.conflict(g.cell, &record, refusal).await
        };
        if let Err(e) = kept.await {
            tracing::warn!(file = %g, error = %e, "a refused store could not be kept aside; the changes stay in the cache");
        }
    }

    async fn try_store(&self, g: GFid) -> Result<Attr> {
        let path = self.cache.container(&g);
        // The version the container's contents came from, not the server's latest: if another
        // client changed the file meanwhile, the server refuses the store instead of taking
        // ours over theirs.
        let base = self.cache.base(&g).ok_or(VenusError::NotFound)?;
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= SEND_WITHOUT_ASKING);
        let (applied, logged, size) = if self.emulating(g.cell, g.fid.volume) {
            // Logged; the chunks travel at reintegration.
            let scanned = scan_off_runtime(&path, small).await?;
            let store = store_of(g, base, &scanned);
            let Committed { applied, logged } = self.commit(Change::new(g.cell, store).data_not_sent()).await?;
            (applied, logged, scanned.size)
        } else if small {
            // Cut and hashed in microseconds, right here; sent whole, with the Store, in one
            // request.
            let mut scanned = scan(&path)?;
            let store = store_of(g, base, &scanned);
            let (read, changed) = match scanned.bytes.take() {
                Some(bytes) => ChunkReader::in_memory(bytes, &scanned.chunks, &scanned.offsets),
                None => ChunkReader::new(&path, &scanned.chunks, &scanned.offsets)?,
            };
            let result = self.commit(Change::new(g.cell, store).with_chunks(scanned.chunks, read)).await;
            if changed.load(Ordering::Relaxed) {
                return Err(VenusError::ChangedDuringStore);
            }
            let Committed { applied, logged } = result?;
            if !logged {
                self.counters.add(counters::BYTES_STORED, scanned.size);
            }
            (applied, logged, scanned.size)
        } else {
            // Gone while uploading: the store is logged and uploaded at reintegration.
            let (scanned, _) = self.scan_and_upload(g, &path).await?;
            let Committed { applied, logged } = self.commit(Change::new(g.cell, store_of(g, base, &scanned))).await?;
            (applied, logged, scanned.size)
        };
        // Logged only: the container stays dirty (never evicted) until reintegrated.
        self.cache.set_local(&g, size, logged)?;
        applied
            .attrs
            .into_iter()
            .find(|a| a.fid == g.fid)
            .ok_or_else(|| VenusError::Protocol("the store did not return the file".into()))
    }

    /// Cuts the container at `path` into chunks and sends the server the ones it lacks while
    /// the rest is still being cut. If the server goes away, the cut still finishes: the chunk
    /// list is always whole, and the caller decides what an unfinished upload means.
    pub(crate) async fn scan_and_upload(&self, g: GFid, path: &Path) -> Result<(Scanned, Uploaded)> {
        let conn = self.cell(g.cell)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(UPLOADS_IN_FLIGHT);
        let abandon = Arc::new(AtomicBool::new(false));
        let cutter = {
            let (path, abandon) = (path.to_path_buf(), abandon.clone());
            tokio::task::spawn_blocking(move || {
                scan_in_batches(&path, UPLOAD_BATCH, |batch| {
                    // A closed channel means the upload stopped: go on cutting, send nothing.
                    let _ = tx.blocking_send(batch);
                    !abandon.load(Ordering::Relaxed)
                })
            })
        };
        let batches = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        // Boxed, not pinned in place: dropping it must drop the receiver, so that a cutter
        // blocked on a full channel goes on without sending.
        let mut uploads = Box::pin(
            batches.map(|b| upload_batch(conn.as_ref(), g.fid.volume, path, b)).buffer_unordered(UPLOADS_IN_FLIGHT),
        );
        let mut uploaded = Uploaded::All;
        while let Some(result) = uploads.next().await {
            match result {
                Ok(n) => {
                    // Counted batch by batch: `venus sync` shows a long upload moving.
                    self.counters.add(counters::BYTES_STORED, n);
                }
                Err(e @ VenusError::Unreachable(_)) => {
                    uploaded = Uploaded::ServerGone(e);
                    break;
                }
                Err(e) => {
                    abandon.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        drop(uploads);
        let scanned = cutter.await.map_err(|e| VenusError::Io(std::io::Error::other(e.to_string())))??;
        Ok((scanned, uploaded))
    }
}

/// Chunks cut from a container, in order, with their offsets.
struct Batch {
    chunks: Vec<ChunkRef>,
    offsets: Vec<u64>,
}

/// Sends the server the chunks of `batch` it lacks (all of them for a small file: asking would
/// cost a round trip). Returns the bytes sent.
async fn upload_batch(conn: &dyn Remote, volume: proto::VolumeId, path: &Path, batch: Batch) -> Result<u64> {
    let missing = to_send(conn, volume, &batch.chunks).await?;
    if missing.is_empty() {
        return Ok(0);
    }
    let (refs, offs): (Vec<ChunkRef>, Vec<u64>) = missing.iter().map(|&i| (batch.chunks[i], batch.offsets[i])).unzip();
    let sent = refs.iter().map(|c| u64::from(c.len)).sum();
    let (mut read, changed) = ChunkReader::new(path, &refs, &offs)?;
    let result = conn.put_chunks(volume, refs, Box::new(move |i| read.read(i))).await;
    if changed.load(Ordering::Relaxed) {
        return Err(VenusError::ChangedDuringStore);
    }
    result?;
    Ok(sent)
}

/// Whether the server refused a store (or its data) for good, so that it is kept aside as a
/// conflict: every refusal but the passing ones that the connection retries or the caller
/// resolves.
pub(crate) fn refused_for_good(refusal: &proto::RemoteError) -> bool {
    use proto::RemoteError as E;
    !matches!(refusal, E::VolumeBusy | E::VolumeMoved | E::CallbacksLost | E::MissingChunks(_) | E::NotLeader(_))
}

fn store_of(g: GFid, base: proto::version::VersionVector, scanned: &Scanned) -> Mutation {
    Mutation::Store { fid: g.fid, base: Base::Version(base), chunks: scanned.chunks.clone(), mtime: scanned.mtime }
}

/// Which of `chunks` to send: all of a small set, else those the server says it lacks (each
/// index checked: it comes from the network).
async fn to_send(conn: &dyn Remote, volume: proto::VolumeId, chunks: &[ChunkRef]) -> Result<Vec<usize>> {
    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if total <= SEND_WITHOUT_ASKING {
        return Ok((0..chunks.len()).collect());
    }
    let missing = conn.missing_chunks(volume, chunks.iter().map(|c| c.hash).collect()).await?;
    missing
        .into_iter()
        .map(|i| match usize::try_from(i) {
            Ok(i) if i < chunks.len() => Ok(i),
            _ => Err(VenusError::Protocol(format!("the server asked for chunk {i} of {}", chunks.len()))),
        })
        .collect()
}

/// `len` bytes at `at` of `data`, if they are there.
fn slice_at(data: &[u8], at: u64, len: u32) -> Option<&[u8]> {
    usize::try_from(at).ok().and_then(|at| data.get(at..at.checked_add(len as usize)?))
}

/// Chunks of small files cut in memory, collected from several logged stores and uploaded
/// together: reintegrating 2,000 small files made 2,000 `PutChunks` requests, one per file,
/// each a commit on the server; now one `MissingChunks` and one `PutChunks` per 16 MiB.
#[derive(Default)]
pub(crate) struct Collected {
    chunks: Vec<ChunkRef>,
    bytes: Vec<Vec<u8>>,
    seen: std::collections::HashSet<proto::ChunkHash>,
    size: u64,
}

impl Collected {
    /// Adds the chunks of a file cut in memory (`data`: the bytes they were cut from).
    pub(crate) fn add(&mut self, chunks: &[ChunkRef], offsets: &[u64], data: &[u8]) -> Result<()> {
        for (c, &at) in chunks.iter().zip(offsets) {
            if !self.seen.insert(c.hash) {
                continue;
            }
            let bytes = slice_at(data, at, c.len)
                .ok_or_else(|| VenusError::Io(std::io::Error::other("chunk beyond the data cut")))?;
            self.chunks.push(*c);
            self.bytes.push(bytes.to_vec());
            self.size += u64::from(c.len);
        }
        Ok(())
    }

    pub(crate) fn full(&self) -> bool {
        self.size >= COLLECT_MAX
    }
}

impl Venus {
    /// Uploads collected chunks: those the server lacks, in one request.
    pub(crate) async fn upload_collected(
        &self,
        cell: crate::ids::CellId,
        volume: proto::VolumeId,
        c: Collected,
    ) -> Result<()> {
        if c.chunks.is_empty() {
            return Ok(());
        }
        let conn = self.cell(cell)?;
        let mut all = c.bytes;
        let (refs, bytes): (Vec<ChunkRef>, Vec<Vec<u8>>) = to_send(conn.as_ref(), volume, &c.chunks)
            .await?
            .into_iter()
            .map(|i| (c.chunks[i], std::mem::take(&mut all[i])))
            .unzip();
        if refs.is_empty() {
            return Ok(());
        }
        let sent: u64 = refs.iter().map(|c| u64::from(c.len)).sum();
        // Read again when the upload is sent again (to a group's next leader, say): copied out,
        // not taken.
        let read = move |i: usize| bytes.get(i).cloned().ok_or_else(|| std::io::Error::other("no such chunk"));
        conn.put_chunks(volume, refs, Box::new(read)).await?;
        self.counters.add(counters::BYTES_STORED, sent);
        Ok(())
    }
}

/// Cuts a container: right here if it is small, else on a blocking thread.
pub(crate) async fn scan_off_runtime(path: &Path, small: bool) -> Result<Scanned> {
    if small {
        return scan(path);
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || scan(&path))
        .await
        .map_err(|e| VenusError::Io(std::io::Error::other(e.to_string())))?
}

/// Reads chunk `i` of a list from the container, refusing bytes that no longer match the
/// chunk's hash: the container may be written while it is stored, and what is sent must be
/// what the committed chunk list says. The flag tells the caller that happened. A small file
/// cut in memory is sent from those very bytes.
pub(crate) struct ChunkReader {
    source: Source,
    chunks: Vec<(u64, u32, proto::ChunkHash)>,
    changed: Arc<AtomicBool>,
}

enum Source {
    Container(std::fs::File),
    Cut(Vec<u8>),
}

impl ChunkReader {
    pub(crate) fn new(path: &std::path::Path, chunks: &[ChunkRef], offsets: &[u64]) -> Result<(Self, Arc<AtomicBool>)> {
        Ok(Self::with(Source::Container(std::fs::File::open(path)?), chunks, offsets))
    }

    /// Over the bytes the chunk list was cut from.
    pub(crate) fn in_memory(bytes: Vec<u8>, chunks: &[ChunkRef], offsets: &[u64]) -> (Self, Arc<AtomicBool>) {
        Self::with(Source::Cut(bytes), chunks, offsets)
    }

    fn with(source: Source, chunks: &[ChunkRef], offsets: &[u64]) -> (Self, Arc<AtomicBool>) {
        let changed = Arc::new(AtomicBool::new(false));
        let chunks = chunks.iter().zip(offsets).map(|(c, &at)| (at, c.len, c.hash)).collect();
        (ChunkReader { source, chunks, changed: changed.clone() }, changed)
    }

    pub(crate) fn read(&mut self, i: usize) -> std::io::Result<Vec<u8>> {
        let (at, len, hash) = *self.chunks.get(i).ok_or_else(|| std::io::Error::other("no such chunk"))?;
        let file = match &self.source {
            Source::Cut(bytes) => {
                return slice_at(bytes, at, len)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| std::io::Error::other("chunk beyond the data cut"));
            }
            Source::Container(file) => file,
        };
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at)?;
        if proto::ChunkHash::of(&buf) != hash {
            self.changed.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("file changed during store"));
        }
        Ok(buf)
    }
}

/// The container's chunk list, each chunk's offset, its size and mtime.
pub(crate) fn scan(path: &Path) -> Result<Scanned> {
    scan_in_batches(path, UPLOAD_BATCH, |_| true)
}

/// As [`scan`], handing every `per_batch` chunks (and the last few) to `batch` as soon as they
/// are cut; `batch` answers whether to go on.
fn scan_in_batches(path: &Path, per_batch: usize, mut batch: impl FnMut(Batch) -> bool) -> Result<Scanned> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mtime = Timestamp::from_system(meta.modified()?);
    let (mut chunks, mut offsets, mut at, mut handed) = (Vec::new(), Vec::new(), 0u64, 0usize);
    let mut hand = |chunks: &[ChunkRef], offsets: &[u64], handed: &mut usize| {
        let b = Batch { chunks: chunks[*handed..].to_vec(), offsets: offsets[*handed..].to_vec() };
        *handed = chunks.len();
        if batch(b) { Ok(()) } else { Err(std::io::Error::other("store abandoned")) }
    };
    let mut bytes = None;
    {
        let mut add = |c: ChunkRef| -> std::io::Result<()> {
            offsets.push(at);
            at += u64::from(c.len);
            chunks.push(c);
            if chunks.len() - handed == per_batch {
                hand(&chunks, &offsets, &mut handed)?;
            }
            Ok(())
        };
        if meta.len() <= CUT_IN_MEMORY {
            let mut data = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut data)?;
            for (c, _) in chunk_bytes(&data) {
                add(c)?;
            }
            bytes = Some(data);
        } else {
            // The cutter reads in large requests into its own buffer: no reader buffer needed.
            chunk_stream::<_, std::io::Error>(file, |c, _| add(c))?;
        }
    }
    if chunks.len() > handed {
        hand(&chunks, &offsets, &mut handed)?;
    }
    Ok(Scanned { chunks, offsets, size: at, mtime, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        proto::samples::pseudo_random(len, 0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn batches_hand_over_every_chunk_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, noise(5 << 20)).unwrap();
        let mut seen = Vec::new();
        let scanned = scan_in_batches(&path, 3, |b| {
            assert!(!b.chunks.is_empty() && b.chunks.len() <= 3 && b.chunks.len() == b.offsets.len());
            seen.push(b);
            true
        })
        .unwrap();
        let chunks: Vec<ChunkRef> = seen.iter().flat_map(|b| b.chunks.clone()).collect();
        let offsets: Vec<u64> = seen.iter().flat_map(|b| b.offsets.clone()).collect();
        assert!(seen.len() > 2, "{} batches", seen.len());
        assert_eq!(chunks, scanned.chunks);
        assert_eq!(offsets, scanned.offsets);
        assert_eq!(scanned.size, 5 << 20);
        assert_eq!(scanned.chunks, scan(&path).unwrap().chunks);
    }

    #[test]
    fn a_refused_batch_stops_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, noise(5 << 20)).unwrap();
        let mut batches = 0;
        let result = scan_in_batches(&path, 2, |_| {
            batches += 1;
            false
        });
        assert!(result.is_err());
        assert_eq!(batches, 1);
    }

    #[test]
    fn a_small_file_is_cut_in_memory_into_the_same_chunks_and_sent_from_those_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (small, large) = (dir.path().join("small"), dir.path().join("large"));
        let data = noise(CUT_IN_MEMORY as usize);
        std::fs::write(&small, &data).unwrap();
        std::fs::write(&large, noise(CUT_IN_MEMORY as usize + 1)).unwrap();
        let cut = scan(&small).unwrap();
        let streamed: Vec<ChunkRef> = proto::chunk::chunk_bytes(&data).into_iter().map(|(c, _)| c).collect();
        assert_eq!(cut.chunks, streamed);
        assert_eq!(cut.bytes.as_deref(), Some(&data[..]));
        assert!(scan(&large).unwrap().bytes.is_none(), "a larger file is streamed, not held");
        // Sent from the bytes that were cut, even if the container changes meanwhile.
        std::fs::write(&small, b"changed since").unwrap();
        let (mut reader, changed) = ChunkReader::in_memory(cut.bytes.unwrap(), &cut.chunks, &cut.offsets);
        let sent: Vec<u8> = (0..cut.chunks.len()).flat_map(|i| reader.read(i).unwrap()).collect();
        assert_eq!(sent, data);
        assert!(!changed.load(Ordering::Relaxed));
        assert!(reader.read(cut.chunks.len()).is_err());
    }
}
