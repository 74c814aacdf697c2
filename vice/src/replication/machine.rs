//! The replicated state machine: one volume of this server's store. An entry is applied in one
//! store transaction that also records its log position, so a crash never applies it twice.
//! Snapshots are the volume's dump (see `volumes::replicated`), kept as files in
//! `DATA/snapshots/`: `VOLUME.snap` with its `VOLUME.meta`.

// openraft's storage traits fix the error type (`StorageError`, large): helpers return it too.
#![allow(clippy::result_large_err)]

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use proto::VolumeId;
use serde::{Deserialize, Serialize};
use volumes::{SmallChunk, Store, StoreError};

use super::network::Peers;
use super::types::{Change, Outcome, Replication};

type Error = StorageError<u64>;

/// Where the volume stands in its log, as recorded with each change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Position {
    pub applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, BasicNode>,
}

impl Position {
    fn encode(&self) -> Result<Vec<u8>, Error> {
        postcard::to_stdvec(self).map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    pub fn decode(b: &[u8]) -> Result<Position, Error> {
        postcard::from_bytes(b).map_err(|e| StorageIOError::read_state_machine(&e).into())
    }
}

fn sm_error(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_error(e: impl std::error::Error + 'static) -> Error {
    StorageIOError::write_snapshot(None, &e).into()
}

/// Runs a blocking store operation off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| sm_error(std::io::Error::other(e.to_string())))?
}

pub struct Machine {
    volume: VolumeId,
    store: Arc<Store>,
    peers: Arc<Peers>,
    snapshots: PathBuf,
    position: Position,
}

impl Machine {
    pub fn open(volume: VolumeId, store: Arc<Store>, peers: Arc<Peers>, snapshots: &Path) -> Result<Machine, Error> {
        let position = match store.applied(volume).map_err(sm_error)? {
            Some(b) => Position::decode(&b)?,
            None => Position::default(),
        };
        Ok(Machine { volume, store, peers, snapshots: snapshots.to_path_buf(), position })
    }

    fn paths(&self) -> SnapshotPaths {
        SnapshotPaths::new(&self.snapshots, self.volume)
    }

    /// Applies one change; refusals are outcomes (the same on every member), failures of this
    /// server's disk are errors (the group stops here).
    async fn apply_change(&self, change: Change, at: Vec<u8>) -> Result<Outcome, Error> {
        let lacking = {
            let (store, named) = (self.store.clone(), change.named_chunks());
            blocking(move || store.lacking(&named).map_err(sm_error)).await?
        };
        if !lacking.is_empty() {
            // The leader put them on a majority before proposing; fetch them from whoever has
            // them, waiting out a member that is restarting (past that, the group stops here
            // and says why in `vos examine`).
            let mut wait = std::time::Duration::from_millis(200);
            let mut tries = 0;
            loop {
                match self.peers.pull_chunks(self.volume, &self.store, lacking.clone()).await {
                    Ok(()) => break,
                    Err(e) if tries < 12 => {
                        tracing::warn!(volume = %self.volume, error = %e, "chunks an entry names not fetched yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(10));
                        tries += 1;
                    }
                    Err(e) => return Err(sm_error(e)),
                }
            }
        }
        let (store, volume) = (self.store.clone(), self.volume);
        blocking(move || {
            let refused = |e: StoreError, store: &Store| match e {
                StoreError::Refused(r) => {
                    store.note_applied(volume, &at).map_err(sm_error)?;
                    Ok(Outcome::Refused(r))
                }
                other => Err(sm_error(other)),
            };
            match change {
                Change::Create { name, quota, acl, birth } => {
                    match store.create_replicated(volume, &name, quota, &acl, birth, &at) {
                        Ok(info) => Ok(Outcome::Created(info)),
                        Err(e) => refused(e, &store),
                    }
                }
                Change::Batch { caller, client, only, inline, records, decided } => {
                    let mut small = Vec::with_capacity(inline.len());
                    for i in inline {
                        match SmallChunk::new(i.chunk, i.data) {
                            Ok(c) => small.push(c),
                            Err(e) => return refused(e, &store),
                        }
                    }
                    match store.apply_decided(&caller, client, only, volume, &small, &records, &decided, &at) {
                        Ok(out) => {
                            Ok(Outcome::Batch { results: out.results, changed: out.changed, volumes: out.volumes })
                        }
                        Err(e) => refused(e, &store),
                    }
                }
                Change::SetAcl { caller, fid, who, rights, negative, now } => {
                    if fid.volume != volume {
                        return refused(StoreError::Refused(proto::RemoteError::CrossVolume), &store);
                    }
                    match store.set_acl_replicated(&caller, fid, (who, rights, negative), now, &at) {
                        Ok((attr, access)) => Ok(Outcome::Acl { attr, access }),
                        Err(e) => refused(e, &store),
                    }
                }
                // Both set a value: applied again after a crash, they change nothing more.
                Change::SetQuota { quota } => match store.set_quota(volume, quota) {
                    Ok(()) => store.note_applied(volume, &at).map(|()| Outcome::Done).map_err(sm_error),
                    Err(e) => refused(e, &store),
                },
                Change::Rename { name } => match store.rename_volume(volume, &name) {
                    Ok(()) => store.note_applied(volume, &at).map(|()| Outcome::Done).map_err(sm_error),
                    Err(e) => refused(e, &store),
                },
            }
        })
        .await
    }
}

impl RaftStateMachine<Replication> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), Error> {
        Ok((self.position.applied, self.position.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, Error>
    where
        I: IntoIterator<Item = Entry<Replication>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            let mut next = self.position.clone();
            next.applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => {
                    let (store, volume, at) = (self.store.clone(), self.volume, next.encode()?);
                    blocking(move || store.note_applied(volume, &at).map_err(sm_error)).await?;
                    Outcome::Nothing
                }
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    let (store, volume, at) = (self.store.clone(), self.volume, next.encode()?);
                    blocking(move || store.note_applied(volume, &at).map_err(sm_error)).await?;
                    Outcome::Nothing
                }
                EntryPayload::Normal(change) => {
                    let at = next.encode()?;
                    self.apply_change(change, at).await?
                }
            };
            self.position = next;
            out.push(outcome);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder { volume: self.volume, store: self.store.clone(), paths: self.paths() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, Error> {
        let paths = self.paths();
        std::fs::create_dir_all(&self.snapshots).map_err(snap_error)?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&paths.receiving)
            .await
            .map_err(snap_error)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), Error> {
        let mut file = snapshot.into_std().await;
        let (store, volume, paths, meta2) = (self.store.clone(), self.volume, self.paths(), meta.clone());
        let position = blocking(move || {
            file.sync_all().map_err(snap_error)?;
            let installed = store.install_snapshot(volume, &mut BufReader::new(&mut file)).map_err(snap_error)?;
            drop(file);
            std::fs::rename(&paths.receiving, &paths.data).map_err(snap_error)?;
            paths.save_meta(&meta2)?;
            Position::decode(&installed)
        })
        .await?;
        tracing::info!(volume = %self.volume, applied = ?position.applied, "snapshot installed");
        self.position = position;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Replication>>, Error> {
        self.paths().open().await
    }
}

/// Where one volume's snapshot files are.
#[derive(Clone)]
pub struct SnapshotPaths {
    data: PathBuf,
    meta: PathBuf,
    building: PathBuf,
    receiving: PathBuf,
}

impl SnapshotPaths {
    fn new(dir: &Path, volume: VolumeId) -> SnapshotPaths {
        let at = |ext: &str| dir.join(format!("{}.{ext}", volume.0));
        SnapshotPaths { data: at("snap"), meta: at("meta"), building: at("building"), receiving: at("receiving") }
    }

