//! Connectivity per volume: connected, disconnected (emulating from the cache), or
//! reintegrating (the servers answer, but the volume still has logged changes to replay).
//!
//! A volume is disconnected when every server that could serve it stopped answering (a request
//! timed out or the connection died) or the user said `venus disconnect`; a background probe notices servers
//! coming back, and reintegration drains the log. While a volume has logged changes, reads are
//! served from the cache even if the server answers: the cache holds the newer state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use proto::VolumeId;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::{Venus, lock};
use crate::ids::{CellId, GFid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Connected,
    Disconnected,
    Reintegrating,
    /// Connected under a write-back permit: changes are logged and sent in batches.
    WriteBack,
}

/// How far `venus sync` got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// Every logged change is on a server.
    pub done: bool,
    /// Changes still in the log, and the bytes of file data they carry.
    pub records: u64,
    pub bytes: u64,
    /// File data sent to servers since venus started.
    pub sent: u64,
}

/// Which volumes are kept off the network, which have logged changes, and why replaying them
/// stopped: the state behind each volume's mode. Reachability itself is the connection's.
#[derive(Default)]
pub(crate) struct Links {
    /// What `venus disconnect` asked for: a whole cell, or one volume of it.
    forced: Mutex<HashSet<(CellId, Option<VolumeId>)>>,
    /// Volumes with records in the modification log.
    pending: Mutex<HashSet<(CellId, VolumeId)>>,
    /// Why each volume's last reintegration stopped short (for `venus status`).
    postponed: Mutex<HashMap<(CellId, VolumeId), String>>,
    /// Each volume's gate between changes and its switch to connected ([`Venus::enter`]).
    gates: Mutex<HashMap<(CellId, VolumeId), Gate>>,
    /// Each volume's gate between changes sent straight to the server and its switch to
    /// write-back ([`Venus::deciding`]).
    choices: Mutex<HashMap<(CellId, VolumeId), Gate>>,
}

type Gate = Arc<RwLock<()>>;

/// A change's pass through its volume's gate, held from before it reads the versions it is
/// based on until it is committed.
pub(crate) type Entered = OwnedRwLockReadGuard<()>;

impl Links {
    pub fn new(pending: HashSet<(CellId, VolumeId)>) -> Links {
        Links { pending: Mutex::new(pending), ..Links::default() }
    }

    fn gate(&self, cell: CellId, volume: VolumeId) -> Gate {
        lock(&self.gates).entry((cell, volume)).or_default().clone()
    }

    fn choice(&self, cell: CellId, volume: VolumeId) -> Gate {
        lock(&self.choices).entry((cell, volume)).or_default().clone()
    }

    pub fn forced_off(&self, cell: CellId, volume: VolumeId) -> bool {
        let f = lock(&self.forced);
        f.contains(&(cell, None)) || f.contains(&(cell, Some(volume)))
    }

    /// Whether the whole cell is kept off the network.
    pub fn cell_forced(&self, cell: CellId) -> bool {
        lock(&self.forced).contains(&(cell, None))
    }

    pub fn force(&self, cell: CellId, volume: Option<VolumeId>) {
        lock(&self.forced).insert((cell, volume));
    }

    pub fn clear_forced(&self) {
        lock(&self.forced).clear();
    }

    pub fn has_pending(&self, cell: CellId, volume: VolumeId) -> bool {
        lock(&self.pending).contains(&(cell, volume))
    }

    pub fn any_pending(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    pub fn pending(&self) -> Vec<(CellId, VolumeId)> {
        lock(&self.pending).iter().copied().collect()
    }

    pub fn mark_pending(&self, cell: CellId, volume: VolumeId, pending: bool) {
        let mut p = lock(&self.pending);
        if pending {
            p.insert((cell, volume));
        } else {
            p.remove(&(cell, volume));
        }
    }

    pub fn postponed(&self, cell: CellId, volume: VolumeId) -> Option<String> {
        lock(&self.postponed).get(&(cell, volume)).cloned()
    }

    pub fn note_postponed(&self, cell: CellId, volume: VolumeId, why: Option<String>) {
        let mut p = lock(&self.postponed);
        match why {
            Some(why) => p.insert((cell, volume), why),
            None => p.remove(&(cell, volume)),
        };
    }
}

impl Venus {
    /// Whether requests for the volume may go to the network at all.
    pub fn reachable(&self, cell: CellId, volume: VolumeId) -> bool {
        !self.forced_off(cell, volume) && self.cell(cell).is_ok_and(|c| !c.volume_down(volume))
    }

