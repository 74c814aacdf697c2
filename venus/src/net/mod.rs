//! Talking to the servers of one cell: connections made on demand and remade after a failure,
//! which servers are not answering, RPC counters, and `CallbacksLost` handled in one place.
//! Where each volume lives is `locations`.
//!
//! Reachability is per server: a volume is unreachable when every server that could serve it
//! is down. A read-only volume is served by any of its released replicas; a request that finds
//! its server down goes to the next replica, so one server failing costs a timeout, not an
//! error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::cell::{CellFile, CellServer};
use proto::client::{Connector, FetchedData, Session};
use proto::msg::Push;
use proto::tls::TransportTuning;
use proto::{ClientId, ProtoError, RemoteError, Request, Response, ServerId, VolumeId};

use crate::counters::Counters;
use crate::error::{Result, VenusError};
use crate::ids::CellId;
use crate::user::Tokens;

mod locations;
mod typed;

use locations::Learned;
pub use locations::split_volume_name;

/// How long a callback break's ack waits for the kernel to have forgotten what it touched.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How long changes to a volume being moved wait before they fail with `EBUSY`.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// How long a request to a replicated volume looks for its group's leader (an election takes
/// a second or two) before the volume counts as unreachable: no majority answers.
const LEADER_WAIT: Duration = Duration::from_secs(8);
/// How long a replicated volume without a reachable leader is worked on from the cache before
/// it is tried again.
const LEADERLESS_FOR: Duration = Duration::from_secs(10);

/// When a search for a replicated volume's leader, begun now or earlier, gives up.
fn leader_deadline(search: &mut Option<std::time::Instant>) -> std::time::Instant {
    *search.get_or_insert_with(|| std::time::Instant::now() + LEADER_WAIT)
}

/// What a connection reports back to the cache manager.
pub trait Events: Send + Sync {
    /// A server broke callback promises. The result resolves once the kernel forgot what the
    /// break touched; only then is the break acked.
    fn push(&self, cell: CellId, push: Push) -> crate::kernel::Delivered;
    /// A server said this client lost its promises: everything cached from the cell must be
    /// revalidated before it is trusted again.
    fn callbacks_lost(&self, cell: CellId);
    /// Another member of a replicated volume's group serves it now: the promises given by the
    /// one before are void.
    fn volume_lost(&self, cell: CellId, volume: VolumeId);
}

/// What every cell's connections share.
#[derive(Clone)]
pub struct Context {
    pub client: ClientId,
    /// How long a request may take before the server counts as unreachable.
    pub timeout: Duration,
    pub counters: Arc<Counters>,
    pub events: Arc<dyn Events>,
    pub tokens: Arc<Tokens>,
}

/// One server's connection, and whether there was one before (a new one is a reconnection).
#[derive(Default)]
struct Slot {
    session: Option<Session>,
    connected_before: bool,
}

pub struct CellConn {
    pub id: CellId,
    pub file: CellFile,
    client: ClientId,
    connector: Connector,
    timeout: Duration,
    /// One slot per server ever tried. Connecting holds only that server's slot, so a dead
    /// server's connect timeout (a probe, a request sent its way) holds up no other server.
    sessions: Mutex<HashMap<ServerId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Volume id → the server holding it (read-write volumes and their backups).
    locations: Mutex<HashMap<VolumeId, ServerId>>,
    /// Read-only volume id → the servers holding its released replicas, in the order tried.
    replicas: Mutex<HashMap<VolumeId, Vec<ServerId>>>,
    /// Replicated read-write volume id → the members of its group; `locations` holds the one
    /// believed to lead.
    members: Mutex<HashMap<VolumeId, Vec<ServerId>>>,
    /// Replicated volumes no reachable member could name a leader for, until when.
    leaderless: Mutex<HashMap<VolumeId, std::time::Instant>>,
    /// Read-write volume name → its location entry and when it was fetched (asked again after
    /// `ENTRY_TTL`, so a release or a new replica is noticed).
    entries: Mutex<HashMap<String, (proto::msg::VldbEntry, std::time::Instant)>>,
    counters: Arc<Counters>,
    events: Arc<dyn Events>,
    /// Servers that stopped answering; each leaves the set when it answers again.
    down: Mutex<std::collections::HashSet<ServerId>>,
    /// Each request carries the token of the user it is made for.
    tokens: Arc<Tokens>,
    /// Servers and volume locations learned from the location service (servers that joined
    /// after the cell file was written), kept in `known_path` for an offline start.
    learned: Mutex<Learned>,
    known_path: Option<std::path::PathBuf>,
}

