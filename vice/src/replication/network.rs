//! How the members of a group reach each other: QUIC connections from this server to the
//! cell's other servers, presenting this server's own certificate (the receiver checks it is a
//! registered server of the cell), found by server id in the cell database.
//!
//! Consensus messages travel as `Raft` requests, their bodies postcard after the frame. Chunks
//! travel as the client protocol moves them (`MissingChunks`, `PutChunks`), and back as
//! `ReadChunks` when a member lacks what an entry names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use proto::cell::CellServer;
use proto::client::{Connector, Session};
use proto::msg::RaftCall;
use proto::{ChunkRef, ClientId, ProtoError, Request, Response, ServerId, VolumeId};
use serde::{Serialize, de::DeserializeOwned};
use volumes::Store;
use volumes::celldb::registry::Registry;

use super::types::Replication;

/// How long connecting to a member may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Chunks per `ReadChunks`/`PutChunks` between members.
const CHUNKS_PER_CALL: usize = 64;

/// This server's connections to the other servers of the cell.
pub struct Peers {
    me: ServerId,
    connector: Connector,
    registry: Arc<Registry>,
    sessions: tokio::sync::Mutex<HashMap<ServerId, Session>>,
    client: ClientId,
    /// The cell's servers as last read from the cell database, kept in `known_path` too: the
    /// members of a group must find each other while the database's server is the one down.
    known: std::sync::Mutex<Vec<CellServer>>,
    known_path: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("server {0} is not registered in the cell")]
    Unknown(ServerId),
    #[error("the cell database: {0}")]
    Registry(String),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("server {server} answered {answer}")]
    Refused { server: ServerId, answer: String },
    #[error("no member holds chunk {0}")]
    NoHolder(proto::ChunkHash),
    #[error("the store: {0}")]
    Store(String),
}

impl Peers {
    pub fn new(
        me: ServerId,
        identity: proto::tls::Identity,
        registry: Arc<Registry>,
        known_path: std::path::PathBuf,
        seed: Vec<CellServer>,
    ) -> Result<Peers, ProtoError> {
        let connector = Connector::new(Some(identity), proto::tls::TransportTuning::default())?;
        // One client id per server, the same after a restart.
        let client = ClientId(0x5e_u128 << 120 | u128::from(me.0));
        let known = std::fs::read(&known_path).ok().and_then(|b| postcard::from_bytes(&b).ok()).unwrap_or_default();
        let known = match known {
            k if Vec::is_empty(&k) => seed,
            k => k,
        };
        Ok(Peers {
            me,
            connector,
            registry,
            sessions: Default::default(),
            client,
            known: std::sync::Mutex::new(known),
            known_path,
        })
    }

