//! The chunk store: file contents as content-addressed chunk files, `chunks/ab/<hash>`.
//!
//! Chunks of at most [`INLINE_MAX`] bytes (small files, and the tail of a large one) are not
//! files: their bytes live in their row of the `chunks` table, committed with it. A small
//! file's store is then one SQLite transaction instead of a chunk file created, renamed and
//! synced with its directory, and then a transaction.
//!
//! A chunk file is written to a temporary name and renamed into place, its write-back started at
//! once; a whole upload batch is made durable (each file and its directory synced) before the
//! chunks' rows are committed to the database. A chunk file without a row may be torn by a
//! crash, so it is never trusted: it is rewritten by the next upload of that chunk, or swept.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use proto::ChunkHash;

use crate::error::{Result, StoreError};

/// The largest chunk kept in the database rather than in a file of its own. Content-defined
/// chunks are at least 64 KiB except at the end of a file, so this covers whole small files and
/// tails. SQLite reads and writes blobs of this size faster than the file system creates,
/// syncs and opens a file for each (as SQLite's "35 % faster than the filesystem" measures).
pub const INLINE_MAX: u32 = 64 * 1024;

#[derive(Debug)]
pub struct ChunkStore {
    root: PathBuf,
}

impl ChunkStore {
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("tmp"))?;
        // Leftovers of uploads interrupted by a crash.
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(ChunkStore { root: root.to_path_buf() })
    }

    pub fn path(&self, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(&hex)
    }

    /// Writes a chunk (not yet durable: call [`ChunkStore::make_durable`] before recording it).
    pub fn write(&self, hash: &ChunkHash, data: &[u8]) -> Result<()> {
        let path = self.path(hash);
        let dir = path.parent().ok_or_else(|| StoreError::Corrupt("chunk path has no parent".into()))?;
        fs::create_dir_all(dir)?;
        let tmp = self.root.join("tmp").join(format!("{}.{:x}", hash.to_hex(), rand::random::<u64>()));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        // Write-back starts now, while the next chunks arrive; the commit's sync then finds
        // little left to write. Best effort: that sync is what makes the chunk durable.
        // SAFETY: a valid descriptor; sync_file_range has no memory effects.
        unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        drop(f);
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Makes the chunks `written` durable, file by file with their directories. Not `syncfs`:
    /// that also writes back everything else dirty on the file system (a client's cache on the
    /// same disk, other volumes' uploads), which made a 512 MiB store's last commit take half a
    /// second; the files' write-back began when they were written, so little is left to wait for.
    pub fn make_durable(&self, written: &[ChunkHash]) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for hash in written {
            let path = self.path(hash);
            File::open(&path)?.sync_all()?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        // The renames into place are durable once their directories are.
        for dir in dirs {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn read(&self, hash: &ChunkHash, len: u32) -> Result<Vec<u8>> {
        let mut f = File::open(self.path(hash))
            .map_err(|e| StoreError::Corrupt(format!("chunk {hash} is recorded but unreadable: {e}")))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).map_err(|e| StoreError::Corrupt(format!("chunk {hash} is short: {e}")))?;
        Ok(buf)
    }

    pub fn remove(&self, hash: &ChunkHash) {
        let _ = fs::remove_file(self.path(hash));
    }

    /// Every chunk file on disk, for the sweep of orphans.
    pub fn list(&self) -> Result<Vec<ChunkHash>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.root)? {
            let dir = dir?;
            if dir.file_name() == "tmp" || !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path())? {
                if let Some(h) = f?.file_name().to_str().and_then(ChunkHash::from_hex) {
                    out.push(h);
                }
            }
        }
        Ok(out)
    }
}