impl CellConn {
    pub fn new(id: CellId, file: CellFile, with: Context, known_path: Option<std::path::PathBuf>) -> Result<Self> {
        // Frequent keep-alives: a restarted server answers one with a reset, so venus learns
        // within a couple of seconds that the promises it holds were forgotten.
        let tuning = TransportTuning {
            idle_timeout: with.timeout.max(Duration::from_secs(3)),
            keep_alive: Duration::from_secs(2),
            ..TransportTuning::default()
        };
        let connector = Connector::new(None, tuning).map_err(VenusError::from)?;
        let saved: Learned = known_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default();
        Ok(CellConn {
            id,
            file,
            client: with.client,
            connector,
            timeout: with.timeout,
            sessions: Mutex::new(HashMap::new()),
            locations: Mutex::new(saved.locations.iter().copied().collect()),
            replicas: Mutex::new(saved.replicas.iter().cloned().collect()),
            members: Mutex::new(saved.members.iter().cloned().collect()),
            leaderless: Mutex::new(HashMap::new()),
            entries: Mutex::new(HashMap::new()),
            counters: with.counters,
            events: with.events,
            down: Mutex::new(Default::default()),
            tokens: with.tokens,
            learned: Mutex::new(saved),
            known_path,
        })
    }

    /// One request to one server.
    async fn call_on(&self, server: ServerId, req: &Request) -> Result<Response> {
        self.raw(server, req).await
    }

    /// A token refused by the server is dropped: its holder is anonymous from now on, and is
    /// told so by the error.
    fn token_refused(&self, e: &RemoteError) {
        if let RemoteError::BadToken(reason) = e {
            let uid = crate::user::current_uid();
            tracing::info!(cell = %self.name(), uid, reason, "token refused; dropping it");
            self.tokens.remove(Some(self.id), uid);
        }
    }