    pub fn me(&self) -> ServerId {
        self.me
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Vec<CellServer>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cell's servers from the cell database (remembered), or as last remembered.
    pub async fn servers(&self, fresh: bool) -> Result<Vec<CellServer>, PeerError> {
        if !fresh && !self.known().is_empty() {
            return Ok(self.known().clone());
        }
        let registry = self.registry.clone();
        let read = match tokio::task::spawn_blocking(move || registry.servers()).await {
            Ok(Ok(servers)) => Ok(servers),
            // A server of a cell whose database is the first server's own: ask a server.
            _ => self.ask_for_servers().await,
        };
        match read {
            Ok(servers) => {
                let servers: Vec<CellServer> = servers
                    .into_iter()
                    .map(|s| CellServer { id: s.id.0, address: s.address, fingerprint: s.fingerprint })
                    .collect();
                if *self.known() != servers {
                    *self.known() = servers.clone();
                    if let Ok(bytes) = postcard::to_stdvec(&servers) {
                        let tmp = self.known_path.with_extension("new");
                        let _ = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.known_path));
                    }
                }
                Ok(servers)
            }
            Err(e) if self.known().is_empty() => Err(e),
            Err(_) => Ok(self.known().clone()),
        }
    }

    /// The cell's servers as the first server known that answers lists them.
    async fn ask_for_servers(&self) -> Result<Vec<proto::msg::ServerInfo>, PeerError> {
        let known = self.known().clone();
        let mut last = PeerError::Registry("no server of the cell is known".into());
        for s in known.iter().filter(|s| s.id != self.me.0) {
            // A connection of its own: the shared ones are found through this list.
            let answer = match self.connector.connect(s, self.client, CONNECT_TIMEOUT).await {
                Ok(session) => {
                    let answer = session.call(&Request::ListServers).await;
                    session.close();
                    answer
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(Response::Servers { servers }) => return Ok(servers),
                Ok(other) => last = PeerError::Refused { server: s.server_id(), answer: format!("{other:?}") },
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// The server of the cell whose certificate has fingerprint `fp`.
    pub async fn server_with(&self, fp: &str) -> Option<ServerId> {
        if let Some(s) = self.known().iter().find(|s| s.fingerprint == fp) {
            return Some(s.server_id());
        }
        let servers = self.servers(true).await.ok()?;
        servers.iter().find(|s| s.fingerprint == fp).map(|s| s.server_id())
    }

    async fn address(&self, server: ServerId) -> Result<CellServer, PeerError> {
        if let Some(s) = self.known().iter().find(|s| s.id == server.0) {
            return Ok(s.clone());
        }
        let servers = self.servers(true).await?;
        servers.into_iter().find(|s| s.id == server.0).ok_or(PeerError::Unknown(server))
    }

    async fn session(&self, server: ServerId) -> Result<Session, PeerError> {
        if let Some(s) = self.sessions.lock().await.get(&server)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let address = self.address(server).await?;
        let session = self.connector.connect(&address, self.client, CONNECT_TIMEOUT).await?;
        self.sessions.lock().await.insert(server, session.clone());
        Ok(session)
    }

    async fn forget(&self, server: ServerId) {
        if let Some(s) = self.sessions.lock().await.remove(&server) {
            s.close();
        }
    }

    /// One request to `server`; a dead connection is dropped so the next call connects again.
    pub async fn call(&self, server: ServerId, req: &Request) -> Result<Response, PeerError> {
        let session = self.session(server).await?;
        match session.call(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.forget(server).await;
                Err(e.into())
            }
        }
    }

    async fn call_with_body(&self, server: ServerId, req: &Request, body: Vec<u8>) -> Result<Response, PeerError> {
        let session = self.session(server).await?;
        match session.call_with_body(req, body).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.forget(server).await;
                Err(e.into())
            }
        }
    }

    /// Makes sure `server` holds `chunks` (read from this server's store), sending those it lacks.
    pub async fn push_chunks(
        &self,
        server: ServerId,
        volume: VolumeId,
        store: &Arc<Store>,
        chunks: &[ChunkRef],
    ) -> Result<(), PeerError> {
        for batch in chunks.chunks(CHUNKS_PER_CALL) {
            let session = self.session(server).await?;
            let hashes = batch.iter().map(|c| c.hash).collect();
            let missing = session.missing_chunks(None, volume, hashes).await?;
            let send: Vec<ChunkRef> = missing.iter().filter_map(|&i| batch.get(i as usize).copied()).collect();
            if send.is_empty() {
                continue;
            }
            let (store, list) = (store.clone(), send.clone());
            let result = session
                .put_chunks(None, volume, send, move |i| {
                    store.read_chunk(&list[i]).map_err(|e| std::io::Error::other(e.to_string()))
                })
                .await;
            if let Err(e) = result {
                self.forget(server).await;
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Fetches `chunks` into `store` from the members that hold them (any but this one).
    pub async fn pull_chunks(
        &self,
        volume: VolumeId,
        store: &Arc<Store>,
        chunks: Vec<ChunkRef>,
    ) -> Result<(), PeerError> {
        let servers = self.servers(false).await?;
        for batch in chunks.chunks(CHUNKS_PER_CALL) {
            let mut got = None;
            let mut last = None;
            for s in servers.iter().filter(|s| s.id != self.me.0) {
                let session = match self.session(s.server_id()).await {
                    Ok(session) => session,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                match session.read_chunks(batch).await {
                    Ok(data) => {
                        got = Some(data);
                        break;
                    }
                    Err(e) => last = Some(e.into()),
                }
            }
            let Some(data) = got else {
                return Err(last.unwrap_or(PeerError::NoHolder(batch[0].hash)));
            };
            let (store, batch) = (store.clone(), batch.to_vec());
            tokio::task::spawn_blocking(move || {
                let mut upload = store.upload();
                for (c, d) in batch.iter().zip(&data) {
                    upload.add(*c, d)?;
                }
                upload.commit()
            })
            .await
            .map_err(|e| PeerError::Store(e.to_string()))?
            .map_err(|e| PeerError::Store(e.to_string()))?;
        }
        tracing::debug!(%volume, chunks = chunks.len(), "pulled chunks from other members");
        Ok(())
    }
}

/// Makes the links of one group.
pub struct Network {
    pub volume: VolumeId,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<Replication> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Link {
        Link { volume: self.volume, target, peers: self.peers.clone() }
    }
}

/// One group's link to one member.
pub struct Link {
    volume: VolumeId,
    target: u64,
    peers: Arc<Peers>,
}

type Rpc<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Link {
    async fn send<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        call: RaftCall,
        rpc: &Req,
        ttl: Duration,
    ) -> Rpc<Resp, E> {
        let body = postcard::to_stdvec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let Ok(len) = u32::try_from(body.len()) else {
            return Err(RPCError::Network(NetworkError::new(&std::io::Error::other("message too large"))));
        };
        let req = Request::Raft { volume: self.volume, call, len };
        let target = ServerId(self.target as u32);
        let answer = match tokio::time::timeout(ttl, self.peers.call_with_body(target, &req, body)).await {
            Err(_) => return Err(RPCError::Unreachable(Unreachable::new(&ProtoError::Timeout(ttl)))),
            Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Ok(a)) => a,
        };
        match answer {
            Response::Raft { body } => {
                let r: Result<Resp, RaftError<u64, E>> =
                    postcard::from_bytes(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            // Not (yet) a member there, or refused: the leader backs off and tries again.
            other => {
                let e = PeerError::Refused { server: target, answer: format!("{other:?}") };
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}

/// Replication may carry many entries and wait for the member's sync: more than a heartbeat.
fn ttl(option: &RPCOption, at_least: Duration) -> Duration {
    option.hard_ttl().max(at_least)
}

impl RaftNetwork<Replication> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Replication>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.send(RaftCall::Append, &rpc, ttl(&option, Duration::from_secs(5))).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Replication>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send(RaftCall::Snapshot, &rpc, ttl(&option, Duration::from_secs(60))).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<u64>, openraft::error::Infallible> {
        self.send(RaftCall::Vote, &rpc, ttl(&option, Duration::from_secs(2))).await
    }
}
