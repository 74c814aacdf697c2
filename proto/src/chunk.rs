//! Content-defined chunks: how file contents travel and are stored.
//!
//! Files are cut with FastCDC so that an edit in the middle of a large file changes only the
//! chunks around it; each chunk is named by its blake3 hash and stored once per server. Client
//! and server must agree on the chunking parameters for deduplication to work, so they live
//! here, in the wire vocabulary.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};

pub const MIN_CHUNK: u32 = 64 * 1024;
pub const AVG_CHUNK: u32 = 256 * 1024;
/// No chunk is larger; a peer that announces a larger one is refused before anything is read.
pub const MAX_CHUNK: u32 = 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    pub fn of(data: &[u8]) -> Self {
        ChunkHash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s).ok().map(|h| ChunkHash(*h.as_bytes()))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One chunk of a file, in order: its hash and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: ChunkHash,
    pub len: u32,
}

/// Total length of a chunk list.
pub fn total_len(chunks: &[ChunkRef]) -> u64 {
    chunks.iter().map(|c| u64::from(c.len)).sum()
}

/// Cuts a byte stream into chunks, calling `each` with every chunk's reference and bytes.
/// The stream is never held whole in memory: at most one maximum-size chunk at a time.
pub fn chunk_stream<R: Read, E: From<std::io::Error>>(
    reader: R,
    mut each: impl FnMut(ChunkRef, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let cdc = fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK as usize, AVG_CHUNK as usize, MAX_CHUNK as usize);
    for chunk in cdc {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => E::from(io),
            other => E::from(std::io::Error::other(other.to_string())),
        })?;
        let r = ChunkRef { hash: ChunkHash::of(&chunk.data), len: chunk.length as u32 };
        each(r, &chunk.data)?;
    }
    Ok(())
}

/// The chunk list of a whole in-memory buffer (tests and small files).
pub fn chunk_bytes(data: &[u8]) -> Vec<(ChunkRef, &[u8])> {
    fastcdc::v2020::FastCDC::new(data, MIN_CHUNK as usize, AVG_CHUNK as usize, MAX_CHUNK as usize)
        .map(|c| {
            let bytes = &data[c.offset..c.offset + c.length];
            (ChunkRef { hash: ChunkHash::of(bytes), len: c.length as u32 }, bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::pseudo_random;

    #[test]
    fn stream_and_buffer_chunking_agree() {
        let data = pseudo_random(3 * 1024 * 1024 + 17, 42);
        let mut streamed = Vec::new();
        chunk_stream::<_, std::io::Error>(&data[..], |r, bytes| {
            assert_eq!(ChunkHash::of(bytes), r.hash);
            streamed.push(r);
            Ok(())
        })
        .unwrap();
        let buffered: Vec<ChunkRef> = chunk_bytes(&data).into_iter().map(|(r, _)| r).collect();
        assert_eq!(streamed, buffered);
        assert_eq!(total_len(&streamed), data.len() as u64);
        assert!(streamed.iter().all(|c| c.len <= MAX_CHUNK));
    }

    #[test]
    fn a_small_edit_changes_few_chunks() {
        let mut data = pseudo_random(8 * 1024 * 1024, 7);
        let before: Vec<ChunkRef> = chunk_bytes(&data).into_iter().map(|(r, _)| r).collect();
        data[4 * 1024 * 1024] ^= 0xff;
        let after: Vec<ChunkRef> = chunk_bytes(&data).into_iter().map(|(r, _)| r).collect();
        let changed: u64 = after.iter().filter(|c| !before.contains(c)).map(|c| u64::from(c.len)).sum();
        assert!(changed <= 2 * u64::from(MAX_CHUNK), "changed {changed} bytes");
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_bytes(&[]).is_empty());
    }

    #[test]
    fn hex_round_trip() {
        let h = ChunkHash::of(b"hello");
        assert_eq!(ChunkHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChunkHash::from_hex("zz"), None);
    }
}
