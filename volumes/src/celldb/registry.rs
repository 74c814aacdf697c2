//! The cell's servers: who they are, and which are alive.
//!
//! ```text
//! counter/server      the next server id (JSON number)
//! server/ID           a server of the cell (JSON ServerInfo): kept until removed
//! alive/ID            put by server ID under a lease it keeps alive while it runs; gone
//!                     within the lease's ttl once it stops or is cut off
//! cell/name           the cell's name
//! cell/token_key      the cell's token key (hex): the same on every server
//! cell/admins         fingerprints of the admin credentials (JSON list)
//! ```

use std::sync::Arc;
use std::time::Duration;

use proto::msg::{ServerInfo, ServerStatus};
use proto::{RemoteError, ServerId};
use serde::{Deserialize, Serialize};

use super::{CellDb, Committed, Compare, LeaseId, Op, Txn, get_json};
use crate::error::{Result, refuse};

/// How long a server stays listed as alive after its last keep-alive.
pub const ALIVE_TTL: Duration = Duration::from_secs(10);

fn server_key(id: ServerId) -> String {
    format!("server/{}", id.0)
}

fn alive_key(id: ServerId) -> String {
    format!("alive/{}", id.0)
}

/// What a running server says of itself under its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Alive {
    address: String,
    since: i64,
}

/// What every server of a cell shares: its name, token key and administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellSecrets {
    pub cell: String,
    pub token_key: String,
    pub admins: Vec<String>,
}

#[derive(Clone)]
pub struct Registry {
    db: Arc<dyn CellDb>,
}

impl Registry {
    pub fn new(db: Arc<dyn CellDb>) -> Self {
        Registry { db }
    }

    /// Records a new cell's name, token key and administrators; refuses if the database
    /// already holds a cell.
    pub fn create_cell(&self, s: &CellSecrets) -> Result<()> {
        let txn = Txn::new()
            .when(Compare::Missing("cell/name".into()))
            .then(Op::put("cell/name", &s.cell))
            .then(Op::put("cell/token_key", &s.token_key))
            .then(Op::put("cell/admins", &s.admins));
        match self.db.txn(txn)? {
            Committed::At(_) => Ok(()),
            Committed::ConditionFailed => refuse(RemoteError::Invalid(format!(
                "the cell database {} already holds a cell; join it with `vice init --join`",
                self.db.describe()
            ))),
        }
    }

    /// The cell's name, token key and administrators, if the database holds a cell.
    pub fn cell(&self) -> Result<Option<CellSecrets>> {
        let Some((cell, _)) = get_json::<String>(&*self.db, "cell/name")? else { return Ok(None) };
        let token_key = get_json::<String>(&*self.db, "cell/token_key")?.map(|(k, _)| k).unwrap_or_default();
        let admins = get_json::<Vec<String>>(&*self.db, "cell/admins")?.map(|(a, _)| a).unwrap_or_default();
        Ok(Some(CellSecrets { cell, token_key, admins }))
    }

    pub fn allocate_server_id(&self) -> Result<ServerId> {
        super::vldb::next_from(&*self.db, "counter/server").map(|n| ServerId(n as u32))
    }

    /// Adds a server, or updates its address and fingerprint.
    pub fn register_server(&self, s: &ServerInfo) -> Result<()> {
        self.db.txn(Txn::new().then(Op::put(server_key(s.id), s)))?;
        Ok(())
    }

    pub fn servers(&self) -> Result<Vec<ServerInfo>> {
        let mut servers: Vec<ServerInfo> =
            self.db.range("server/")?.iter().map(|kv| kv.json()).collect::<Result<_>>()?;
        servers.sort_by_key(|s| s.id);
        Ok(servers)
    }

    /// Every server, with whether it is alive now (its lease has not expired).
    pub fn status(&self) -> Result<Vec<ServerStatus>> {
        let alive: Vec<(ServerId, Alive)> = self
            .db
            .range("alive/")?
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix("alive/")?.parse().ok()?;
                Some((ServerId(id), kv.json::<Alive>().ok()?))
            })
            .collect();
        Ok(self
            .servers()?
            .into_iter()
            .map(|info| {
                let up = alive.iter().find(|(id, _)| *id == info.id).map(|(_, a)| a.since);
                ServerStatus { info, alive: up.is_some(), since: up.unwrap_or(0) }
            })
            .collect())
    }

    /// Says server `id` is alive at `address` under a new lease, which the caller keeps alive
    /// with [`Registry::still_alive`] more often than every [`ALIVE_TTL`].
    pub fn announce(&self, id: ServerId, address: &str) -> Result<LeaseId> {
        let lease = self.db.grant(ALIVE_TTL)?;
        let alive = Alive { address: address.to_string(), since: proto::auth::unix_now() };
        self.db.txn(Txn::new().then(Op::put_leased(alive_key(id), &alive, lease)))?;
        Ok(lease)
    }

    /// Renews a server's lease; false if it had expired (announce again).
    pub fn still_alive(&self, lease: LeaseId) -> Result<bool> {
        self.db.keep_alive(lease)
    }

    /// A server stopping says so at once, instead of after its lease runs out.
    pub fn leaving(&self, lease: LeaseId) -> Result<()> {
        self.db.revoke(lease)
    }
}
