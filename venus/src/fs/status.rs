//! `venus status`: what venus is connected to, what it holds, and what it has done.

use serde::{Deserialize, Serialize};

use super::Venus;
use crate::cache::Usage;
use crate::counters::Snapshot;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub client: String,
    pub cells: Vec<CellStatus>,
    pub cache: Usage,
    pub promises: u64,
    pub counters: Snapshot,
    pub volumes: Vec<VolumeStatus>,
    /// Records in the client modification log not yet accepted by a server.
    pub pending_records: u64,
    pub conflicts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellStatus {
    pub name: String,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: u32,
    pub address: String,
    pub connected: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub cell: String,
    pub volume: u64,
    pub name: Option<String>,
    pub state: super::modes::Mode,
    pub pending_records: u64,
    pub pending_bytes: u64,
    pub oldest_pending: Option<proto::Timestamp>,
    /// How fast the volume's log went to the server in the last minute, if it sent any.
    #[serde(default)]
    pub drain: Option<super::drain::DrainRate>,
    /// Seconds until what is pending is sent at that rate.
    #[serde(default)]
    pub drain_eta_secs: Option<f64>,
    /// The local user whose token the pending changes wait for (`venus login`).
    pub waiting_for_login: Option<u32>,
    /// Why the volume is not plainly connected, in words.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Venus {
    pub async fn status_report(&self) -> Status {
        let mut cells = Vec::new();
        for (name, conn) in self.cells() {
            let connected = conn.connected().await;
            cells.push(CellStatus {
                name: name.to_string(),
                servers: conn
                    .servers()
                    .into_iter()
                    .map(|(id, address)| ServerStatus { id: id.0, address, connected: connected.contains(&id) })
                    .collect(),
            });
        }
        let logs = self.cml.summary().unwrap_or_default();
        let mut volumes: Vec<VolumeStatus> = self
            .cache
            .cached_volumes()
            .into_iter()
            .map(|(cell, volume, _)| (cell, volume))
            .chain(logs.iter().filter_map(|l| Some((self.cell_by_name(&l.cell)?, l.volume))))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|(cell, volume)| {
                let name = self.cell(cell).ok()?.name().to_string();
                let log = logs.iter().find(|l| l.cell == name && l.volume == volume);
                let waiting_for_login = self.cache.volume(cell, volume).log_owner.filter(|o| {
                    log.is_some()
                        && o.user != proto::PtsId::ANONYMOUS
                        && self.tokens.get(cell, o.uid).map(|t| t.body.user) != Some(o.user)
                });
                let state = self.mode(cell, volume);
                let reason = match state {
                    super::modes::Mode::Connected => None,
                    super::modes::Mode::Disconnected if self.forced_off(cell, volume) => {
                        Some("disconnected by `venus disconnect`".to_string())
                    }
                    super::modes::Mode::Disconnected => Some("its servers do not answer".to_string()),
                    super::modes::Mode::Reintegrating => {
                        Some(match (waiting_for_login, self.postponed(cell, volume)) {
                            (Some(o), _) => format!("waiting for uid {} to `venus login`", o.uid),
                            (None, Some(why)) => format!("reintegration postponed: {why}"),
                            (None, None) => "reintegrating".to_string(),
                        })
                    }
                    super::modes::Mode::WriteBack => Some(match self.postponed(cell, volume) {
                        Some(why) => format!("write-back: sending postponed: {why}"),
                        None => "write-back: changes go to the server in batches".to_string(),
                    }),
                };
                let drain = self.drains.rate(cell, volume);
                let (records, bytes) = log.map_or((0, 0), |l| (l.records, l.bytes));
                Some(VolumeStatus {
                    cell: name,
                    volume: volume.0,
                    name: self.cache.volume(cell, volume).name,
                    state,
                    reason,
                    pending_records: records,
                    pending_bytes: bytes,
                    oldest_pending: log.and_then(|l| l.oldest),
                    drain,
                    drain_eta_secs: drain.and_then(|d| d.eta_secs(records, bytes)),
                    waiting_for_login: waiting_for_login.map(|o| o.uid),
                })
            })
            .collect();
        volumes.sort_by(|a, b| (&a.cell, a.volume).cmp(&(&b.cell, b.volume)));
        Status {
            client: self.client.to_string(),
            cells,
            cache: self.cache.usage(),
            promises: self.promise_count() as u64,
            counters: self.counters.snapshot(),
            volumes,
            pending_records: self.cml.total_records().unwrap_or(0),
            conflicts: self.conflicts().map_or(0, |c| c.len() as u64),
        }
    }
}