    /// Whether `venus disconnect` keeps the volume off the network.
    pub(crate) fn forced_off(&self, cell: CellId, volume: VolumeId) -> bool {
        self.links.forced_off(cell, volume)
    }

    /// Why the volume's last reintegration stopped, if it did and nothing went since.
    pub(crate) fn postponed(&self, cell: CellId, volume: VolumeId) -> Option<String> {
        self.links.postponed(cell, volume)
    }

    pub(crate) fn note_postponed(&self, cell: CellId, volume: VolumeId, why: Option<String>) {
        self.links.note_postponed(cell, volume, why);
    }

    pub fn has_pending(&self, cell: CellId, volume: VolumeId) -> bool {
        self.links.has_pending(cell, volume)
    }

    pub fn mode(&self, cell: CellId, volume: VolumeId) -> Mode {
        match (self.reachable(cell, volume), self.has_pending(cell, volume)) {
            (false, _) => Mode::Disconnected,
            (true, _) if self.permits.holds(cell, volume) => Mode::WriteBack,
            (true, true) => Mode::Reintegrating,
            (true, false) => Mode::Connected,
        }
    }

    /// Reads are served from the cache, without asking, unless the volume is plainly connected.
    pub(crate) fn emulating(&self, cell: CellId, volume: VolumeId) -> bool {
        self.mode(cell, volume) != Mode::Connected
    }

    /// Passes the gate of `g`'s volume for a change based on versions read from the cache.
    /// Such a change either logs itself (the volume emulating) or goes to the server; if
    /// reintegration switched the volume to connected in between, a base read from the
    /// emulated cache (a version our replayed changes have since moved on) would reach the
    /// server stale and be refused as a conflict; so would one based on what the cache held
    /// between a replayed record leaving the log and its answer reaching the cache. So those
    /// steps wait for the changes that passed to be committed, and changes wait for them (as
    /// mutators enter a volume in Coda's venus). Taken before any other lock of the change, and
    /// once per change.
    pub(crate) async fn enter(&self, g: GFid) -> Entered {
        self.others_logged_first(g).await;
        self.links.gate(g.cell, g.fid.volume).read_owned().await
    }

    /// A volume's log holds one user's changes (they are replayed with that user's token): a
    /// change by another user waits until the log's changes are on the server, when it can be
    /// reached (under a write-back permit, that is at most a window's worth). Taken before any
    /// lock of the change; offline, the change is refused instead (`claim_log`).
    pub(crate) async fn others_logged_first(&self, g: GFid) {
        let (cell, volume) = (g.cell, g.fid.volume);
        if !self.has_pending(cell, volume) || !self.reachable(cell, volume) {
            return;
        }
        let me = crate::cache::LogOwner { uid: crate::user::current_uid(), user: self.tokens.principal(cell) };
        if self.cache.volume(cell, volume).log_owner.is_some_and(|owner| owner != me)
            && let Err(e) = self.send_logged_now(cell, volume).await
        {
            tracing::info!(%volume, error = %e, "another user's logged changes could not be sent first");
        }
    }

    /// Held by a change from choosing its way (the log, or straight to the server) until it is
    /// answered. The switch to write-back waits for the changes on their way to the server:
    /// changes logged after it are sent later, by another path, and must not reach the server
    /// before the changes made before them. Taken inside [`Venus::enter`]'s gate.
    pub(crate) async fn deciding(&self, cell: CellId, volume: VolumeId) -> Entered {
        self.links.choice(cell, volume).read_owned().await
    }

    /// Closes `volume`'s way straight to the server, for the switch to write-back.
    pub(crate) async fn switching(&self, cell: CellId, volume: VolumeId) -> OwnedRwLockWriteGuard<()> {
        self.links.choice(cell, volume).write_owned().await
    }

    /// Closes `volume`'s gate ([`Venus::enter`]) for reintegration to settle answers into the
    /// cache, or to switch the volume to connected. Taken before any lock of an object.
    pub(crate) async fn exclusive(&self, cell: CellId, volume: VolumeId) -> OwnedRwLockWriteGuard<()> {
        self.links.gate(cell, volume).write_owned().await
    }

    pub(crate) fn mark_pending(&self, cell: CellId, volume: VolumeId, pending: bool) {
        self.links.mark_pending(cell, volume, pending);
    }

