//! Replicated read-write volumes: each is a consensus group (Raft, from `openraft`) of the
//! cell's servers, its volume storage group. A change is one log entry, applied by every member
//! in one store transaction; a reply means a majority has it on disk. The leader serves the
//! volume and keeps its callback promises; other members answer `NotLeader` naming it.
//!
//! One group per volume, each with its own log (in `DATA/raft.sqlite`) and timers: simple to
//! reason about and to move, at a cost of heartbeats per volume (fine for tens of replicated
//! volumes per server, not for thousands).
//!
//! Reads at the leader are served under a lease: while a majority acknowledged it within the
//! last `READ_LEASE`, no other member can have been elected (openraft's followers refuse votes
//! while they hear from a leader), so its state is current. Past the lease it asks a majority
//! first (`ensure_linearizable`), and a leader cut off from its majority stops answering.

mod log;
mod machine;
pub mod network;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use proto::msg::{GroupMember, GroupStatus};
use proto::{RemoteError, ServerId, VolumeId};
use volumes::Store;

pub use self::log::LogDb;
use self::machine::{Machine, SnapshotPaths};
use self::network::{Network, Peers};
use self::types::{Change, Outcome, Replication};

/// How long after a majority's acknowledgement the leader trusts it still leads. A follower
/// refuses to vote for anyone until `election_timeout_max` (2.4 s) passed since it last heard
/// from its leader, after the leader sent what the majority acknowledged; openraft's metrics,
/// which say when that was, may be one tick (1.5 heartbeats, 600 ms) old. 800 + 600 ms leaves
/// a second of margin for clock drift and scheduling.
const READ_LEASE: Duration = Duration::from_millis(800);
/// A leader that has not heard from a majority for this long is cut off from it (a partition)
/// or replaced already (past `election_timeout_max` the others may elect another): it answers
/// `NotLeader` at once instead of leaving a client waiting for a commit that cannot come.
const CUT_OFF_AFTER: Duration = Duration::from_millis(2_400);
/// How long a change waits for the group to settle (an election) before `NotLeader`.
const SETTLE: Duration = Duration::from_secs(10);

/// Timings: openraft times every AppendEntries out after one heartbeat interval, and a
/// member's append waits for its SQLite sync, so the interval leaves room for a slow disk.
/// Followers refuse to vote for another leader until the election timeout passes without
/// hearing from theirs, which bounds both a failover and the read lease.
fn raft_config() -> Config {
    // Snapshots every so many entries; `VICE_SNAPSHOT_EVERY` sets it (tests make it small to
    // see members rebuilt from snapshots).
    let every = std::env::var("VICE_SNAPSHOT_EVERY").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(10_000);
    Config {
        cluster_name: "vice".into(),
        heartbeat_interval: 400,
        election_timeout_min: 1_200,
        election_timeout_max: 2_400,
        install_snapshot_timeout: 30_000,
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(every.max(1)),
        snapshot_max_chunk_size: 1024 * 1024,
        max_in_snapshot_log_to_keep: (every / 10).min(1_000),
        purge_batch_size: (every / 10).clamp(1, 256),
        ..Default::default()
    }
}

/// The node id of a server.
pub fn node(server: ServerId) -> u64 {
    u64::from(server.0)
}

fn server(node: u64) -> ServerId {
    ServerId(node as u32)
}

/// One volume's group on this server.
pub struct Group {
    pub volume: VolumeId,
    pub raft: Raft<Replication>,
}

/// Where a request about a volume should be served.
pub enum Route {
    /// Not a replicated volume of this server: as always.
    Local,
    /// This server leads the volume's group and is current.
    Leader(Arc<Group>),
    /// Another member leads (or no leader is known).
    Elsewhere(Option<ServerId>),
}

fn not_leader<E>(e: &RaftError<u64, E>, me: ServerId) -> RemoteError
where
    E: openraft::TryAsRef<openraft::error::ForwardToLeader<u64, BasicNode>> + std::fmt::Debug,
{
    match e.forward_to_leader() {
        Some(f) => RemoteError::NotLeader(f.leader_id.map(server).filter(|l| *l != me)),
        None => RemoteError::NotLeader(None),
    }
}

impl Group {
    /// Who leads as far as this member knows.
    pub fn leader(&self) -> Option<ServerId> {
        self.raft.metrics().borrow().current_leader.map(server)
    }

