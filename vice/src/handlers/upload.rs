//! Receiving an upload's chunk bytes from a stream into the volume store.
//!
//! The declared size is admitted against the free space before a byte is read (refused:
//! `NoSpace`, and the caller stops the stream). Network reads and disk writes overlap: a
//! blocking task verifies and writes each chunk while the next arrives. Whatever happens
//! after admission (the stream is cut, a chunk is refused, the disk fills), the chunks that
//! arrived whole and verified are made durable and recorded, so the client's next
//! `MissingChunks` asks only for the rest: a slow link's retry resumes where it stopped.
//!
//! Generic over the reader so the cut-short case can be tested without a network.

use std::sync::Arc;

use proto::chunk::total_len;
use proto::{ChunkRef, RemoteError};
use tokio::io::{AsyncRead, AsyncReadExt};
use volumes::{Store, StoreError};

/// The code a stream is stopped with when the server refuses its upload: the client's writes
/// fail, and it reads the refusal from the reply the server still sends.
pub const STOP_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(1);

/// How an upload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Every chunk arrived and was recorded; how many were new to the server.
    All { stored: u32 },
    /// The stream ended early; `kept` chunks that had arrived were recorded.
    CutShort { kept: u32 },
    /// The server refused the upload (before or during it): stop reading, answer this.
    Refused(RemoteError),
}

/// Reads `chunks` (their bytes, in order) from `stream` into the store.
pub async fn receive<R: AsyncRead + Unpin>(store: Arc<Store>, chunks: Vec<ChunkRef>, stream: &mut R) -> Received {
    let declared = total_len(&chunks);
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel::<bool>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkRef, Vec<u8>)>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = match store.upload_sized(declared) {
            Ok(u) => {
                let _ = admitted_tx.send(true);
                u
            }
            Err(e) => {
                let _ = admitted_tx.send(false);
                return (Ok(0), Some(e));
            }
        };
        let mut refused = None;
        while let Some((chunk, data)) = rx.blocking_recv() {
            if let Err(e) = upload.add(chunk, &data) {
                refused = Some(e);
                break;
            }
        }
        // The reader learns of a refusal at once, not after this commit's sync.
        drop(rx);
        (upload.commit(), refused)
    });
    let mut cut_short = false;
    if admitted_rx.await.unwrap_or(false) {
        for chunk in &chunks {
            let mut buf = vec![0u8; chunk.len as usize];
            if AsyncReadExt::read_exact(stream, &mut buf).await.is_err() {
                cut_short = true;
                break;
            }
            if tx.send((*chunk, buf)).await.is_err() {
                break; // the writer refused a chunk; its error is the answer
            }
        }
    }
    drop(tx);
    let (kept, refused) = match writer.await {
        Ok(written) => written,
        Err(e) => {
            tracing::error!(error = %e, "upload task failed");
            return Received::Refused(RemoteError::Internal("upload task failed".into()));
        }
    };
    let kept = match (kept, &refused) {
        (Ok(n), _) => n,
        // The refusal is the answer; the chunks before it could not be recorded either.
        (Err(e), Some(_)) => {
            tracing::warn!(error = %e, "chunks received before a refused one were not recorded");
            0
        }
        (Err(e), None) => return Received::Refused(answer(&e)),
    };
    if let Some(e) = refused {
        return Received::Refused(answer(&e));
    }
    if cut_short {
        return Received::CutShort { kept };
    }
    Received::All { stored: kept }
}

fn answer(e: &StoreError) -> RemoteError {
    if !matches!(e, StoreError::Refused(_)) {
        tracing::error!(error = %e, "upload failed");
    }
    e.to_remote()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chunk::chunk_bytes;
    use proto::{ChunkHash, ServerId};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn data(len: usize) -> Vec<u8> {
        proto::samples::pseudo_random(len, 0x9e37_79b9_7f4a_7c15)
    }

    #[tokio::test]
    async fn a_cut_short_upload_keeps_its_complete_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), ServerId(1)).unwrap());
        let bytes = data(3 << 20);
        let pieces = chunk_bytes(&bytes);
        assert!(pieces.len() >= 4, "{} chunks", pieces.len());
        let refs: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
        let whole = pieces[0].1.len() + pieces[1].1.len();
        // The link dies in the middle of the third chunk.
        let sent = &bytes[..whole + pieces[2].1.len() / 2];
        let mut stream: &[u8] = sent;
        let got = receive(store.clone(), refs.clone(), &mut stream).await;
        assert_eq!(got, Received::CutShort { kept: 2 });
        let hashes: Vec<ChunkHash> = refs.iter().map(|r| r.hash).collect();
        let missing = store.missing_chunks(&hashes).unwrap();
        assert_eq!(missing, (2..refs.len() as u32).collect::<Vec<_>>(), "the retry resumes at the third chunk");

        // The retry sends only what is missing.
        let rest: Vec<ChunkRef> = missing.iter().map(|&i| refs[i as usize]).collect();
        let mut stream: &[u8] = &bytes[whole..];
        assert_eq!(
            receive(store.clone(), rest.clone(), &mut stream).await,
            Received::All { stored: rest.len() as u32 }
        );
        assert!(store.missing_chunks(&hashes).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_match_stops_the_upload_and_keeps_those_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), ServerId(1)).unwrap());
        let mut bytes = data(2 << 20);
        let pieces = chunk_bytes(&bytes);
        let refs: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
        let first = pieces[0].1.len();
        bytes[first] ^= 0xff; // the second chunk arrives damaged
        let mut stream: &[u8] = &bytes;
        let got = receive(store.clone(), refs.clone(), &mut stream).await;
        assert!(matches!(got, Received::Refused(RemoteError::Invalid(_))), "{got:?}");
        let missing = store.missing_chunks(&refs.iter().map(|r| r.hash).collect::<Vec<_>>()).unwrap();
        assert_eq!(missing[0], 1, "the first chunk was kept");
    }

    #[tokio::test]
    async fn an_upload_that_does_not_fit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(AtomicU64::new(40 << 20));
        let d = disk.clone();
        let source = move || Ok(d.load(Ordering::Relaxed));
        let limits = volumes::Limits { low_water: 16 << 20, reserve: 1 << 20 };
        let store = Arc::new(Store::open_with(dir.path(), ServerId(1), Box::new(source), limits).unwrap());
        let bytes = data(30 << 20);
        let refs: Vec<ChunkRef> = chunk_bytes(&bytes).iter().map(|(r, _)| *r).collect();
        let mut stream: &[u8] = &bytes;
        assert_eq!(receive(store.clone(), refs, &mut stream).await, Received::Refused(RemoteError::NoSpace));
        assert_eq!(stream.len(), bytes.len(), "not a byte was read");
    }
}