    /// `venus disconnect [--volume V]`.
    pub async fn force_disconnect(&self, cell: CellId, volume: Option<VolumeId>) {
        // What was logged under a write-back permit goes to the server first and the permit
        // back (other clients would otherwise wait out its lease, and find those changes
        // missing); if it cannot, the changes wait in the log as any offline change does.
        self.leave_permits(cell, volume).await;
        self.links.force(cell, volume);
        tracing::info!(cell = cell.0, volume = ?volume, "disconnected by request");
    }

    /// `venus reconnect`: lifts every forced disconnection.
    pub fn clear_forced(&self) {
        self.links.clear_forced();
    }
}

impl Venus {
    /// `venus disconnect [--volume [CELL:]VOLUME]`: the volume (or everything) works from the
    /// cache until `venus reconnect`.
    pub async fn disconnect(&self, volume: Option<&str>) -> crate::error::Result<Vec<String>> {
        let mut done = Vec::new();
        for (name, conn) in self.cells() {
            let cell = conn.id();
            match volume {
                None => {
                    self.force_disconnect(cell, None).await;
                    done.push(name.to_string());
                }
                Some(spec) => {
                    let (cell_name, vol) = match spec.split_once(':') {
                        Some((c, v)) => (Some(c), v),
                        None => (None, spec),
                    };
                    if cell_name.is_some_and(|c| c != name) {
                        continue;
                    }
                    let id = vol.parse::<u64>().ok().map(VolumeId).or_else(|| self.cache.volume_named(cell, vol));
                    if let Some(id) = id {
                        self.force_disconnect(cell, Some(id)).await;
                        done.push(format!("{name}:{vol}"));
                    }
                }
            }
        }
        if done.is_empty() {
            return Err(crate::error::VenusError::NotFound);
        }
        Ok(done)
    }

    /// One step of `venus sync`: waits up to `step` for every logged change to be on a server,
    /// then says how far it got. Fails at once, saying why, when a volume with changes cannot
    /// reach any of its servers; a volume whose server is alive is waited for however slow the
    /// link (the caller repeats the step and shows the progress).
    pub async fn sync(self: &std::sync::Arc<Self>, step: std::time::Duration) -> Result<SyncProgress, String> {
        let deadline = std::time::Instant::now() + step;
        // Probe servers believed down first ("sync now" should not trust an old verdict), and
        // start replaying: in the background, since a long replay over a slow link must not
        // hold this step (and its progress report) until it ends.
        let probe = {
            let me = self.clone();
            tokio::spawn(async move { me.tick().await })
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), probe).await;
        loop {
            let pending: Vec<(CellId, VolumeId)> = self.links.pending();
            let logs = self.cml.summary().map_err(|e| e.to_string())?;
            let progress = SyncProgress {
                done: pending.is_empty(),
                records: logs.iter().map(|l| l.records).sum(),
                bytes: logs.iter().map(|l| l.bytes).sum(),
                sent: self.counters.get(crate::counters::BYTES_STORED),
            };
            if progress.done {
                return Ok(progress);
            }
            if let Some((cell, volume)) = pending.iter().find(|(c, v)| !self.reachable(*c, *v)) {
                let name = self.cell(*cell).map(|c| c.name().to_string()).unwrap_or_default();
                let records = logs.iter().find(|l| l.cell == name && l.volume == *volume).map_or(0, |l| l.records);
                return Err(format!(
                    "volume {volume} of cell {name} is disconnected; {records} changes wait for its servers (venus reconnect, or wait for them to answer)"
                ));
            }
            if std::time::Instant::now() > deadline {
                return Ok(progress);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A file's state for `getfattr -n user.afs.state`.
    pub fn object_state(&self, ino: u64) -> &'static str {
        let Ok(super::Node::Object(g)) = self.node(ino) else { return "cached" };
        if self.conflicts().is_ok_and(|cs| cs.iter().any(|c| c.copy == Some(g.fid))) {
            return "conflict";
        }
        let cell_name = self.cell(g.cell).map(|c| c.name().to_string()).unwrap_or_default();
        if self.cml.base_of(&cell_name, g.fid).ok().flatten().is_some() {
            return "pending";
        }
        match self.cache.get(&g) {
            Some(c) if c.dirty => "dirty",
            Some(c) if c.has_data || self.cache.has_listing(&g) => "cached",
            Some(_) => "attributes",
            None => "uncached",
        }
    }
}