    /// Leads, with a majority's acknowledgement within the read lease.
    pub fn leads_now(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.millis_since_quorum_ack.is_some_and(|ms| ms < READ_LEASE.as_millis() as u64)
    }

    /// Leads by its own account, but has not heard from a majority for `CUT_OFF_AFTER`.
    pub fn cut_off(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack.is_some_and(|ms| ms > CUT_OFF_AFTER.as_millis() as u64)
    }

    /// `work` (which needs a majority), unless it takes longer than `SETTLE` or this member
    /// is cut off from the majority meanwhile.
    async fn settled<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let cut_off = async {
            while !self.cut_off() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            done = tokio::time::timeout(SETTLE, work) => done.ok(),
            () = cut_off => None,
        }
    }

    /// Confirms this member leads and its state is current (see the module docs).
    pub async fn current(&self, me: ServerId) -> Result<(), RemoteError> {
        if self.leads_now() {
            return Ok(());
        }
        match self.settled(self.raft.ensure_linearizable()).await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(not_leader(&e, me)),
            None => Err(RemoteError::NotLeader(None)),
        }
    }

    /// Proposes a change and waits until a majority has it and this member applied it.
    pub async fn propose(&self, change: Change, me: ServerId) -> Result<Outcome, RemoteError> {
        match self.settled(self.raft.client_write(change)).await {
            Some(Ok(r)) => Ok(r.data),
            Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(RemoteError::NotLeader(f.leader_id.map(server).filter(|l| *l != me)))
            }
            Some(Err(e)) => {
                tracing::warn!(volume = %self.volume, error = %e, "change not committed");
                Err(RemoteError::NotLeader(None))
            }
            // Not acknowledged: it may still commit (or, from a leader cut off from the
            // majority, be dropped when it hears of the next leader); a retry with the same
            // OpIds is answered from what was applied.
            None => Err(RemoteError::NotLeader(None)),
        }
    }

    /// The voting members and the learners.
    pub fn members(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let config = m.membership_config.membership();
        let voters: BTreeSet<u64> = config.voter_ids().collect();
        let learners: BTreeSet<u64> = config.learner_ids().collect();
        (voters, learners)
    }

    pub fn status(&self, me: ServerId) -> GroupStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        let config = m.membership_config.membership();
        let matched: HashMap<u64, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let mut members: Vec<GroupMember> = config
            .voter_ids()
            .map(|id| (id, true))
            .chain(config.learner_ids().map(|id| (id, false)))
            .map(|(id, voter)| GroupMember { server: server(id), voter, matched: matched.get(&id).copied().flatten() })
            .collect();
        members.sort_by_key(|g| g.server);
        GroupStatus {
            volume: self.volume,
            server: me,
            leader: m.current_leader.map(server),
            term: m.current_term,
            last_log: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            members,
            stopped: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }
}

/// Every group this server is a member of.
pub struct Groups {
    me: ServerId,
    store: Arc<Store>,
    log: LogDb,
    peers: Arc<Peers>,
    snapshots: PathBuf,
    config: Arc<Config>,
    groups: RwLock<HashMap<VolumeId, Arc<Group>>>,
    /// Joining and leaving groups, one at a time.
    changing: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[error("the consensus log: {0}")]
    Log(#[from] rusqlite::Error),
    #[error("the consensus configuration: {0}")]
    Config(String),
    #[error("starting the group of volume {volume}: {reason}")]
    Start { volume: VolumeId, reason: String },
}

impl Groups {
    /// Opens the log in `data` and starts every group listed there.
    pub async fn open(data: &Path, store: Arc<Store>, peers: Arc<Peers>) -> Result<Groups, GroupsError> {
        let log = LogDb::open(&data.join("raft.sqlite"))?;
        let config = Arc::new(raft_config().validate().map_err(|e| GroupsError::Config(e.to_string()))?);
        let groups = Groups {
            me: peers.me(),
            store,
            log,
            peers,
            snapshots: data.join("snapshots"),
            config,
            groups: RwLock::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
        };
        for volume in groups.log.groups()? {
            groups.start(volume).await?;
        }
        Ok(groups)
    }

