//! The server loop: a QUIC endpoint, one task per connection, one task per RPC stream.
//!
//! Limits are designed in: connections are capped, each connection may have a bounded number of
//! streams open (the transport enforces it), every frame is size-checked before allocation, and
//! shutdown cancels the accept loops and then waits for in-flight handlers.
//!
//! Under systemd (`Type=notify`), `READY=1` goes to `$NOTIFY_SOCKET` once the databases are open
//! and the endpoint is bound, and `STOPPING=1` when shutdown begins; without it, nothing is sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use proto::auth::TokenKey;
use proto::msg::{Call, Response};
use proto::tls::{Identity, TransportTuning, endpoint_config, peer_fingerprint, server_config};
use proto::{ClientId, RemoteError, ServerId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use volumes::celldb::{locks::Locks, registry::Registry};
use volumes::{CellDb, Ptdb, Store, Vldb};

use crate::callbacks::Callbacks;
use crate::config::{DataDir, ServerConfig};
use crate::handlers;
use crate::identity::Identities;
use crate::metrics::{self, Metrics, Traffic};

const MAX_CONNECTIONS: usize = 4096;
/// How long a writer waits for other clients to ack a callback break before declaring them lost.
const BREAK_TIMEOUT: Duration = Duration::from_secs(5);
/// Unreferenced chunks are kept this long before the sweep reclaims them.
const CHUNK_GRACE: Duration = Duration::from_secs(3600);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(600);
/// A request frame must arrive within this long once its stream is open: a peer that opens
/// streams and sends nothing holds no server task for longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the handlers share.
pub struct Shared {
    pub store: Arc<Store>,
    /// The cell database, and what the cell keeps in it.
    pub cell_db: Arc<dyn CellDb>,
    pub vldb: Arc<Vldb>,
    pub registry: Arc<Registry>,
    pub locks: Arc<Locks>,
    pub callbacks: Callbacks,
    /// Write-back permits: who may change a volume alone for now (`crate::permits`).
    pub permits: crate::permits::Permits,
    pub config: ServerConfig,
    pub server_id: ServerId,
    /// `None` on servers that joined a cell whose database is the first server's SQLite.
    pub pts: Option<Arc<Ptdb>>,
    pub token_key: TokenKey,
    pub identities: Identities,
    /// Volumes being moved away whose changes wait (`VolumeBusy`), and volumes that moved
    /// (`VolumeMoved`): see `handlers::volume_ops`.
    /// A freeze made under a lock lasts while the lock is held (`handlers::locks`).
    pub frozen: std::sync::Mutex<std::collections::HashMap<proto::VolumeId, Option<proto::msg::Fence>>>,
    pub moved: std::sync::Mutex<std::collections::HashSet<proto::VolumeId>>,
    /// The newest fencing token seen per volume name: an older one is stale.
    pub fences: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    pub metrics: Metrics,
    /// The replicated volumes' consensus groups this server is a member of.
    pub groups: Arc<crate::replication::Groups>,
}

/// One client connection.
pub struct Peer {
    pub conn: quinn::Connection,
    pub client: OnceLock<ClientId>,
    pub admin: bool,
    /// Another server of the cell (its certificate is a registered server's).
    pub server: Option<ServerId>,
    pub remote: SocketAddr,
    /// How much of the connection's traffic the metrics have counted.
    pub traffic: Traffic,
}

/// What `vice serve` may set over the data directory's configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve on this address instead of the configured one.
    pub listen: Option<String>,
    /// Answer Prometheus scrapes on this TCP address.
    pub metrics: Option<String>,
    /// Write-back permits' lease in seconds (0: none).
    pub permit_lease: Option<u32>,
}

