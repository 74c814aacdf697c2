//! Clones: a read-only copy of a volume made inside one server's store in one transaction,
//! sharing every chunk with the original (chunks are content-addressed and swept only when no
//! file of any volume refers to them), so a clone costs metadata only. `vos backup` makes the
//! `.backup` clone; later changes to the original do not reach it.

use proto::msg::{VolumeInfo, VolumeKind};
use proto::{RemoteError, Timestamp, VolumeId};
use rusqlite::{OptionalExtension, params};

use crate::error::{Result, StoreError, refuse};
use crate::rows;
use crate::store::Store;

impl Store {
    /// Makes (or remakes) `dst` as a frozen copy of `src`, of kind `kind`, named `name`.
    pub fn clone_volume(&self, src: VolumeId, dst: VolumeId, name: &str, kind: VolumeKind) -> Result<VolumeInfo> {
        let mut conn = self.lock_writer();
        let tx = conn.transaction()?;
        let info = rows::load_volume(&tx, src)?.ok_or(StoreError::Refused(RemoteError::NoSuchVolume))?;
        let (s, d) = (src.0 as i64, dst.0 as i64);
        let other: Option<String> =
            tx.query_row("SELECT name FROM volumes WHERE id = ?1", params![d], |r| r.get(0)).optional()?;
        if other.as_deref().is_some_and(|n| n != name) {
            return refuse(RemoteError::Exists);
        }
        tx.execute("DELETE FROM volumes WHERE id = ?1", params![d])?;
        tx.execute("DELETE FROM objects WHERE volume = ?1", params![d])?;
        tx.execute("DELETE FROM dirents WHERE volume = ?1", params![d])?;
        tx.execute("DELETE FROM file_chunks WHERE volume = ?1", params![d])?;
        // A new incarnation: clients that cached an older clone revalidate everything.
        let incarnation = rand::random::<u64>() >> 1;
        tx.execute(
            "INSERT INTO volumes (id, name, kind, incarnation, counter, quota, used, files, dirs, created)
             SELECT ?2, ?3, ?4, ?5, counter, 0, used, files, dirs, ?6 FROM volumes WHERE id = ?1",
            params![s, d, name, rows::volume_kind_code(kind), incarnation as i64, Timestamp::now().as_nanos()],
        )?;
        tx.execute(
            "INSERT INTO objects (volume, id, kind, mode, owner, grp, size, nlink, mtime, ctime, version, last_op, parent, link, acl)
             SELECT ?2, id, kind, mode, owner, grp, size, nlink, mtime, ctime, version, last_op, parent, link, acl
             FROM objects WHERE volume = ?1",
            params![s, d],
        )?;
        tx.execute(
            "INSERT INTO dirents (volume, dir, name, child, kind) SELECT ?2, dir, name, child, kind FROM dirents WHERE volume = ?1",
            params![s, d],
        )?;
        tx.execute(
            "INSERT INTO file_chunks (volume, object, seq, hash, len)
             SELECT ?2, object, seq, hash, len FROM file_chunks WHERE volume = ?1",
            params![s, d],
        )?;
        let made = rows::load_volume(&tx, dst)?.ok_or_else(|| StoreError::Corrupt("clone vanished".into()))?;
        tx.commit()?;
        tracing::info!(source = %info.name, clone = %name, files = made.files, "volume cloned");
        Ok(made)
    }

    /// Renames a volume in the store (the VLDB is renamed by the caller).
    pub fn rename_volume(&self, id: VolumeId, name: &str) -> Result<()> {
        let conn = self.lock_writer();
        let taken: Option<i64> =
            conn.query_row("SELECT id FROM volumes WHERE name = ?1", params![name], |r| r.get(0)).optional()?;
        if taken.is_some_and(|t| t != id.0 as i64) {
            return refuse(RemoteError::Exists);
        }
        if conn.execute("UPDATE volumes SET name = ?2 WHERE id = ?1", params![id.0 as i64, name])? == 0 {
            return refuse(RemoteError::NoSuchVolume);
        }
        Ok(())
    }
}