    async fn start(&self, volume: VolumeId) -> Result<Arc<Group>, GroupsError> {
        if let Some(g) = self.get(volume) {
            return Ok(g);
        }
        let fail = |reason: String| GroupsError::Start { volume, reason };
        let machine = Machine::open(volume, self.store.clone(), self.peers.clone(), &self.snapshots)
            .map_err(|e| fail(e.to_string()))?;
        let network = Network { volume, peers: self.peers.clone() };
        let raft = Raft::new(node(self.me), self.config.clone(), network, self.log.log(volume), machine)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let group = Arc::new(Group { volume, raft });
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(volume, group.clone());
        tracing::info!(%volume, "replication group started");
        Ok(group)
    }

    pub fn get(&self, volume: VolumeId) -> Option<Arc<Group>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&volume).cloned()
    }

    pub fn volumes(&self) -> Vec<VolumeId> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Becomes a member of `volume`'s group (empty, until its leader sends the log).
    pub async fn join(&self, volume: VolumeId) -> Result<Arc<Group>, GroupsError> {
        // Never while the same group is being left: the two would share its log.
        let _one_at_a_time = self.changing.lock().await;
        self.log.add_group(volume)?;
        self.start(volume).await
    }

    /// Starts a new group with these voters, this server among them, and proposes its volume.
    pub async fn found(
        &self,
        volume: VolumeId,
        members: &[(ServerId, String)],
        create: Change,
    ) -> Result<Outcome, RemoteError> {
        let group = self.join(volume).await.map_err(|e| RemoteError::Internal(e.to_string()))?;
        let nodes: BTreeMap<u64, BasicNode> =
            members.iter().map(|(s, addr)| (node(*s), BasicNode { addr: addr.clone() })).collect();
        group.raft.initialize(nodes).await.map_err(|e| RemoteError::Internal(format!("starting the group: {e}")))?;
        // The first election takes a moment; the proposal waits for it.
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            match group.propose(create.clone(), self.me).await {
                Err(RemoteError::NotLeader(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Where a request about `volume` is served.
    pub async fn route(&self, volume: VolumeId) -> Route {
        let Some(group) = self.get(volume) else { return Route::Local };
        match group.current(self.me).await {
            Ok(()) => Route::Leader(group),
            Err(RemoteError::NotLeader(l)) => Route::Elsewhere(l),
            Err(_) => Route::Elsewhere(None),
        }
    }

    /// Adds `add` to `volume`'s group: a learner first, a voter once it caught up.
    pub async fn add_member(&self, group: &Group, add: ServerId, address: String) -> Result<(), RemoteError> {
        let raft_err = |e: String| RemoteError::Internal(format!("changing the group: {e}"));
        group
            .raft
            .add_learner(node(add), BasicNode { addr: address }, true)
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        group
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node(add)])), false)
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        Ok(())
    }

    pub async fn remove_member(&self, group: &Group, remove: ServerId) -> Result<(), RemoteError> {
        group
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node(remove)])), false)
            .await
            .map_err(|e| RemoteError::Internal(format!("changing the group: {e}")))?;
        Ok(())
    }

    /// Leaves `volume`'s group: stops it, forgets its log and drops the volume here.
    pub async fn leave(&self, volume: VolumeId) -> Result<(), RemoteError> {
        let _one_at_a_time = self.changing.lock().await;
        let group = self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&volume);
        if let Some(g) = group
            && tokio::time::timeout(SETTLE, g.raft.shutdown()).await.is_err()
        {
            tracing::warn!(%volume, "the group did not stop within {SETTLE:?}; leaving it all the same");
        }
        let (log, store, dir) = (self.log.clone(), self.store.clone(), self.snapshots.clone());
        let left = tokio::task::spawn_blocking(move || {
            log.remove_group(volume).map_err(|e| RemoteError::Internal(e.to_string()))?;
            SnapshotPaths::remove(&dir, volume);
            match store.remove_volume(volume) {
                Ok(()) | Err(volumes::StoreError::Refused(RemoteError::NoSuchVolume)) => Ok(()),
                Err(e) => Err(e.to_remote()),
            }
        })
        .await;
        tracing::info!(%volume, "left the replication group");
        left.unwrap_or_else(|e| Err(RemoteError::Internal(e.to_string())))
    }

    /// Stops every group (the server is stopping).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Group>> = self.groups.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for g in all {
            let _ = g.raft.shutdown().await;
        }
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    pub fn me(&self) -> ServerId {
        self.me
    }
}