/// Runs the server in `data` until `shutdown` is cancelled.
pub async fn run(data: &Path, options: Options, shutdown: CancellationToken) -> Result<()> {
    let Options { listen: listen_override, metrics, permit_lease } = options;
    let dir = DataDir::new(data);
    let mut config = ServerConfig::load(&dir)?;
    if let Some(l) = listen_override {
        config.listen = l;
    }
    if permit_lease.is_some() {
        config.permit_lease_secs = permit_lease;
    }
    let identity = Identity::load(&dir.identity())?;
    let cell_db = {
        let (config, dir) = (config.clone(), DataDir::new(data));
        tokio::task::spawn_blocking(move || config.open_cell_db(&dir)).await.context("opening the cell database")??
    };
    let server_id = ServerId(config.server_id);
    let store = Arc::new(Store::open(&dir.store(), server_id).context("opening the volume store")?);
    let lease = config.permit_lease_secs.map_or(crate::permits::DEFAULT_LEASE, |s| Duration::from_secs(u64::from(s)));
    let restored = store.permits().context("reading the write-back permits")?;
    if !restored.is_empty() {
        tracing::info!(
            permits = restored.len(),
            "write-back permits held before the restart are kept for their holders"
        );
    }
    let permits = crate::permits::Permits::new(lease, restored);
    let pts = match config.database {
        true => {
            let db = cell_db.clone();
            let pts =
                tokio::task::spawn_blocking(move || Ptdb::new(db)).await.context("opening the protection database")?;
            Some(Arc::new(pts.context("opening the protection database")?))
        }
        false => None,
    };
    let key_text = std::fs::read_to_string(dir.token_key())
        .with_context(|| format!("reading the cell's token key {}", dir.token_key().display()))?;
    let token_key = TokenKey::from_hex(&key_text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("in {}", dir.token_key().display()))?;
    let metrics_listener = match &metrics {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding --metrics {a}"))?),
        None => None,
    };
    let addr: SocketAddr = config.listen.parse().with_context(|| format!("listen address {:?}", config.listen))?;
    let socket = proto::udp::bind(addr).with_context(|| format!("binding {addr}"))?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config(&identity),
        Some(server_config(&identity, &TransportTuning::default())?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("starting QUIC on {addr}"))?;
    tracing::info!(cell = %config.cell, server = %server_id, %addr, fingerprint = %identity.fingerprint(), "vice serving");

    tracing::info!(cell_db = %cell_db.describe(), "cell database");
    let registry = Arc::new(Registry::new(cell_db.clone()));
    // The servers the cell file lists: enough to find the others through.
    let seed = proto::cell::CellFile::load(&dir.cell_file()).map(|c| c.servers).unwrap_or_default();
    let peers = crate::replication::network::Peers::new(
        server_id,
        identity.clone(),
        registry.clone(),
        data.join("peers"),
        seed,
    )
    .context("the connections to other servers")?;
    // Remembered for when the cell database's server is down (a failure the groups survive).
    if let Err(e) = peers.servers(true).await {
        tracing::info!(error = %e, "the cell's servers not read now; using those remembered");
    }
    let groups = crate::replication::Groups::open(data, store.clone(), Arc::new(peers))
        .await
        .context("starting the replicated volumes' groups")?;
    let shared = Arc::new(Shared {
        store,
        vldb: Arc::new(Vldb::new(cell_db.clone())),
        registry,
        locks: Arc::new(Locks::new(cell_db.clone())),
        cell_db,
        callbacks: Callbacks::new(BREAK_TIMEOUT),
        permits,
        config,
        server_id,
        pts,
        token_key,
        identities: Identities::default(),
        frozen: Default::default(),
        moved: Default::default(),
        fences: Default::default(),
        metrics: Metrics::default(),
        groups: Arc::new(groups),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(maintenance(shared.clone(), shutdown.clone()));
    tracker.spawn(crate::liveness::announce(shared.clone(), identity.fingerprint(), shutdown.clone()));
    tracker.spawn(crate::liveness::forget_identities_on_change(shared.clone(), shutdown.clone()));
    tracker.spawn(handlers::locks::watch_frozen(shared.clone(), shutdown.clone()));
    tracker.spawn(handlers::locks::reconcile(shared.clone()));
    tracker.spawn(handlers::replica::watch_leadership(shared.clone(), shutdown.clone()));
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "metrics at /metrics");
        tracker.spawn(metrics::serve(shared.clone(), listener, shutdown.clone()));
    }
    notify_service_manager(sd_notify::NotifyState::Ready);

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if tracker.len() > MAX_CONNECTIONS {
                    tracing::warn!("connection limit reached; refusing {}", incoming.remote_address());
                    incoming.refuse();
                    continue;
                }
                tracker.spawn(connection(shared.clone(), incoming, tracker.clone(), shutdown.clone()));
            }
        }
    }
    tracing::info!("shutting down");
    notify_service_manager(sd_notify::NotifyState::Stopping);
    endpoint.close(0u32.into(), b"server shutting down");
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.is_err() {
        tracing::warn!("handlers still running after 10 s; exiting anyway");
    }
    shared.groups.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// Tells systemd how the service is doing (a no-op when `$NOTIFY_SOCKET` is unset). A failure