    fn save_meta(&self, meta: &SnapshotMeta<u64, BasicNode>) -> Result<(), Error> {
        let bytes = postcard::to_stdvec(meta).map_err(snap_error)?;
        let tmp = self.meta.with_extension("meta.new");
        let mut f = std::fs::File::create(&tmp).map_err(snap_error)?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(snap_error)?;
        std::fs::rename(&tmp, &self.meta).map_err(snap_error)
    }

    async fn open(&self) -> Result<Option<Snapshot<Replication>>, Error> {
        let bytes = match tokio::fs::read(&self.meta).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_error(e)),
        };
        let meta: SnapshotMeta<u64, BasicNode> =
            postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let file = tokio::fs::File::open(&self.data).await.map_err(snap_error)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }

    /// Removes every snapshot file (the volume left this server).
    pub fn remove(dir: &Path, volume: VolumeId) {
        let p = SnapshotPaths::new(dir, volume);
        for f in [p.data, p.meta, p.building, p.receiving] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Builds a snapshot from the store's own consistent view, while entries go on being applied.
pub struct Builder {
    volume: VolumeId,
    store: Arc<Store>,
    paths: SnapshotPaths,
}

impl RaftSnapshotBuilder<Replication> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Replication>, Error> {
        let (store, volume, paths) = (self.store.clone(), self.volume, self.paths.clone());
        let meta = blocking(move || {
            if let Some(dir) = paths.data.parent() {
                std::fs::create_dir_all(dir).map_err(snap_error)?;
            }
            let file = std::fs::File::create(&paths.building).map_err(snap_error)?;
            let mut out = BufWriter::new(file);
            let applied = store.snapshot(volume, &mut out).map_err(snap_error)?;
            let file = out.into_inner().map_err(|e| snap_error(e.into_error()))?;
            file.sync_all().map_err(snap_error)?;
            let position = Position::decode(&applied)?;
            let meta = SnapshotMeta {
                last_log_id: position.applied,
                last_membership: position.membership,
                snapshot_id: format!("{}-{}", position.applied.map_or(0, |l| l.index), rand::random::<u32>()),
            };
            std::fs::rename(&paths.building, &paths.data).map_err(snap_error)?;
            paths.save_meta(&meta)?;
            Ok(meta)
        })
        .await?;
        tracing::info!(volume = %self.volume, applied = ?meta.last_log_id, "snapshot built");
        let file = tokio::fs::File::open(&self.paths.data).await.map_err(snap_error)?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}
