//! `vice init`: creates a new cell on this server.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use proto::auth::{Acl, PtsId, Rights, TokenKey};
use proto::cell::{CellFile, CellServer, validate_cell_name};
use proto::msg::{ServerInfo, Site, SiteRole, VldbEntry, VolumeKind};
use proto::tls::Identity;
use volumes::celldb::registry::{CellSecrets, Registry};
use volumes::celldb::{self, Location};
use volumes::{CellDb, Ptdb, Store, Vldb};

use crate::config::{DataDir, ServerConfig, write_private};

/// What `vice init` made, for the message it prints.
pub struct Initialized {
    pub cell_file: std::path::PathBuf,
    pub admin_cred: std::path::PathBuf,
    pub admin_user: String,
    pub admin_password: std::path::PathBuf,
}

/// A password of 24 letters and digits (~142 bits).
fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..24).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// Where `--cell-db` says the cell database is (the embedded SQLite without it).
fn location(cell_db: Option<&str>) -> Result<Location> {
    match cell_db {
        None => Ok(Location::Embedded),
        Some(text) => Location::parse(text).map_err(anyhow::Error::msg).context("--cell-db"),
    }
}

fn connect(location: &Location, cell: &str, dir: &DataDir) -> Result<Arc<dyn CellDb>> {
    celldb::open(location, cell, &dir.cell_db())
        .with_context(|| format!("opening the cell database {}", location.to_text()))
}

/// A new cell, its database embedded in this server's data directory or (`cell_db`) on etcd.
pub fn init_cell(
    cell: &str,
    data: &Path,
    listen: &str,
    admin_user: &str,
    cell_db: Option<&str>,
) -> Result<Initialized> {
    proto::auth::validate_pts_name(admin_user).map_err(anyhow::Error::msg)?;
    validate_cell_name(cell).map_err(anyhow::Error::msg)?;
    listen.parse::<std::net::SocketAddr>().with_context(|| format!("--listen {listen:?} is not IP:PORT"))?;
    let location = location(cell_db)?;
    let dir = DataDir::new(data);
    if dir.config().exists() {
        bail!("{} already holds a server (server.toml exists); refusing to overwrite it", data.display());
    }
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let db = connect(&location, cell, &dir)?;
    let registry = Registry::new(db.clone());
    if registry.cell()?.is_some() {
        bail!("the cell database {} already holds cell {cell}; add this server with `vice init --join`", db.describe());
    }

    let identity = Identity::generate(proto::tls::SERVER_NAME)?;
    write_private(&dir.identity(), identity.to_pem().as_bytes())?;
    let admin = Identity::generate("admin")?;
    write_private(&dir.admin_cred(), admin.to_pem().as_bytes())?;

    let token_key = TokenKey::generate().to_hex();
    write_private(&dir.token_key(), token_key.as_bytes())?;
    registry.create_cell(&CellSecrets { cell: cell.to_string(), token_key, admins: vec![admin.fingerprint()] })?;
    let password = random_password();
    let pts = Ptdb::new(db.clone())?;
    pts.create_user(admin_user, &password).context("creating the first administrator")?;
    pts.add_member(admin_user, "system:administrators")?;
    write_private(&dir.admin_password(), format!("{password}\n").as_bytes())?;

    let vldb = Vldb::new(db.clone());
    let server_id = registry.allocate_server_id()?;
    registry.register_server(&ServerInfo {
        id: server_id,
        address: listen.to_string(),
        fingerprint: identity.fingerprint(),
    })?;
    let store = Store::open(&dir.store(), server_id)?;
    for name in ["root.afs", "root.cell"] {
        let id = vldb.allocate_volume_id()?;
        store.create_volume(id, name, VolumeKind::ReadWrite, 0, &top_level_acl())?;
        vldb.create(&VldbEntry {
            name: name.to_string(),
            rw: id,
            ro: None,
            backup: None,
            sites: vec![Site { server: server_id, role: SiteRole::ReadWrite }],
        })?;
    }

    let cell_file = CellFile {
        cell: cell.to_string(),
        servers: vec![CellServer { id: server_id.0, address: listen.to_string(), fingerprint: identity.fingerprint() }],
    };
    std::fs::write(dir.cell_file(), cell_file.to_toml())
        .with_context(|| format!("writing {}", dir.cell_file().display()))?;
    // The config is written last: its presence marks a complete initialisation.
    ServerConfig {
        cell: cell.to_string(),
        server_id: server_id.0,
        listen: listen.to_string(),
        admins: vec![admin.fingerprint()],
        token_lifetime_secs: 25 * 3600,
        database: true,
        cell_db: cell_db_setting(&location),
        permit_lease_secs: None,
    }
    .save(&dir)?;
    Ok(Initialized {
        cell_file: dir.cell_file(),
        admin_cred: dir.admin_cred(),
        admin_user: admin_user.to_string(),
        admin_password: dir.admin_password(),
    })
}

