//! venus's metrics as OpenMetrics text: `venus mount --metrics ADDR` serves them (through
//! `proto::metrics`), `venus status --prometheus` prints them for node_exporter's textfile
//! collector.
//!
//! Both render the same [`Status`] that `venus status --json` shows, so the three never
//! disagree and a counter added to `counters` appears in all of them with no code here: every
//! RPC counter becomes `venus_rpcs_total{request=...}`, every other counter `venus_<name>_total`.
//! The gauges (cache use, promises, pending log records, each server's and volume's state) are
//! the status report's other fields.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use proto::metrics::{counter, gauge, level};

use crate::fs::Venus;
use crate::fs::modes::Mode;
use crate::fs::status::Status;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    cell: String,
    server: u32,
    address: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    cell: String,
    volume: u64,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    cell: String,
    volume: u64,
    name: String,
    state: &'static str,
}

const MODES: [Mode; 4] = [Mode::Connected, Mode::Disconnected, Mode::Reintegrating, Mode::WriteBack];

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Connected => "connected",
        Mode::Disconnected => "disconnected",
        Mode::Reintegrating => "reintegrating",
        Mode::WriteBack => "write_back",
    }
}

/// The OpenMetrics text of a status report.
pub fn render(status: &Status) -> String {
    let mut r = Registry::with_prefix("venus");
    let rpcs = Family::<RequestLabels, Counter>::default();
    for (name, n) in &status.counters.rpcs {
        rpcs.get_or_create(&RequestLabels { request: name.clone() }).inc_by(*n);
    }
    r.register("rpcs", "RPCs made to servers, by protocol name", rpcs);
    for (name, n) in &status.counters.others {
        r.register(name.as_str(), format!("The {name} counter of `venus status`"), counter(*n));
    }

    let c = &status.cache;
    r.register_with_unit("cache_used", "Bytes of file contents cached", Unit::Bytes, gauge(c.used));
    r.register_with_unit("cache_limit", "The cache's size (--cache-size)", Unit::Bytes, gauge(c.limit));
    r.register("cache_files", "Files cached", gauge(c.files_cached));
    r.register("cache_open_files", "Cached files with open handles", gauge(c.files_open));
    r.register("cache_objects", "Objects known (cached status)", gauge(c.objects));
    r.register("promises", "Callback promises held", gauge(status.promises));
    r.register("pending_records", "Records in the modification log not yet on a server", gauge(status.pending_records));
    r.register("unrepaired_conflicts", "Conflicts waiting for `venus repair`", gauge(status.conflicts));

    let servers = Family::<ServerLabels, Gauge>::default();
    for cell in &status.cells {
        for s in &cell.servers {
            let labels = ServerLabels { cell: cell.name.clone(), server: s.id, address: s.address.clone() };
            servers.get_or_create(&labels).set(i64::from(s.connected));
        }
    }
    r.register("server_connected", "1 while venus has a connection to the server, else 0", servers);

    let (records, bytes) = (Family::<VolumeLabels, Gauge>::default(), Family::<VolumeLabels, Gauge>::default());
    let states = Family::<StateLabels, Gauge>::default();
    let drains = Family::<VolumeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for v in &status.volumes {
        let name = v.name.clone().unwrap_or_default();
        let labels = VolumeLabels { cell: v.cell.clone(), volume: v.volume, name: name.clone() };
        records.get_or_create(&labels).set(level(v.pending_records));
        bytes.get_or_create(&labels).set(level(v.pending_bytes));
        if let Some(d) = v.drain {
            drains.get_or_create(&labels).set(d.records_per_sec);
        }
        for m in MODES {
            let labels =
                StateLabels { cell: v.cell.clone(), volume: v.volume, name: name.clone(), state: mode_label(m) };
            states.get_or_create(&labels).set(i64::from(v.state == m));
        }
    }
    r.register("volume_pending_records", "A volume's records in the modification log", records);
    r.register_with_unit("volume_pending", "Bytes a volume's logged records still have to send", Unit::Bytes, bytes);
    r.register(
        "volume_drain_records_per_second",
        "Records of a volume's log the server accepted per second of sending, over the last minute",
        drains,
    );
    r.register("volume_state", "1 for the state a volume is in (connected, disconnected, reintegrating)", states);
    proto::metrics::encode(&[&r])
}

/// Serves `GET /metrics` on `listener` for as long as venus runs.
pub async fn serve(core: Arc<Venus>, listener: tokio::net::TcpListener) {
    let scrape = move || {
        let core = core.clone();
        async move { render(&core.status_report().await) }
    };
    proto::metrics::serve(listener, proto::metrics::Limits::default(), scrape, std::future::pending()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;
    use crate::fs::status::{CellStatus, ServerStatus, VolumeStatus};

    fn status() -> Status {
        let counters = Counters::default();
        counters.rpc("FetchData");
        counters.add(crate::counters::BYTES_FETCHED, 1234);
        Status {
            client: "c".into(),
            cells: vec![CellStatus {
                name: "example.org".into(),
                servers: vec![ServerStatus { id: 1, address: "127.0.0.1:7000".into(), connected: true }],
            }],
            cache: crate::cache::Usage {
                used: 5,
                limit: 100,
                objects: 1,
                files_cached: 1,
                files_open: 0,
                free_containers: 0,
            },
            promises: 3,
            counters: counters.snapshot(),
            volumes: vec![VolumeStatus {
                cell: "example.org".into(),
                volume: 7,
                name: Some("root.cell".into()),
                state: Mode::Disconnected,
                pending_records: 2,
                pending_bytes: 10,
                oldest_pending: None,
                drain: Some(crate::fs::drain::DrainRate {
                    records_per_sec: 250.0,
                    bytes_per_sec: 0.0,
                    last_sent_secs_ago: 1.0,
                }),
                drain_eta_secs: None,
                waiting_for_login: None,
                reason: None,
            }],
            pending_records: 2,
            conflicts: 0,
        }
    }

    #[test]
    fn every_counter_of_the_status_is_exported() {
        let st = status();
        let text = render(&st);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("venus_rpcs_total{request=\"FetchData\"} 1\n"), "{text}");
        assert!(text.contains("venus_rpcs_total{request=\"Hello\"} 0\n"), "every RPC name, used or not: {text}");
        for name in st.counters.others.keys() {
            assert!(text.contains(&format!("# TYPE venus_{name} counter\n")), "{name}: {text}");
        }
        assert!(text.contains("venus_bytes_fetched_total 1234\n"), "{text}");
        assert!(text.contains("venus_volume_drain_records_per_second{"), "{text}");
    }

    #[test]
    fn no_two_families_share_a_name() {
        let text = render(&status());
        let mut names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "{text}");
    }

    #[test]
    fn gauges_show_servers_volumes_and_the_log() {
        let text = render(&status());
        assert!(text.contains("venus_promises 3\n"), "{text}");
        assert!(text.contains("venus_pending_records 2\n"), "{text}");
        assert!(
            text.contains("venus_server_connected{cell=\"example.org\",server=\"1\",address=\"127.0.0.1:7000\"} 1\n"),
            "{text}"
        );
        let vol = "cell=\"example.org\",volume=\"7\",name=\"root.cell\"";
        assert!(text.contains(&format!("venus_volume_pending_records{{{vol}}} 2\n")), "{text}");
        assert!(text.contains(&format!("venus_volume_pending_bytes{{{vol}}} 10\n")), "{text}");
        assert!(text.contains(&format!("venus_volume_state{{{vol},state=\"disconnected\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("venus_volume_state{{{vol},state=\"connected\"}} 0\n")), "{text}");
    }
}
