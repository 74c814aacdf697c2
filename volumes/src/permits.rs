//! Write-back permits on disk: which client holds the permit of which volume.
//!
//! The server keeps the permits themselves (leases, recalls) in memory; this table only makes
//! them outlive a restart. A client holding a permit has changes the server has not seen, so a
//! restarted server that forgot the permit would answer other clients from a state older than
//! what the holder's system calls returned. One small commit per grant and per return: permits
//! change hands far less often than files do.

use proto::{ClientId, VolumeId};
use rusqlite::params;

use crate::error::Result;
use crate::store::Store;

impl Store {
    /// Records that `client` holds the permit on `volume` (durably, before it is told so).
    pub fn note_permit(&self, volume: VolumeId, client: ClientId) -> Result<()> {
        let conn = self.lock_writer();
        conn.execute(
            "INSERT INTO permits (volume, client) VALUES (?1, ?2)
             ON CONFLICT(volume) DO UPDATE SET client = excluded.client",
            params![volume.0 as i64, client.0.to_be_bytes().to_vec()],
        )?;
        Ok(())
    }

    /// Forgets the permit on `volume` (returned, or taken back at the end of its lease).
    pub fn end_permit(&self, volume: VolumeId) -> Result<()> {
        self.lock_writer().execute("DELETE FROM permits WHERE volume = ?1", params![volume.0 as i64])?;
        Ok(())
    }

    /// Every permit recorded, for a server starting up. A row that does not parse is skipped
    /// (and said so): it names no client that could come back for it.
    pub fn permits(&self) -> Result<Vec<(VolumeId, ClientId)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT volume, client FROM permits")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (volume, client) = row?;
                match <[u8; 16]>::try_from(client.as_slice()) {
                    Ok(bytes) => out.push((VolumeId(volume as u64), ClientId(u128::from_be_bytes(bytes)))),
                    Err(_) => tracing::warn!(volume, "a permit names no valid client; ignored"),
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_outlive_the_store_and_end_when_told() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), proto::ServerId(1)).unwrap();
            store.note_permit(VolumeId(7), ClientId(u128::MAX - 1)).unwrap();
            store.note_permit(VolumeId(8), ClientId(2)).unwrap();
            store.note_permit(VolumeId(8), ClientId(3)).unwrap();
            store.end_permit(VolumeId(9)).unwrap();
        }
        let store = Store::open(dir.path(), proto::ServerId(1)).unwrap();
        let mut held = store.permits().unwrap();
        held.sort_by_key(|(v, _)| v.0);
        assert_eq!(held, vec![(VolumeId(7), ClientId(u128::MAX - 1)), (VolumeId(8), ClientId(3))]);
        store.end_permit(VolumeId(7)).unwrap();
        assert_eq!(store.permits().unwrap(), vec![(VolumeId(8), ClientId(3))]);
    }
}