    /// Trades a password for a token (`venus login`), at the first location server that
    /// answers (see [`Self::ask_cell`]).
    async fn login(&self, user: &str, password: &str, lifetime: u32) -> Result<proto::Token> {
        let req = Request::Login { user: user.into(), password: password.into(), lifetime };
        match self.ask_cell(&req).await? {
            Response::Token { token } => Ok(token),
            other => Err(VenusError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// A login at `server`: sent without a token, as it is on no one's behalf yet.
    async fn login_at(&self, server: ServerId, req: &Request) -> Result<Response> {
        let (session, _) = self.session(server).await?;
        self.counters.rpc("Login");
        match session.call(req).await {
            Ok(Response::Error(e)) => Err(VenusError::Remote(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(self.failed(server, &session, e).await),
        }
    }

    /// The servers to ask about locations and logins, in order: the cell file's first (the
    /// server of the cell database in a cell on the embedded one), then every other known
    /// server (any of them answers when the cell database is etcd); those believed down last.
    fn location_servers(&self) -> Vec<ServerId> {
        let mut all = self.known_servers();
        let down = self.down_set();
        all.sort_by_key(|s| down.contains(s));
        all
    }

    /// Every server of the cell this client knows: the cell file's, in its order, then those
    /// learned since.
    fn known_servers(&self) -> Vec<ServerId> {
        let mut all: Vec<ServerId> = self.file.servers.iter().map(|s| s.server_id()).collect();
        let learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(learned.servers.iter().map(|s| s.server_id()).filter(|id| !all.contains(id)).collect::<Vec<_>>());
        all
    }

    /// `req` (a location or login request) to the location servers in turn until one answers:
    /// a server that does not answer, or cannot reach the cell database, is passed over. After
    /// passing one over, the answering server is asked which servers are alive, so the dead
    /// ones are not tried first again. Servers believed down are tried only when no other
    /// answered at all: when the others answered that the cell database is unavailable, a dead
    /// server would only add its timeout to the same answer.
    async fn ask_cell(&self, req: &Request) -> Result<Response> {
        let mut passed_over: Option<VenusError> = None;
        let mut any_answered = false;
        for server in self.location_servers() {
            if any_answered && self.down_set().contains(&server) {
                break;
            }
            let answer = match req {
                Request::Login { .. } => self.login_at(server, req).await,
                _ => self.raw(server, req).await,
            };
            match answer {
                Err(e @ (VenusError::Unreachable(_) | VenusError::Remote(RemoteError::CellDbUnavailable(_)))) => {
                    tracing::debug!(cell = %self.name(), %server, error = %e, "location server passed over");
                    any_answered |= !matches!(e, VenusError::Unreachable(_));
                    // An unreachable server says more than one that answered "unavailable".
                    if !matches!(passed_over, Some(VenusError::Unreachable(_))) {
                        passed_over = Some(e);
                    }
                }
                answer => {
                    if passed_over.is_some() {
                        self.learn_liveness(server).await;
                    }
                    return answer;
                }
            }
        }
        Err(passed_over.unwrap_or_else(|| VenusError::Unreachable(format!("no server of {} is known", self.name()))))
    }

    /// Learns from `server` which servers of the cell are alive (their lease in the cell
    /// database is kept): the others count as down until a probe reaches them.
    async fn learn_liveness(&self, server: ServerId) {
        let Ok(Response::ServerStatus { servers, .. }) = self.raw(server, &Request::ListServerStatus).await else {
            return;
        };
        let infos: Vec<proto::msg::ServerInfo> = servers.iter().map(|s| s.info.clone()).collect();
        self.learn_servers(&infos);
        for s in servers.iter().filter(|s| !s.alive) {
            self.mark(s.info.id, true);
        }
    }

    fn down_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ServerId>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every location server of the cell is believed unreachable (volume lookups would
    /// only time out).
    fn is_down(&self) -> bool {
        let known = self.known_servers();
        let down = self.down_set();
        known.iter().all(|s| down.contains(s))
    }

    /// Whether some server of the cell is believed unreachable (or some replicated volume
    /// has no reachable leader).
    fn any_down(&self) -> bool {
        !self.down_set().is_empty() || !self.leaderless_set().is_empty()
    }

    fn leaderless_set(&self) -> std::sync::MutexGuard<'_, HashMap<VolumeId, std::time::Instant>> {
        self.leaderless.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no server that could serve `volume` is believed to answer.
    fn volume_down(&self, volume: VolumeId) -> bool {
        if let Some(until) = self.leaderless_set().get(&volume)
            && std::time::Instant::now() < *until
        {
            return true;
        }
        // Asked before every cached read: the usual answer (nothing is down) costs one lock.
        if self.down_set().is_empty() {
            return false;
        }
        if let Some(members) = self.members.lock().unwrap_or_else(|p| p.into_inner()).get(&volume) {
            let down = self.down_set();
            return members.iter().all(|s| down.contains(s));
        }
        // Locks in the order `known_server` takes them: replicas, then the down set.
        let replicas = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        let home = self.locations.lock().unwrap_or_else(|p| p.into_inner()).get(&volume).copied();
        let down = self.down_set();
        match replicas.get(&volume) {
            Some(sites) => sites.iter().all(|s| down.contains(s)),
            None => down.contains(&home.unwrap_or(self.any_server())),
        }
    }

    fn mark(&self, server: ServerId, down: bool) {
        let changed = if down { self.down_set().insert(server) } else { self.down_set().remove(&server) };
        if changed {
            if down {
                self.counters.add(crate::counters::SERVERS_UNREACHABLE, 1);
            }
            let state = if down { "unreachable: working from the cache" } else { "reachable again" };
            tracing::info!(cell = %self.name(), server = %server, "server {state}");
        }
    }

    /// Checks whether the servers that stopped answering answer again, each with a fresh
    /// connection and a short timeout; says whether any did.
    async fn probe(&self) -> bool {
        let down: Vec<ServerId> = self.down_set().iter().copied().collect();
        // A replicated volume's time without a leader is over: its next request looks again.
        let now = std::time::Instant::now();
        let mut any = {
            let mut leaderless = self.leaderless_set();
            let before = leaderless.len();
            leaderless.retain(|_, until| now < *until);
            leaderless.len() < before
        };
        for server in down {
            if self.connect_to(server, true).await.is_ok() {
                any = true;
            }
        }
        any
    }

    fn name(&self) -> &str {
        &self.file.cell
    }

    fn server_entry(&self, id: ServerId) -> Result<CellServer> {
        let learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        self.file
            .server(id)
            .or_else(|| learned.servers.iter().find(|s| s.id == id.0))
            .cloned()
            .ok_or_else(|| VenusError::Protocol(format!("server {id} is not in the cell file of {}", self.name())))
    }

    fn slot(&self, server: ServerId) -> Arc<tokio::sync::Mutex<Slot>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).entry(server).or_default().clone()
    }

    fn slots(&self) -> Vec<(ServerId, Arc<tokio::sync::Mutex<Slot>>)> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(id, s)| (*id, s.clone())).collect()
    }

    /// A connection to `server`, and whether it was just made (a reused one may turn out dead).
    async fn session(&self, server: ServerId) -> Result<(Session, bool)> {
        self.connect_to(server, false).await
    }

    /// A connection to `server`. When `probing`, one left from before the server was marked
    /// down is not trusted: it is closed and a new one made. Decided under the server's slot,
    /// so of two probes at once the second finds the first's new connection (the server no
    /// longer marked down) and keeps it, instead of closing it under its users.
    async fn connect_to(&self, server: ServerId, probing: bool) -> Result<(Session, bool)> {
        let slot = self.slot(server);
        let mut slot = slot.lock().await;
        if let Some(s) = &slot.session
            && !s.is_closed()
        {
            if !(probing && self.down_set().contains(&server)) {
                return Ok((s.clone(), false));
            }
            s.close();
        }
        let entry = self.server_entry(server)?;
        let session = match self.connector.connect(&entry, self.client, self.timeout).await {
            Ok(s) => s,
            Err(e) => {
                if e.is_unreachable() {
                    self.mark(server, true);
                }
                return Err(e.into());
            }
        };
        self.mark(server, false);
        if slot.connected_before {
            // We were connected before: the server may have restarted (its promises live in
            // memory) or sent breaks we never heard. Trust nothing it promised until revalidated.
            self.events.callbacks_lost(self.id);
        }
        let events = self.events.clone();
        let cell = self.id;
        let late = self.counters.clone();
        session.spawn_push_handler_async(Arc::new(move |push| {
            let delivered = events.push(cell, push);
            let late = late.clone();
            Box::pin(async move {
                // Prompt: delivery takes no kernel lock. Bounded all the same, so a kernel that
                // stalls costs this client its promises (the server stops waiting), not a wedge.
                if !delivered.wait(ACK_WAIT).await {
                    late.add(crate::counters::LATE_INVALIDATIONS, 1);
                    tracing::warn!("the kernel did not take an invalidation in time; acking the break anyway");
                }
            })
        }));
        // When the connection dies, breaks may be lost with it: drop the cell's promises now.
        let (events, counters, conn, name) =
            (self.events.clone(), self.counters.clone(), session.connection().clone(), self.name().to_string());
        tokio::spawn(async move {
            let reason = conn.closed().await;
            if !matches!(reason, quinn::ConnectionError::LocallyClosed) {
                tracing::info!(cell = %name, %reason, "connection to server lost");
                counters.add(crate::counters::CONNECTIONS_LOST, 1);
                events.callbacks_lost(cell);
            }
        });
        *slot = Slot { session: Some(session.clone()), connected_before: true };
        tracing::info!(cell = %self.name(), server = %entry.address, "connected");
        Ok((session, true))
    }

    /// Closes `dead`, a connection to `server` that failed; the slot remembers there was one,
    /// so the next connection knows it is a reconnection. A newer connection in the slot (made
    /// by another request meanwhile) is left alone; says whether there was none.
    async fn forget_session(&self, server: ServerId, dead: &Session) -> bool {
        dead.close();
        let slot = self.slot(server);
        let mut slot = slot.lock().await;
        match &slot.session {
            Some(s) if s.connection().stable_id() != dead.connection().stable_id() && !s.is_closed() => false,
            _ => {
                slot.session = None;
                true
            }
        }
    }

    /// Closes every connection (venus is exiting).
    async fn close_all(&self) {
        for (_, slot) in self.slots() {
            if let Some(s) = slot.lock().await.session.take() {
                s.close();
            }
        }
    }

    /// Servers currently connected.
    async fn connected(&self) -> Vec<ServerId> {
        let mut up = Vec::new();
        for (id, slot) in self.slots() {
            // A slot busy connecting is not connected yet.
            if let Ok(slot) = slot.try_lock()
                && slot.session.as_ref().is_some_and(|s| !s.is_closed())
            {
                up.push(id);
            }
        }
        up
    }

    fn any_server(&self) -> ServerId {
        self.file.servers.first().map_or(ServerId(0), |s| s.server_id())
    }

    /// One RPC to one server, with counting and `CallbacksLost` handling.
    /// Retries once where that is safe: after `CallbacksLost` (the server refused the request
    /// to say so), and when a reused connection turns out dead (a restarted server resets it)
    /// and the request is idempotent.
    async fn raw(&self, server: ServerId, req: &Request) -> Result<Response> {
        let meta = req.meta();
        for attempt in 0..2 {
            let (session, fresh) = self.session(server).await?;
            self.counters.rpc(meta.name);
            let token = self.tokens.current(self.id);
            match session.call_as(token.as_ref(), req).await {
                Ok(Response::Error(RemoteError::CallbacksLost)) if attempt == 0 => {
                    self.events.callbacks_lost(self.id);
                }
                Ok(Response::Error(e)) => {
                    self.token_refused(&e);
                    return Err(VenusError::Remote(e));
                }
                Ok(r) => return Ok(r),
                // A replicated volume's other members are asked instead (by the caller): no
                // time goes on reconnecting to a member that may be dead.
                Err(e)
                    if attempt == 0
                        && !fresh
                        && meta.idempotent
                        && e.is_unreachable()
                        && !self.replicated(meta.volume) =>
                {
                    tracing::info!(cell = %self.name(), error = %e, "connection lost; reconnecting");
                    self.forget_session(server, &session).await;
                }
                Err(e) => return Err(self.failed(server, &session, e).await),
            }
        }
        Err(VenusError::Remote(RemoteError::CallbacksLost))
    }

    async fn failed(&self, server: ServerId, session: &Session, e: ProtoError) -> VenusError {
        // Down, unless another request has connected again meanwhile.
        if e.is_unreachable() && self.forget_session(server, session).await {
            self.mark(server, true);
        }
        e.into()
    }

    /// A request about `volume` (or any server's business when `None`).
    ///
    /// A volume being moved answers changes with `VolumeBusy` for a moment: they are retried
    /// (for up to a minute). A volume that moved answers `VolumeMoved` (or, from a server that
    /// forgot it moved, `NoSuchVolume`): it is looked up again and the request goes to its new
    /// server. A replica whose server does not answer is left for the next one. In each case
    /// the caller sees no error.
    async fn call(&self, volume: Option<VolumeId>, req: &Request) -> Result<Response> {
        let busy_until = std::time::Instant::now() + BUSY_WAIT;
        let mut relocated = false;
        let mut leader_search = None;
        loop {
            let server = self.server_for(volume).await?;
            match (self.raw(server, req).await, volume) {
                (Err(VenusError::Remote(RemoteError::NotLeader(hint))), Some(v)) => {
                    let until = leader_deadline(&mut leader_search);
                    self.follow_leader(v, server, hint, until).await?;
                }
                (Err(VenusError::Remote(RemoteError::VolumeMoved | RemoteError::NoSuchVolume)), Some(v))
                    if self.replicated(Some(v)) =>
                {
                    let until = leader_deadline(&mut leader_search);
                    self.left_group(v, server, until).await?;
                }
                (Err(VenusError::Unreachable(_)), Some(v)) if self.other_member(v, server) => {
                    tracing::info!(cell = %self.name(), server = %server, volume = %v, "member unreachable; asking another");
                }
                (Err(VenusError::Remote(RemoteError::VolumeBusy)), _) if std::time::Instant::now() < busy_until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (Err(VenusError::Remote(e @ (RemoteError::VolumeMoved | RemoteError::NoSuchVolume))), Some(v))
                    if !relocated =>
                {
                    relocated = true;
                    tracing::info!(cell = %self.name(), volume = %v, "volume not on server {server}; looking it up again");
                    if self.locate(v).await? == server {
                        return Err(VenusError::Remote(e));
                    }
                }
                (Err(VenusError::Unreachable(_)), v) if self.other_replica(v, server) => {
                    tracing::info!(cell = %self.name(), server = %server, "replica unreachable; trying another");
                }
                (result, _) => return result,
            }
        }
    }

    /// Streams a whole file to `sink`, chunk by verified chunk.
    async fn fetch_data(
        &self,
        fid: proto::Fid,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<FetchedData> {
        let mut attempt = 0;
        let mut leader_search = None;
        loop {
            let server = self.server_for(Some(fid.volume)).await?;
            let (session, fresh) = match self.session(server).await {
                Ok(s) => s,
                Err(VenusError::Unreachable(_)) if self.other_replica(Some(fid.volume), server) => continue,
                Err(VenusError::Unreachable(_)) if self.other_member(fid.volume, server) => continue,
                Err(e) => return Err(e),
            };
            self.counters.rpc("FetchData");
            let mut delivered = false;
            let token = self.tokens.current(self.id);
            match session
                .fetch_data(token.as_ref(), fid, |_, bytes| {
                    delivered = true;
                    sink(bytes)
                })
                .await
            {
                Ok(r) => return Ok(r),
                Err(ProtoError::Remote(RemoteError::CallbacksLost)) if attempt == 0 => {
                    self.events.callbacks_lost(self.id);
                }
                Err(ProtoError::Remote(RemoteError::VolumeMoved | RemoteError::NoSuchVolume))
                    if !delivered && self.replicated(Some(fid.volume)) =>
                {
                    let until = leader_deadline(&mut leader_search);
                    self.left_group(fid.volume, server, until).await?;
                    continue;
                }
                Err(ProtoError::Remote(RemoteError::VolumeMoved)) if attempt == 0 && !delivered => {
                    self.locate(fid.volume).await?;
                }
                // Refused before any byte: ask the leader (not counted as an attempt).
                Err(ProtoError::Remote(RemoteError::NotLeader(hint))) if !delivered => {
                    let until = leader_deadline(&mut leader_search);
                    self.follow_leader(fid.volume, server, hint, until).await?;
                    continue;
                }
                Err(e) if !delivered && e.is_unreachable() && self.other_member(fid.volume, server) => {
                    let _ = self.failed(server, &session, e).await;
                    continue;
                }
                // Another replica has the same file; nothing reached the sink yet.
                Err(e) if !delivered && e.is_unreachable() && self.other_replica(Some(fid.volume), server) => {
                    let _ = self.failed(server, &session, e).await;
                    continue;
                }
                Err(ProtoError::Remote(e)) => {
                    self.token_refused(&e);
                    return Err(VenusError::Remote(e));
                }
                // Only retry if the sink has seen nothing: it cannot take the bytes twice.
                Err(e) if attempt == 0 && !fresh && !delivered && e.is_unreachable() => {
                    self.forget_session(server, &session).await;
                }
                Err(e) => return Err(self.failed(server, &session, e).await),
            }
            attempt += 1;
            if attempt == 2 {
                return Err(VenusError::Remote(RemoteError::CallbacksLost));
            }
        }
    }

    /// A request followed by chunks' bytes (`PutChunks`, `PutChunksAndMutate`), with the
    /// retries of `call` for a volume being moved.
    async fn send_chunks(
        &self,
        volume: VolumeId,
        req: Request,
        read: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
    ) -> Result<Response> {
        let busy_until = std::time::Instant::now() + BUSY_WAIT;
        let (mut read, mut told_lost) = (read, false);
        let mut leader_search = None;
        loop {
            let server = self.server_for(Some(volume)).await?;
            let (session, _) = self.session(server).await?;
            self.counters.rpc(req.meta().name);
            let token = self.tokens.current(self.id);
            match session.send_chunks(token.as_ref(), req.clone(), &mut read).await {
                Ok(r) => return Ok(r),
                // Refused before any byte was taken: say so, and send again.
                Err(ProtoError::Remote(RemoteError::CallbacksLost)) if !told_lost => {
                    told_lost = true;
                    self.events.callbacks_lost(self.id);
                }
                Err(ProtoError::Remote(RemoteError::VolumeBusy)) if std::time::Instant::now() < busy_until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ProtoError::Remote(RemoteError::VolumeMoved | RemoteError::NoSuchVolume))
                    if self.replicated(Some(volume)) =>
                {
                    let until = leader_deadline(&mut leader_search);
                    self.left_group(volume, server, until).await?;
                }
                Err(ProtoError::Remote(RemoteError::VolumeMoved)) => {
                    self.locate(volume).await?;
                }
                Err(ProtoError::Remote(RemoteError::NotLeader(hint))) => {
                    let until = leader_deadline(&mut leader_search);
                    self.follow_leader(volume, server, hint, until).await?;
                }
                Err(ProtoError::Remote(e)) => {
                    self.token_refused(&e);
                    return Err(VenusError::Remote(e));
                }
                Err(e) if e.is_unreachable() && self.other_member(volume, server) => {
                    let _ = self.failed(server, &session, e).await;
                }
                Err(e) => return Err(self.failed(server, &session, e).await),
            }
        }
    }

    /// A member of `volume`'s group that does not lead it answered `NotLeader`: the next
    /// request goes to the leader it named, or (none named, an election under way) to the next
    /// member after a pause. Past `until` the volume counts as unreachable for a while: no
    /// majority of its group can be reached from here, and it is worked on from the cache.
    async fn follow_leader(
        &self,
        volume: VolumeId,
        asked: ServerId,
        hint: Option<ServerId>,
        until: std::time::Instant,
    ) -> Result<()> {
        if std::time::Instant::now() >= until {
            self.leaderless_set().insert(volume, std::time::Instant::now() + LEADERLESS_FOR);
            tracing::info!(cell = %self.name(), %volume, "no leader reachable: working from the cache");
            return Err(VenusError::Unreachable(format!("no majority of volume {volume}'s servers answers")));
        }
        // A member still within its old leader's lease names it even when it died.
        let hint = hint.filter(|l| *l != asked && !self.down_set().contains(l));
        let next = match hint {
            Some(leader) => leader,
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.next_member(volume, asked).unwrap_or(asked)
            }
        };
        self.set_leader(volume, next);
        Ok(())
    }

    /// A member of replicated `volume`'s group answered that it does not hold the volume: it
    /// left the group (a `vos move` or `remreplica`, perhaps one still under way). The location
    /// entry is asked for again (it names the members now, or says the volume is gone, which is
    /// the answer then), and the search for the leader goes on among the others.
    async fn left_group(&self, volume: VolumeId, asked: ServerId, until: std::time::Instant) -> Result<()> {
        tracing::info!(cell = %self.name(), server = %asked, %volume, "member no longer holds the volume; asking the others");
        self.locate(volume).await?;
        self.follow_leader(volume, asked, None, until).await
    }

    /// Whether `volume` is a replicated read-write volume (a group of members).
    fn replicated(&self, volume: Option<VolumeId>) -> bool {
        volume.is_some_and(|v| self.members.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&v))
    }

