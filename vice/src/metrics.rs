//! The server's metrics (`vice serve --metrics ADDR`): what it answered, how fast, what failed,
//! what it holds. Served as OpenMetrics text by `proto::metrics`; the names are defined here,
//! once, and listed in docs/admin.md.
//!
//! Two kinds. Events are counted as they happen, in one registry built at start: requests,
//! their latency and their errors (all recorded at one place, `handlers::serve`), bytes on the
//! wire (each connection's QUIC statistics, taken after each request), open connections and the
//! sweeps of the chunk store. State is read at scrape time into a registry of its own: volumes
//! (one cheap query of the volume table), promises and clients (the callback table), and the
//! chunk store's totals, a scan of the chunk table that is cached for [`CHUNK_SCAN_EVERY`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use proto::metrics::{gauge, level};
use proto::msg::VolumeKind;
use volumes::gc::SweepReport;

use crate::server::Shared;

/// The chunk totals are a table scan: at most one per this long, whatever the scrape rate.
pub const CHUNK_SCAN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    request: &'static str,
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
    id: u64,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The request label of a stream whose request could not be read.
pub const UNREAD: &str = "unread";
/// The error label of a reply that did not reach the client.
pub const NOT_DELIVERED: &str = "NotDelivered";
/// The error label of a request frame that could not be read.
pub const BAD_FRAME: &str = "BadFrame";

type Latency = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    errors: Family<ErrorLabels, Counter>,
    received: Counter,
    sent: Counter,
    connections: Gauge,
    sweeps: Counter,
    sweep_failures: Counter,
    sweep_chunks: Counter,
    sweep_bytes: Counter,
    sweep_pack_bytes: Counter,
    chunks: Mutex<Option<(Instant, (u64, u64))>>,
}

fn latency_histogram() -> Histogram {
    // 100 us to 26 s, each bucket four times the last.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vice");
        let requests = Family::<RequestLabels, Counter>::default();
        // Every request's counter exists from the start, at 0, so rates work from the first one.
        for request in proto::msg::REQUEST_NAMES {
            let _ = requests.get_or_create(&RequestLabels { request });
        }
        registry.register("requests", "Requests answered, by protocol name", requests.clone());
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a request read to its reply written, by protocol name",
            Unit::Seconds,
            latency.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "request_errors",
            "Requests answered with an error, by protocol name and error kind",
            errors.clone(),
        );
        let (received, sent) = (Counter::default(), Counter::default());
        registry.register_with_unit(
            "received",
            "UDP bytes received from clients (QUIC)",
            Unit::Bytes,
            received.clone(),
        );
        registry.register_with_unit("sent", "UDP bytes sent to clients (QUIC)", Unit::Bytes, sent.clone());
        let connections = Gauge::default();
        registry.register("connections", "Open QUIC connections", connections.clone());
        let [sweeps, sweep_failures, sweep_chunks] = [(); 3].map(|()| Counter::default());
        let [sweep_bytes, sweep_pack_bytes] = [(); 2].map(|()| Counter::default());
        registry.register("sweeps", "Sweeps of the chunk store", sweeps.clone());
        registry.register("sweep_failures", "Sweeps that failed or left a pack alone", sweep_failures.clone());
        registry.register("sweep_removed_chunks", "Unreferenced chunks the sweeps removed", sweep_chunks.clone());
        registry.register_with_unit(
            "sweep_removed",
            "Bytes of unreferenced chunks the sweeps removed",
            Unit::Bytes,
            sweep_bytes.clone(),
        );
        registry.register_with_unit(
            "sweep_pack_freed",
            "Bytes of pack files the sweeps gave back to the file system",
            Unit::Bytes,
            sweep_pack_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            errors,
            received,
            sent,
            connections,
            sweeps,
            sweep_failures,
            sweep_chunks,
            sweep_bytes,
            sweep_pack_bytes,
            chunks: Mutex::new(None),
        }
    }
}

/// A connection counted as open until dropped.
pub struct OpenConnection<'a>(&'a Gauge);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How much of one connection's traffic has been counted.
#[derive(Debug, Default)]
pub struct Traffic {
    rx: AtomicU64,
    tx: AtomicU64,
}

impl Metrics {
    /// Records one answered request: `error` is the kind of error it was answered with.
    pub fn answered(&self, request: &'static str, error: Option<&'static str>, took: Duration) {
        self.requests.get_or_create(&RequestLabels { request }).inc();
        self.latency.get_or_create(&RequestLabels { request }).observe(took.as_secs_f64());
        if let Some(error) = error {
            self.errors.get_or_create(&ErrorLabels { request, error }).inc();
        }
    }

    /// Records an error outside any request's answer (a frame that could not be read).
    pub fn error(&self, request: &'static str, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { request, error }).inc();
    }

    pub fn connection(&self) -> OpenConnection<'_> {
        self.connections.inc();
        OpenConnection(&self.connections)
    }

    /// Counts what `conn` moved since it was last counted. Safe to call from several tasks:
    /// each byte is counted once.
    pub fn account(&self, traffic: &Traffic, conn: &quinn::Connection) {
        let stats = conn.stats();
        for (seen, now, counter) in
            [(&traffic.rx, stats.udp_rx.bytes, &self.received), (&traffic.tx, stats.udp_tx.bytes, &self.sent)]
        {
            let before = seen.fetch_max(now, Ordering::Relaxed);
            if now > before {
                counter.inc_by(now - before);
            }
        }
    }

    /// Records the outcome of a sweep: its report, or `None` if it failed.
    pub fn swept(&self, report: Option<&SweepReport>) {
        self.sweeps.inc();
        match report {
            Some(r) => {
                self.sweep_chunks.inc_by(r.chunks_removed);
                self.sweep_bytes.inc_by(r.bytes_removed);
                self.sweep_pack_bytes.inc_by(r.pack_bytes_freed);
                if !r.pack_errors.is_empty() {
                    self.sweep_failures.inc();
                }
            }
            None => {
                self.sweep_failures.inc();
            }
        }
    }
}

