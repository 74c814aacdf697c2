//! Where a cell's volumes live: location entries asked of the location service (and kept a
//! minute), each volume's server or released read-only sites, the servers learned on the way
//! (kept in the cache directory for an offline start), and which volume a name means.

use std::time::Duration;

use proto::cell::CellServer;
use proto::msg::{SiteRole, VolumeRef};
use proto::{RemoteError, Request, Response, ServerId, VolumeId};

use super::CellConn;
use crate::error::{Result, VenusError};

/// How long a volume's location entry is used before it is asked for again.
const ENTRY_TTL: Duration = Duration::from_secs(60);

/// What the location service taught this client, saved for an offline start.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Learned {
    pub(super) servers: Vec<CellServer>,
    pub(super) locations: Vec<(VolumeId, ServerId)>,
    pub(super) replicas: Vec<(VolumeId, Vec<ServerId>)>,
    pub(super) members: Vec<(VolumeId, Vec<ServerId>)>,
}

impl CellConn {
    /// Remembers what a location reply said: the servers of the cell (those the cell file
    /// lacks are trusted as the pinned server vouches for them) and where the volume lives.
    pub(super) fn learn(&self, entry: &proto::msg::VldbEntry, servers: &[proto::msg::ServerInfo]) {
        self.learn_servers(servers);
        let site = entry.sites.iter().find(|s| s.role == SiteRole::ReadWrite).or(entry.sites.first()).map(|s| s.server);
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        // A replicated read-write volume lists each member as a read-write site.
        let members: Vec<ServerId> =
            entry.sites.iter().filter(|s| s.role == SiteRole::ReadWrite).map(|s| s.server).collect();
        {
            let mut known = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let was = known.get(&entry.rw).cloned().unwrap_or_default();
            if members.len() > 1 && was != members {
                known.insert(entry.rw, members.clone());
                learned.members.retain(|(x, _)| *x != entry.rw);
                learned.members.push((entry.rw, members.clone()));
                changed = true;
            } else if members.len() <= 1 && known.remove(&entry.rw).is_some() {
                learned.members.retain(|(x, _)| *x != entry.rw);
                changed = true;
            }
        }
        // Where requests about a replicated volume go is learned from its members (`NotLeader`),
        // not from the entry: a member already asked stays.
        let site = match self.locations.lock().unwrap_or_else(|p| p.into_inner()).get(&entry.rw) {
            Some(now) if members.len() > 1 && members.contains(now) => Some(*now),
            _ => site,
        };
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
        if changed {
            self.save_learned(&learned);
        }
    }

    /// Remembers servers of the cell that the cell file lacks (trusted as the pinned server
    /// that named them vouches for them).
    pub(super) fn learn_servers(&self, servers: &[proto::msg::ServerInfo]) {
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
        if changed {
            self.save_learned(&learned);
        }
    }

    fn save_learned(&self, learned: &Learned) {
        if let Some(path) = &self.known_path {
            let _ = postcard::to_stdvec(learned).map(|b| std::fs::write(path, b));
        }
    }

    /// The server holding `volume`'s read-write site.
    pub(super) async fn server_of(&self, volume: VolumeId) -> Result<ServerId> {
        self.server_for(Some(volume)).await
    }

    /// The server to ask about `volume` as far as known without asking: the first replica
    /// not known to be down, or where the volume lives.
    pub(super) fn known_server(&self, volume: VolumeId) -> Option<ServerId> {
        if let Some(sites) = self.replicas.lock().unwrap_or_else(|p| p.into_inner()).get(&volume) {
            let down = self.down_set();
            return sites.iter().find(|s| !down.contains(s)).or(sites.first()).copied();
        }
        let at = self.locations.lock().unwrap_or_else(|p| p.into_inner()).get(&volume).copied()?;
        // A replicated volume's member known down is passed over for the next one.
        if self.replicated(Some(volume)) && self.down_set().contains(&at) {
            return self.next_member(volume, at).or(Some(at));
        }
        Some(at)
    }

    /// Whether `volume` has a replica other than `server` that is not known to be down.
    pub(super) fn other_replica(&self, volume: Option<VolumeId>, server: ServerId) -> bool {
        let Some(volume) = volume else { return false };
        let replicas = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        let down = self.down_set();
        replicas.get(&volume).is_some_and(|sites| sites.iter().any(|s| *s != server && !down.contains(s)))
    }

    /// Which server to ask about `volume`.
    pub(super) async fn server_for(&self, volume: Option<VolumeId>) -> Result<ServerId> {
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
    pub(super) async fn locate(&self, volume: VolumeId) -> Result<ServerId> {
        let (entry, servers) =
            match self.ask_cell(&Request::GetVolumeLocation { volume: VolumeRef::Id(volume) }).await? {
                Response::Location { entry, servers } => (entry, servers),
                other => return Err(VenusError::Protocol(format!("unexpected reply {other:?}"))),
            };
        self.learn(&entry, &servers);
        self.known_server(volume).ok_or(VenusError::Remote(RemoteError::NoSuchVolume))
    }

    /// The location entry of read-write volume `base`.
    async fn entry(&self, base: &str) -> Result<proto::msg::VldbEntry> {
        if let Some((e, at)) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(base)
            && at.elapsed() < ENTRY_TTL
        {
            return Ok(e.clone());
        }
        let resp = self.ask_cell(&Request::GetVolumeLocation { volume: VolumeRef::Name(base.into()) }).await?;
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
    pub(super) async fn resolve_volume(&self, name: &str, prefer_ro: bool) -> Result<(VolumeId, String)> {
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
