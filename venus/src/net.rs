//! Talking to the servers of one cell: connections made on demand and remade after a failure,
//! which server holds which volume (and which servers hold its read-only replicas), which
//! servers are not answering, RPC counters, and `CallbacksLost` handled in one place.
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
use proto::msg::{Push, SiteRole, VolumeRef};
use proto::tls::TransportTuning;
use proto::{ChunkHash, ChunkRef, ClientId, ProtoError, RemoteError, Request, Response, ServerId, VolumeId};

use crate::counters::Counters;
use crate::error::{Result, VenusError};
use crate::fs::user::Tokens;
use crate::ids::CellId;

/// How long a volume's location entry is used before it is asked for again.
const ENTRY_TTL: Duration = Duration::from_secs(60);

/// How long changes to a volume being moved wait before they fail with `EBUSY`.
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// What a connection reports back to the cache manager.
pub trait Events: Send + Sync {
    /// A server broke callback promises.
    fn push(&self, cell: CellId, push: Push);
    /// A server said this client lost its promises: everything cached from the cell must be
    /// revalidated before it is trusted again.
    fn callbacks_lost(&self, cell: CellId);
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

pub struct CellConn {
    pub id: CellId,
    pub file: CellFile,
    client: ClientId,
    connector: Connector,
    timeout: Duration,
    sessions: tokio::sync::Mutex<HashMap<ServerId, Session>>,
    /// Volume id → the server holding it (read-write volumes and their backups).
    locations: Mutex<HashMap<VolumeId, ServerId>>,
    /// Read-only volume id → the servers holding its released replicas, in the order tried.
    replicas: Mutex<HashMap<VolumeId, Vec<ServerId>>>,
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

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Learned {
    servers: Vec<CellServer>,
    locations: Vec<(VolumeId, ServerId)>,
    replicas: Vec<(VolumeId, Vec<ServerId>)>,
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
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            locations: Mutex::new(saved.locations.iter().copied().collect()),
            replicas: Mutex::new(saved.replicas.iter().cloned().collect()),
            entries: Mutex::new(HashMap::new()),
            counters: with.counters,
            events: with.events,
            down: Mutex::new(Default::default()),
            tokens: with.tokens,
            learned: Mutex::new(saved),
            known_path,
        })
    }

    /// Remembers what a location reply said: the servers of the cell (those the cell file
    /// lacks are trusted as the pinned server vouches for them) and where the volume lives.
    fn learn(&self, entry: &proto::msg::VldbEntry, servers: &[proto::msg::ServerInfo]) {
        let site = entry.sites.iter().find(|s| s.role == SiteRole::ReadWrite).or(entry.sites.first()).map(|s| s.server);
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for s in servers {
            if self.file.server(s.id).is_none() && !learned.servers.iter().any(|k| k.id == s.id.0) {
                learned.servers.push(CellServer {
                    id: s.id.0,
                    address: s.address.clone(),
                    fingerprint: s.fingerprint.clone(),
                });
                changed = true;
            }
        }
        if let Some(site) = site {
            let mut locations = self.locations.lock().unwrap_or_else(|p| p.into_inner());
            for v in [Some(entry.rw), entry.backup].into_iter().flatten() {
                if locations.insert(v, site) != Some(site) {
                    learned.locations.retain(|(x, _)| *x != v);
                    learned.locations.push((v, site));
                    changed = true;
                }
            }
        }
        if let Some(ro) = entry.ro {
            // Only released sites serve the replica.
            let sites: Vec<ServerId> =
                entry.sites.iter().filter(|s| s.role == SiteRole::ReadOnly).map(|s| s.server).collect();
            let mut replicas = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
            if replicas.get(&ro) != Some(&sites) {
                learned.replicas.retain(|(x, _)| *x != ro);
                if sites.is_empty() {
                    replicas.remove(&ro);
                } else {
                    replicas.insert(ro, sites.clone());
                    learned.replicas.push((ro, sites));
                }
                changed = true;
            }
        }
        if changed && let Some(path) = &self.known_path {
            let _ = postcard::to_stdvec(&*learned).map(|b| std::fs::write(path, b));
        }
    }

    /// The server holding `volume`'s read-write site.
    pub async fn server_of(&self, volume: VolumeId) -> Result<ServerId> {
        self.server_for(Some(volume)).await
    }

    /// One request to one server.
    pub async fn call_on(&self, server: ServerId, req: &Request) -> Result<Response> {
        self.raw(server, req).await
    }

    /// A token refused by the server is dropped: its holder is anonymous from now on, and is
    /// told so by the error.
    fn token_refused(&self, e: &RemoteError) {
        if let RemoteError::BadToken(reason) = e {
            let uid = crate::fs::user::current_uid();
            tracing::info!(cell = %self.name(), uid, reason, "token refused; dropping it");
            self.tokens.remove(Some(self.id), uid);
        }
    }

    /// Trades a password for a token (`venus login`).
    pub async fn login(&self, user: &str, password: &str, lifetime: u32) -> Result<proto::Token> {
        let req = Request::Login { user: user.into(), password: password.into(), lifetime };
        let (session, _) = self.session(self.any_server()).await?;
        self.counters.rpc("Login");
        match session.call(&req).await {
            Ok(Response::Token { token }) => Ok(token),
            Ok(Response::Error(e)) => Err(VenusError::Remote(e)),
            Ok(other) => Err(VenusError::Protocol(format!("unexpected reply {other:?}"))),
            Err(e) => Err(self.failed(self.any_server(), e).await),
        }
    }

    fn down_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ServerId>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cell's location server is believed unreachable (volume lookups would only
    /// time out).
    pub fn is_down(&self) -> bool {
        self.down_set().contains(&self.any_server())
    }

    /// Whether some server of the cell is believed unreachable.
    pub fn any_down(&self) -> bool {
        !self.down_set().is_empty()
    }

    /// Whether no server that could serve `volume` is believed to answer.
    pub fn volume_down(&self, volume: VolumeId) -> bool {
        let candidates: Vec<ServerId> = match self.replicas.lock().unwrap_or_else(|p| p.into_inner()).get(&volume) {
            Some(sites) => sites.clone(),
            None => vec![
                self.locations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&volume)
                    .copied()
                    .unwrap_or(self.any_server()),
            ],
        };
        let down = self.down_set();
        candidates.iter().all(|s| down.contains(s))
    }

    fn mark(&self, server: ServerId, down: bool) {
        let changed = if down { self.down_set().insert(server) } else { self.down_set().remove(&server) };
        if changed {
            let state = if down { "unreachable: working from the cache" } else { "reachable again" };
            tracing::info!(cell = %self.name(), server = %server, "server {state}");
        }
    }

    /// Checks whether the servers that stopped answering answer again, each with a fresh
    /// connection and a short timeout; says whether any did.
    pub async fn probe(&self) -> bool {
        let down: Vec<ServerId> = self.down_set().iter().copied().collect();
        let mut any = false;
        for server in down {
            self.forget_session(server).await;
            if self.session(server).await.is_ok() {
                any = true;
            }
        }
        any
    }

    pub fn name(&self) -> &str {
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

    /// A connection to `server`, and whether it was just made (a reused one may turn out dead).
    async fn session(&self, server: ServerId) -> Result<(Session, bool)> {
        let mut sessions = self.sessions.lock().await;
        if let Some(s) = sessions.get(&server)
            && !s.is_closed()
        {
            return Ok((s.clone(), false));
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
        if sessions.contains_key(&server) {
            // We were connected before: the server may have restarted (its promises live in
            // memory) or sent breaks we never heard. Trust nothing it promised until revalidated.
            self.events.callbacks_lost(self.id);
        }
        let events = self.events.clone();
        let cell = self.id;
        session.spawn_push_handler(Arc::new(move |push| events.push(cell, push)));
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
        sessions.insert(server, session.clone());
        tracing::info!(cell = %self.name(), server = %entry.address, "connected");
        Ok((session, true))
    }

    /// Closes a dead connection; the entry stays (closed) so the next connection knows it is a
    /// reconnection.
    async fn forget_session(&self, server: ServerId) {
        if let Some(s) = self.sessions.lock().await.get(&server) {
            s.close();
        }
    }

    /// Closes every connection (venus is exiting).
    pub async fn close_all(&self) {
        for s in self.sessions.lock().await.values() {
            s.close();
        }
    }

    /// Servers currently connected.
    pub async fn connected(&self) -> Vec<ServerId> {
        self.sessions.lock().await.iter().filter(|(_, s)| !s.is_closed()).map(|(id, _)| *id).collect()
    }

    fn any_server(&self) -> ServerId {
        self.file.servers.first().map_or(ServerId(0), |s| s.server_id())
    }

    /// The server to ask about `volume` as far as known without asking: the first replica
    /// not known to be down, or where the volume lives.
    fn known_server(&self, volume: VolumeId) -> Option<ServerId> {
        if let Some(sites) = self.replicas.lock().unwrap_or_else(|p| p.into_inner()).get(&volume) {
            let down = self.down_set();
            return sites.iter().find(|s| !down.contains(s)).or(sites.first()).copied();
        }
        self.locations.lock().unwrap_or_else(|p| p.into_inner()).get(&volume).copied()
    }

    /// Whether `volume` has a replica other than `server` that is not known to be down.
    fn other_replica(&self, volume: Option<VolumeId>, server: ServerId) -> bool {
        let Some(volume) = volume else { return false };
        let replicas = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        let down = self.down_set();
        replicas.get(&volume).is_some_and(|sites| sites.iter().any(|s| *s != server && !down.contains(s)))
    }

    /// Which server to ask about `volume`.
    async fn server_for(&self, volume: Option<VolumeId>) -> Result<ServerId> {
        let Some(volume) = volume else { return Ok(self.any_server()) };
        if let Some(s) = self.known_server(volume) {
            return Ok(s);
        }
        if self.file.servers.len() == 1 && self.learned.lock().unwrap_or_else(|p| p.into_inner()).servers.is_empty() {
            return Ok(self.any_server());
        }
        self.locate(volume).await
    }

    /// Asks the location service where `volume` lives now.
    pub async fn locate(&self, volume: VolumeId) -> Result<ServerId> {
        let (entry, servers) =
            match self.raw(self.any_server(), &Request::GetVolumeLocation { volume: VolumeRef::Id(volume) }).await? {
                Response::Location { entry, servers } => (entry, servers),
                other => return Err(VenusError::Protocol(format!("unexpected reply {other:?}"))),
            };
        self.learn(&entry, &servers);
        self.known_server(volume).ok_or(VenusError::Remote(RemoteError::NoSuchVolume))
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
                Err(e) if attempt == 0 && !fresh && meta.idempotent && e.is_unreachable() => {
                    tracing::info!(cell = %self.name(), error = %e, "connection lost; reconnecting");
                    self.forget_session(server).await;
                }
                Err(e) => return Err(self.failed(server, e).await),
            }
        }
        Err(VenusError::Remote(RemoteError::CallbacksLost))
    }

    async fn failed(&self, server: ServerId, e: ProtoError) -> VenusError {
        if e.is_unreachable() {
            self.forget_session(server).await;
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
    pub async fn call(&self, volume: Option<VolumeId>, req: &Request) -> Result<Response> {
        let busy_until = std::time::Instant::now() + BUSY_WAIT;
        let mut relocated = false;
        loop {
            let server = self.server_for(volume).await?;
            match (self.raw(server, req).await, volume) {
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

    /// The location entry of read-write volume `base`.
    async fn entry(&self, base: &str) -> Result<proto::msg::VldbEntry> {
        if let Some((e, at)) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(base)
            && at.elapsed() < ENTRY_TTL
        {
            return Ok(e.clone());
        }
        let resp =
            self.raw(self.any_server(), &Request::GetVolumeLocation { volume: VolumeRef::Name(base.into()) }).await?;
        let Response::Location { entry, servers } = resp else {
            return Err(VenusError::Protocol("unexpected reply to GetVolumeLocation".into()));
        };
        self.learn(&entry, &servers);
        let now = std::time::Instant::now();
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(base.to_string(), (entry.clone(), now));
        Ok(entry)
    }

    /// The volume a name means, and the name it goes by: `NAME`, `NAME.readonly` (its released
    /// replica) or `NAME.backup`. With `prefer_ro`, a plain `NAME` means its released replica
    /// when it has one (a mount point reached through a read-only volume, as in AFS).
    pub async fn resolve_volume(&self, name: &str, prefer_ro: bool) -> Result<(VolumeId, String)> {
        let (base, _) = split_volume_name(name);
        match pick_volume(&self.entry(base).await?, name, prefer_ro) {
            Some(found) => Ok(found),
            None => {
                // A remembered entry may predate the backup or release asked for.
                self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(base);
                let entry = self.entry(base).await?;
                pick_volume(&entry, name, prefer_ro).ok_or(VenusError::Remote(RemoteError::NoSuchVolume))
            }
        }
    }

    /// Streams a whole file to `sink`, chunk by verified chunk.
    pub async fn fetch_data(
        &self,
        fid: proto::Fid,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<FetchedData> {
        let mut attempt = 0;
        loop {
            let server = self.server_for(Some(fid.volume)).await?;
            let (session, fresh) = match self.session(server).await {
                Ok(s) => s,
                Err(VenusError::Unreachable(_)) if self.other_replica(Some(fid.volume), server) => continue,
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
                Err(ProtoError::Remote(RemoteError::VolumeMoved)) if attempt == 0 && !delivered => {
                    self.locate(fid.volume).await?;
                }
                // Another replica has the same file; nothing reached the sink yet.
                Err(e) if !delivered && e.is_unreachable() && self.other_replica(Some(fid.volume), server) => {
                    let _ = self.failed(server, e).await;
                    continue;
                }
                Err(ProtoError::Remote(e)) => {
                    self.token_refused(&e);
                    return Err(VenusError::Remote(e));
                }
                // Only retry if the sink has seen nothing: it cannot take the bytes twice.
                Err(e) if attempt == 0 && !fresh && !delivered && e.is_unreachable() => {
                    self.forget_session(server).await;
                }
                Err(e) => return Err(self.failed(server, e).await),
            }
            attempt += 1;
            if attempt == 2 {
                return Err(VenusError::Remote(RemoteError::CallbacksLost));
            }
        }
    }

    pub async fn missing_chunks(&self, volume: VolumeId, hashes: Vec<ChunkHash>) -> Result<Vec<u32>> {
        match self.call(Some(volume), &Request::MissingChunks { volume, hashes }).await? {
            Response::Missing { indices } => Ok(indices),
            other => Err(VenusError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn put_chunks(
        &self,
        volume: VolumeId,
        chunks: Vec<ChunkRef>,
        read: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
    ) -> Result<u32> {
        match self.send_chunks(volume, Request::PutChunks { volume, chunks }, read).await? {
            Response::ChunksStored { stored } => Ok(stored),
            other => Err(VenusError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// A request followed by chunks' bytes (`PutChunks`, `PutChunksAndMutate`), with the
    /// retries of `call` for a volume being moved.
    pub async fn send_chunks(
        &self,
        volume: VolumeId,
        req: Request,
        read: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
    ) -> Result<Response> {
        let busy_until = std::time::Instant::now() + BUSY_WAIT;
        let (mut read, mut told_lost) = (read, false);
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
                Err(ProtoError::Remote(RemoteError::VolumeMoved)) => {
                    self.locate(volume).await?;
                }
                Err(ProtoError::Remote(e)) => {
                    self.token_refused(&e);
                    return Err(VenusError::Remote(e));
                }
                Err(e) => return Err(self.failed(server, e).await),
            }
        }
    }
}

/// Which volume of `entry` `name` means (see `CellConn::resolve_volume`), if it exists.
fn pick_volume(entry: &proto::msg::VldbEntry, name: &str, prefer_ro: bool) -> Option<(VolumeId, String)> {
    let released = entry.ro.filter(|_| entry.sites.iter().any(|s| s.role == SiteRole::ReadOnly));
    match split_volume_name(name) {
        (_, Some(".readonly")) => released.map(|ro| (ro, name.to_string())),
        (_, Some(_)) => entry.backup.map(|b| (b, name.to_string())),
        (base, None) => match released.filter(|_| prefer_ro) {
            Some(ro) => Some((ro, format!("{base}.readonly"))),
            None => Some((entry.rw, name.to_string())),
        },
    }
}

/// A volume name's base and its `.readonly`/`.backup` suffix, if any.
pub fn split_volume_name(name: &str) -> (&str, Option<&'static str>) {
    for suffix in [".readonly", ".backup"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return (base, Some(suffix));
        }
    }
    (name, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::msg::{Site, VldbEntry};

    fn entry(roles: &[SiteRole]) -> VldbEntry {
        VldbEntry {
            name: "sw".into(),
            rw: VolumeId(1),
            ro: Some(VolumeId(2)),
            backup: None,
            sites: roles.iter().enumerate().map(|(i, r)| Site { server: ServerId(i as u32 + 1), role: *r }).collect(),
        }
    }

    #[test]
    fn names_lead_to_replicas_only_once_released() {
        let released = entry(&[SiteRole::ReadWrite, SiteRole::ReadOnly]);
        assert_eq!(pick_volume(&released, "sw", true), Some((VolumeId(2), "sw.readonly".into())));
        assert_eq!(pick_volume(&released, "sw", false), Some((VolumeId(1), "sw".into())));
        assert_eq!(pick_volume(&released, "sw.readonly", false), Some((VolumeId(2), "sw.readonly".into())));
        assert_eq!(pick_volume(&released, "sw.backup", false), None);
        // A site added but never released serves nothing.
        let added = entry(&[SiteRole::ReadWrite, SiteRole::NewReadOnly]);
        assert_eq!(pick_volume(&added, "sw", true), Some((VolumeId(1), "sw".into())));
        assert_eq!(pick_volume(&added, "sw.readonly", false), None);
        assert_eq!(split_volume_name("a.b.backup"), ("a.b", Some(".backup")));
        assert_eq!(split_volume_name("root.cell"), ("root.cell", None));
    }
}