/// What server.toml says of the cell database: nothing for the embedded one.
fn cell_db_setting(location: &Location) -> Option<String> {
    match location {
        Location::Embedded => None,
        etcd => Some(etcd.to_text()),
    }
}

/// `root.afs` and `root.cell` are readable by everyone and writable by the cell's
/// administrators, as in AFS.
fn top_level_acl() -> Acl {
    let mut acl = Acl::volume_default();
    let _ = acl.set(PtsId::ANYUSER, Rights::READ | Rights::LOOKUP, false);
    acl
}

/// `vice init --join`: makes this directory a server of an existing cell. The cell's database
/// server registers it and hands over what serving the cell takes (the token key, the admin
/// fingerprints); the new server holds volumes only.
pub async fn join_cell(cell_file: &Path, data: &Path, listen: &str, admin_cred: &Path) -> Result<Initialized> {
    listen.parse::<std::net::SocketAddr>().with_context(|| format!("--listen {listen:?} is not IP:PORT"))?;
    let dir = DataDir::new(data);
    if dir.config().exists() {
        bail!("{} already holds a server (server.toml exists); refusing to overwrite it", data.display());
    }
    let cell = CellFile::load(cell_file)?;
    let db = cell.servers.first().context("the cell file lists no servers")?.clone();
    let admin = Identity::load(admin_cred)?;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let identity = Identity::generate(proto::tls::SERVER_NAME)?;
    let connector = proto::client::Connector::new(Some(admin), proto::tls::TransportTuning::default())?;
    let session = connector
        .connect(&db, proto::ClientId::random(), std::time::Duration::from_secs(30))
        .await
        .with_context(|| format!("reaching the cell's database server at {}", db.address))?;
    let req = proto::Request::JoinCell { address: listen.to_string(), fingerprint: identity.fingerprint() };
    let (server, cell_name, token_key, admins, servers) = match session.call_ok(&req).await? {
        proto::Response::Joined { server, cell, token_key, admins, servers } => {
            (server, cell, token_key, admins, servers)
        }
        other => bail!("unexpected answer to JoinCell: {other:?}"),
    };
    session.close();
    write_private(&dir.identity(), identity.to_pem().as_bytes())?;
    write_private(&dir.token_key(), token_key.as_bytes())?;
    Store::open(&dir.store(), server)?;
    let cell_file = CellFile {
        cell: cell_name.clone(),
        servers: servers
            .iter()
            .map(|s| CellServer { id: s.id.0, address: s.address.clone(), fingerprint: s.fingerprint.clone() })
            .collect(),
    };
    std::fs::write(dir.cell_file(), cell_file.to_toml())
        .with_context(|| format!("writing {}", dir.cell_file().display()))?;
    ServerConfig {
        cell: cell_name,
        server_id: server.0,
        listen: listen.to_string(),
        admins,
        token_lifetime_secs: 25 * 3600,
        database: false,
        cell_db: None,
        permit_lease_secs: None,
    }
    .save(&dir)?;
    Ok(Initialized {
        cell_file: dir.cell_file(),
        admin_cred: admin_cred.to_path_buf(),
        admin_user: String::new(),
        admin_password: std::path::PathBuf::new(),
    })
}