    /// The member after `after` in `volume`'s group, skipping those known down.
    fn next_member(&self, volume: VolumeId, after: ServerId) -> Option<ServerId> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner()).get(&volume).cloned()?;
        let down = self.down_set().clone();
        let start = members.iter().position(|m| *m == after).map_or(0, |i| i + 1);
        (0..members.len()).map(|k| members[(start + k) % members.len()]).find(|m| *m != after && !down.contains(m))
    }

    /// Whether `volume` is replicated and a member other than `server` may answer; if so, the
    /// next request goes there.
    fn other_member(&self, volume: VolumeId, server: ServerId) -> bool {
        match self.next_member(volume, server) {
            Some(next) => {
                self.set_leader(volume, next);
                true
            }
            None => false,
        }
    }

    /// Where requests about replicated `volume` go from now on. Promises came from the member
    /// that led before: once another one serves the volume they are void, and what was cached
    /// is revalidated, as after a server restart.
    fn set_leader(&self, volume: VolumeId, leader: ServerId) {
        let before = self.locations.lock().unwrap_or_else(|p| p.into_inner()).insert(volume, leader);
        self.leaderless_set().remove(&volume);
        if before.is_some_and(|b| b != leader) {
            tracing::info!(cell = %self.name(), %volume, from = ?before, to = %leader, "asking another member of the volume's group");
            self.events.volume_lost(self.id, volume);
        }
    }
}