/// is logged, not fatal: the server works the same, only the service manager is not told.
fn notify_service_manager(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, ?state, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

async fn maintenance(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.callbacks.expire();
        let store = shared.store.clone();
        // The sweep frees space: on a full disk it may use the reserve (see `volumes::space`).
        let swept = tokio::task::spawn_blocking(move || store.space().retry_freeing(|| store.sweep(CHUNK_GRACE))).await;
        shared.metrics.swept(swept.as_ref().ok().and_then(|r| r.as_ref().ok()));
        match swept {
            Ok(Ok(r)) if r.did_anything() => r.log("periodic"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
            Err(e) => tracing::error!(error = %e, "sweep panicked"),
        }
    }
}

async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming, tracker: TaskTracker, shutdown: CancellationToken) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let fingerprint = peer_fingerprint(&conn);
    let admin = fingerprint.as_ref().is_some_and(|fp| shared.config.admins.contains(fp));
    let server = match fingerprint {
        Some(fp) if !admin => server_with(&shared, fp).await,
        _ => None,
    };
    let peer = Arc::new(Peer {
        conn: conn.clone(),
        client: OnceLock::new(),
        admin,
        server,
        remote,
        traffic: Traffic::default(),
    });
    let _open = shared.metrics.connection();
    tracing::debug!(%remote, admin, "connected");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tracker.spawn(stream_task(shared.clone(), peer.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "connection closed");
                    break;
                }
            }
        }
    }
    if let Some(client) = peer.client.get() {
        shared.callbacks.detach(*client, &conn);
    }
    shared.metrics.account(&peer.traffic, &conn);
}

/// The registered server whose certificate has fingerprint `fp`, if any.
async fn server_with(shared: &Arc<Shared>, fp: String) -> Option<ServerId> {
    shared.groups.peers().server_with(&fp).await
}

async fn stream_task(shared: Arc<Shared>, peer: Arc<Peer>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let read = tokio::time::timeout(REQUEST_TIMEOUT, proto::frame::read_frame(&mut recv)).await;
    let read = read.unwrap_or_else(|_| Err(proto::ProtoError::Timeout(REQUEST_TIMEOUT)));
    let call: Call = match read {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(remote = %peer.remote, error = %e, "bad request frame");
            shared.metrics.error(metrics::UNREAD, metrics::BAD_FRAME);
            let _ = proto::frame::write_frame(&mut send, &Response::Error(RemoteError::Protocol(e.to_string()))).await;
            let _ = send.finish();
            return;
        }
    };
    handlers::serve(&shared, &peer, call, &mut send, &mut recv).await;
    let _ = send.finish();
    // Let the reply drain before the stream is dropped.
    let _ = send.stopped().await;
    shared.metrics.account(&peer.traffic, &peer.conn);
}
