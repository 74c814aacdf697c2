//! How fast each volume's log drains: what the server accepted in the last minute, and the time
//! spent sending it, so `venus status` can say how long what is pending will take.
//!
//! The rate is over the time spent sending (upload and `Reintegrate` together), not over wall
//! time: under a write-back permit batches go once a window, and a wall-clock rate would only
//! echo how fast the application writes. Over a slow link the sender is busy all the time and
//! the two agree.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::{Mutation, VolumeId};
use serde::{Deserialize, Serialize};

use crate::ids::CellId;

/// Batches older than this no longer count.
const WINDOW: Duration = Duration::from_secs(60);
/// At most this many batches are kept per volume (a fast link sends many small ones).
const KEPT: usize = 256;

/// One batch the server accepted.
struct Sent {
    at: Instant,
    records: u64,
    bytes: u64,
    took: Duration,
}

/// What `venus status` shows of a volume's draining.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DrainRate {
    /// Records the server accepted per second of sending, over the last minute.
    pub records_per_sec: f64,
    /// Bytes of stored data per second of sending, over the last minute.
    pub bytes_per_sec: f64,
    /// Seconds since the last batch was accepted.
    pub last_sent_secs_ago: f64,
}

impl DrainRate {
    /// Seconds until `records` and `bytes` are sent at this rate (`None`: no rate for one).
    pub fn eta_secs(&self, records: u64, bytes: u64) -> Option<f64> {
        let by_records = (records > 0).then(|| records as f64 / self.records_per_sec);
        let by_bytes = (bytes > 0 && self.bytes_per_sec > 0.0).then(|| bytes as f64 / self.bytes_per_sec);
        match (by_records, by_bytes) {
            (Some(r), Some(b)) => Some(r.max(b)),
            (r, b) => r.or(b),
        }
        .filter(|s| s.is_finite())
    }
}

/// Per volume, the batches of the last minute.
#[derive(Default)]
pub struct Drains {
    sent: Mutex<HashMap<(CellId, VolumeId), VecDeque<Sent>>>,
}

/// The bytes of data a record carries to the server.
pub fn bytes_of(m: &Mutation) -> u64 {
    match m {
        Mutation::Store { chunks, .. } => proto::chunk::total_len(chunks),
        _ => 0,
    }
}

impl Drains {
    /// A batch of `records` records (`bytes` of data) was accepted after `took` of sending.
    pub fn sent(&self, cell: CellId, volume: VolumeId, records: u64, bytes: u64, took: Duration) {
        if records == 0 {
            return;
        }
        let now = Instant::now();
        let mut all = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let batches = all.entry((cell, volume)).or_default();
        batches.push_back(Sent { at: now, records, bytes, took });
        while batches.len() > KEPT || batches.front().is_some_and(|b| now - b.at > WINDOW) {
            batches.pop_front();
        }
    }

    /// The volume's rate over the last minute (`None`: nothing was sent in it).
    pub fn rate(&self, cell: CellId, volume: VolumeId) -> Option<DrainRate> {
        let now = Instant::now();
        let all = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let recent: Vec<&Sent> = all.get(&(cell, volume))?.iter().filter(|b| now - b.at <= WINDOW).collect();
        let last = recent.last()?;
        let busy = recent.iter().map(|b| b.took).sum::<Duration>().as_secs_f64().max(1e-6);
        Some(DrainRate {
            records_per_sec: recent.iter().map(|b| b.records).sum::<u64>() as f64 / busy,
            bytes_per_sec: recent.iter().map(|b| b.bytes).sum::<u64>() as f64 / busy,
            last_sent_secs_ago: (now - last.at).as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_time_spent_sending_and_gives_how_long_the_rest_takes() {
        let d = Drains::default();
        let (cell, volume) = (CellId(0), VolumeId(7));
        assert!(d.rate(cell, volume).is_none(), "nothing sent: no rate");
        d.sent(cell, volume, 100, 1_000_000, Duration::from_millis(500));
        d.sent(cell, volume, 100, 0, Duration::from_millis(500));
        let r = d.rate(cell, volume).expect("a rate");
        assert!((r.records_per_sec - 200.0).abs() < 1e-6, "{r:?}");
        assert!((r.bytes_per_sec - 1_000_000.0).abs() < 1e-6, "{r:?}");
        // 400 records take 2 s, 3 MB take 3 s: the slower of the two.
        assert_eq!(r.eta_secs(400, 3_000_000), Some(3.0));
        assert_eq!(r.eta_secs(400, 0), Some(2.0));
        assert!(d.rate(cell, VolumeId(8)).is_none(), "per volume");
    }

    #[test]
    fn a_volume_keeps_a_bounded_number_of_batches() {
        let d = Drains::default();
        for _ in 0..(KEPT + 50) {
            d.sent(CellId(0), VolumeId(1), 1, 0, Duration::from_millis(1));
        }
        let all = d.sent.lock().expect("lock");
        assert_eq!(all[&(CellId(0), VolumeId(1))].len(), KEPT);
    }
}