/// `vice init --join CELLFILE --cell-db etcd://...`: adds this server to a cell whose database
/// is on etcd. Everything a server of the cell needs (its name, token key, administrators, the
/// other servers) is in the cell database, so no other server needs to be up.
pub fn join_cell_db(cell_file: &Path, data: &Path, listen: &str, cell_db: &str) -> Result<Initialized> {
    listen.parse::<std::net::SocketAddr>().with_context(|| format!("--listen {listen:?} is not IP:PORT"))?;
    let location = location(Some(cell_db))?;
    if location == Location::Embedded {
        bail!("--join with --cell-db needs an etcd:// cell database");
    }
    let dir = DataDir::new(data);
    if dir.config().exists() {
        bail!("{} already holds a server (server.toml exists); refusing to overwrite it", data.display());
    }
    let cell = CellFile::load(cell_file)?;
    let db = connect(&location, &cell.cell, &dir)?;
    let registry = Registry::new(db);
    let secrets = registry.cell()?.with_context(|| format!("{cell_db} holds no cell {}", cell.cell))?;
    if secrets.cell != cell.cell {
        bail!("{cell_db} holds cell {}, not {}", secrets.cell, cell.cell);
    }
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let identity = Identity::generate(proto::tls::SERVER_NAME)?;
    if let Some(s) = registry.servers()?.iter().find(|s| s.address == listen) {
        bail!("server {} at {listen} is already in the cell", s.id);
    }
    let server = registry.allocate_server_id()?;
    registry.register_server(&ServerInfo {
        id: server,
        address: listen.to_string(),
        fingerprint: identity.fingerprint(),
    })?;
    write_private(&dir.identity(), identity.to_pem().as_bytes())?;
    write_private(&dir.token_key(), secrets.token_key.as_bytes())?;
    Store::open(&dir.store(), server)?;
    write_cell_file(&dir, &secrets.cell, &registry.servers()?)?;
    ServerConfig {
        cell: secrets.cell,
        server_id: server.0,
        listen: listen.to_string(),
        admins: secrets.admins,
        token_lifetime_secs: 25 * 3600,
        database: true,
        cell_db: cell_db_setting(&location),
        permit_lease_secs: None,
    }
    .save(&dir)?;
    Ok(Initialized {
        cell_file: dir.cell_file(),
        admin_cred: std::path::PathBuf::new(),
        admin_user: String::new(),
        admin_password: std::path::PathBuf::new(),
    })
}

fn write_cell_file(dir: &DataDir, cell: &str, servers: &[ServerInfo]) -> Result<()> {
    let cell_file = CellFile {
        cell: cell.to_string(),
        servers: servers
            .iter()
            .map(|s| CellServer { id: s.id.0, address: s.address.clone(), fingerprint: s.fingerprint.clone() })
            .collect(),
    };
    std::fs::write(dir.cell_file(), cell_file.to_toml())
        .with_context(|| format!("writing {}", dir.cell_file().display()))
}

/// `vice migrate-cell-db --data DIR --to etcd://...`, with the server stopped. On the cell's
/// database server: copies the embedded cell database into etcd (which must hold nothing under
/// the cell's prefix), reads it back and compares every key, and switches this server to it;
/// the SQLite file is kept as `cell.sqlite.migrated`. On a server that joined: checks that the
/// cell is on etcd now and switches to it (it then answers location and login requests too).
/// The number of keys copied.
pub fn migrate_cell_db(data: &Path, to: &str) -> Result<usize> {
    let dir = DataDir::new(data);
    let mut config = ServerConfig::load(&dir)?;
    if let Some(db) = &config.cell_db {
        bail!("this server's cell database is {db} already");
    }
    let location = location(Some(to))?;
    if location == Location::Embedded {
        bail!("--to names an etcd:// cell database");
    }
    let target = connect(&location, &config.cell, &dir)?;
    let copied = if config.database {
        let source = config.open_cell_db(&dir)?;
        let n = celldb::legacy::copy_all(&*source, &*target).context("copying the cell database")?;
        drop(source);
        for suffix in ["", "-wal", "-shm"] {
            let from = std::path::PathBuf::from(format!("{}{suffix}", dir.cell_db().display()));
            if from.exists() {
                std::fs::rename(&from, format!("{}.migrated{suffix}", dir.cell_db().display()))?;
            }
        }
        n
    } else {
        match Registry::new(target.clone()).cell()? {
            Some(s) if s.cell == config.cell => 0,
            Some(s) => bail!("{to} holds cell {}, not {}", s.cell, config.cell),
            None => bail!("{to} holds no cell {} yet: migrate the cell's database server first", config.cell),
        }
    };
    config.cell_db = cell_db_setting(&location);
    config.database = true;
    config.save(&dir)?;
    Ok(copied)
}