fn kind_label(kind: VolumeKind) -> &'static str {
    match kind {
        VolumeKind::ReadWrite => "rw",
        VolumeKind::ReadOnly => "ro",
        VolumeKind::Backup => "backup",
    }
}

/// The whole exposition: the event counters, then the state read now.
pub async fn render(shared: &Arc<Shared>) -> String {
    let store_shared = shared.clone();
    let state = tokio::task::spawn_blocking(move || {
        let shared = store_shared;
        let volumes = shared.store.list_volumes();
        let mut cached = shared.metrics.chunks.lock().unwrap_or_else(|p| p.into_inner());
        let chunks = match *cached {
            Some((at, usage)) if at.elapsed() < CHUNK_SCAN_EVERY => Some(usage),
            _ => match shared.store.chunk_usage() {
                Ok(usage) => {
                    *cached = Some((Instant::now(), usage));
                    Some(usage)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: chunk totals not read");
                    None
                }
            },
        };
        (volumes, chunks)
    })
    .await;
    let mut now = Registry::with_prefix("vice");
    match state {
        Ok((volumes, chunks)) => {
            if let Some((n, bytes)) = chunks {
                now.register("chunks", "Chunks in the chunk store (used or awaiting the sweep)", gauge(n));
                now.register_with_unit(
                    "chunk_store",
                    "Bytes of chunk data in the chunk store",
                    Unit::Bytes,
                    gauge(bytes),
                );
            }
            match volumes {
                Ok(volumes) => volume_gauges(&mut now, &volumes),
                Err(e) => tracing::warn!(error = %e, "metrics: volumes not listed"),
            }
        }
        Err(e) => tracing::error!(error = %e, "metrics: store task failed"),
    }
    now.register("callback_promises", "Callback promises held by clients", gauge(shared.callbacks.count() as u64));
    now.register("clients", "Clients connected (that said Hello)", gauge(shared.callbacks.clients() as u64));
    let breaks = Family::<OutcomeLabels, Counter>::default();
    let b = shared.callbacks.breaks();
    breaks.get_or_create(&OutcomeLabels { outcome: "acked" }).inc_by(b.acked as u64);
    breaks.get_or_create(&OutcomeLabels { outcome: "lost" }).inc_by(b.lost as u64);
    now.register(
        "callback_breaks",
        "Callback breaks sent, by outcome (lost: the client lost all its promises)",
        breaks,
    );
    permit_metrics(&mut now, shared.permits.report());
    proto::metrics::encode(&[&shared.metrics.registry, &now])
}

/// Write-back permits: held now, and how they ended.
fn permit_metrics(r: &mut Registry, p: crate::permits::PermitReport) {
    r.register("permits", "Write-back permits held by clients", gauge(p.held as u64));
    let counter = |n: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        c
    };
    r.register("permits_granted", "Write-back permits granted (renewals not counted)", counter(p.granted));
    r.register(
        "permit_recalls",
        "Recalls sent to a permit's holder (another client wanted its volume)",
        counter(p.recalled),
    );
    let ended = Family::<OutcomeLabels, Counter>::default();
    ended.get_or_create(&OutcomeLabels { outcome: "returned" }).inc_by(p.returned);
    ended.get_or_create(&OutcomeLabels { outcome: "expired" }).inc_by(p.expired);
    r.register(
        "permits_ended",
        "Write-back permits ended, by how (expired: taken back at the end of its lease)",
        ended,
    );
}

/// One number of a volume's, for one family of gauges.
type VolumeField = fn(&proto::msg::VolumeInfo) -> u64;

fn volume_gauges(r: &mut Registry, volumes: &[proto::msg::VolumeInfo]) {
    let families: [(&str, &str, Option<Unit>, VolumeField); 4] = [
        ("volume_used", "Bytes of file data in a volume", Some(Unit::Bytes), |v| v.used),
        ("volume_quota", "A volume's quota (0: none)", Some(Unit::Bytes), |v| v.quota),
        ("volume_files", "Files in a volume", None, |v| v.files),
        ("volume_directories", "Directories in a volume", None, |v| v.directories),
    ];
    r.register("volumes", "Volumes on this server", gauge(volumes.len() as u64));
    for (name, help, unit, value) in families {
        let family = Family::<VolumeLabels, Gauge>::default();
        for v in volumes {
            let labels = VolumeLabels { volume: v.name.clone(), id: v.id.0, kind: kind_label(v.kind) };
            family.get_or_create(&labels).set(level(value(v)));
        }
        match unit {
            Some(unit) => r.register_with_unit(name, help, unit, family),
            None => r.register(name, help, family),
        }
    }
}

/// Serves the metrics on `listener` until `shutdown`.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let scrape = move || {
        let shared = shared.clone();
        async move { render(&shared).await }
    };
    proto::metrics::serve(listener, proto::metrics::Limits::default(), scrape, shutdown.cancelled_owned()).await;
}
