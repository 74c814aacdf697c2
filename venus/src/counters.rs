//! Counters: RPCs by protocol name, bytes, cache hits and misses, callback breaks. The names are
//! defined here, once; `venus status --json` reports them as they are.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

pub const BYTES_FETCHED: &str = "bytes_fetched";
pub const BYTES_STORED: &str = "bytes_stored";
pub const CACHE_HITS: &str = "cache_hits";
pub const CACHE_MISSES: &str = "cache_misses";
pub const CALLBACK_BREAKS: &str = "callback_breaks";
pub const EVICTIONS: &str = "evictions";
/// Connections to servers that died (server crash, restart, network cut).
pub const CONNECTIONS_LOST: &str = "connections_lost";
/// Reads that needed the server while it could not be reached (hoard misses).
pub const DISCONNECTED_MISSES: &str = "disconnected_misses";
/// Logged records the servers accepted at reintegration.
pub const RECORDS_REINTEGRATED: &str = "records_reintegrated";
/// Logged records the servers refused at reintegration (each is a listed conflict).
pub const CONFLICTS: &str = "conflicts";
/// Volumes confirmed current as a whole (by their stamp) after a restart or reconnection.
pub const VOLUMES_VALIDATED: &str = "volumes_validated";
/// Times a server was found unreachable (venus went on from the cache for what it serves).
pub const SERVERS_UNREACHABLE: &str = "servers_unreachable";
/// Callback breaks acked before the kernel had taken their invalidations (it did not within
/// the bound): each one a promise of DESIGN's kept late.
pub const LATE_INVALIDATIONS: &str = "late_invalidations";

/// Read-only opens of big uncached files that returned before the file was whole.
pub const STREAMED_OPENS: &str = "streamed_opens";
/// Reads of such a file that waited for their bytes to come in.
pub const STREAM_WAITS: &str = "stream_waits";

/// Write-back permits granted to this venus.
pub const PERMITS_GRANTED: &str = "permits_granted";
/// Permits a server recalled (another client wanted the volume).
pub const PERMIT_RECALLS: &str = "permit_recalls";
/// Permits this venus stopped holding without giving them back in time: their lease ran out
/// (unreachable, or not renewed), or the server refused to renew them.
pub const PERMITS_LAPSED: &str = "permits_lapsed";

const OTHERS: &[&str] = &[
    BYTES_FETCHED,
    BYTES_STORED,
    CACHE_HITS,
    CACHE_MISSES,
    CALLBACK_BREAKS,
    EVICTIONS,
    CONNECTIONS_LOST,
    VOLUMES_VALIDATED,
    DISCONNECTED_MISSES,
    RECORDS_REINTEGRATED,
    CONFLICTS,
    SERVERS_UNREACHABLE,
    LATE_INVALIDATIONS,
    STREAMED_OPENS,
    STREAM_WAITS,
    PERMITS_GRANTED,
    PERMIT_RECALLS,
    PERMITS_LAPSED,
];

pub struct Counters {
    rpcs: BTreeMap<&'static str, AtomicU64>,
    others: BTreeMap<&'static str, AtomicU64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub rpcs: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub others: BTreeMap<String, u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rpcs: proto::msg::REQUEST_NAMES.iter().map(|n| (*n, AtomicU64::new(0))).collect(),
            others: OTHERS.iter().map(|n| (*n, AtomicU64::new(0))).collect(),
        }
    }
}

impl Counters {
    pub fn rpc(&self, name: &str) {
        if let Some(c) = self.rpcs.get(name) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn add(&self, name: &str, n: u64) {
        if let Some(c) = self.others.get(name) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current value of a counter other than an RPC's.
    pub fn get(&self, name: &str) -> u64 {
        self.others.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            rpcs: self.rpcs.iter().map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed))).collect(),
            others: self.others.iter().map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed))).collect(),
        }
    }
}
