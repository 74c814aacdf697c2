//! `vice init`: creates a new cell on this server.

use std::path::Path;

use anyhow::{Context, Result, bail};
use proto::auth::{Acl, PtsId, Rights, TokenKey};
use proto::cell::{CellFile, CellServer, validate_cell_name};
use proto::msg::{ServerInfo, Site, SiteRole, VldbEntry, VolumeKind};
use proto::tls::Identity;
use volumes::{Ptdb, SqliteVldb, Store, Vldb};

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

pub fn init_cell(cell: &str, data: &Path, listen: &str, admin_user: &str) -> Result<Initialized> {
    proto::auth::validate_pts_name(admin_user).map_err(anyhow::Error::msg)?;
    validate_cell_name(cell).map_err(anyhow::Error::msg)?;
    listen.parse::<std::net::SocketAddr>().with_context(|| format!("--listen {listen:?} is not IP:PORT"))?;
    let dir = DataDir::new(data);
    if dir.config().exists() {
        bail!("{} already holds a server (server.toml exists); refusing to overwrite it", data.display());
    }
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;

    let identity = Identity::generate(proto::tls::SERVER_NAME)?;
    write_private(&dir.identity(), identity.to_pem().as_bytes())?;
    let admin = Identity::generate("admin")?;
    write_private(&dir.admin_cred(), admin.to_pem().as_bytes())?;

    write_private(&dir.token_key(), TokenKey::generate().to_hex().as_bytes())?;
    let password = random_password();
    let pts = Ptdb::open(&dir.pts())?;
    pts.create_user(admin_user, &password).context("creating the first administrator")?;
    pts.add_member(admin_user, "system:administrators")?;
    write_private(&dir.admin_password(), format!("{password}\n").as_bytes())?;

    let vldb = SqliteVldb::open(&dir.vldb())?;
    let server_id = vldb.allocate_server_id()?;
    vldb.register_server(&ServerInfo {
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
    }
    .save(&dir)?;
    Ok(Initialized {
        cell_file: dir.cell_file(),
        admin_cred: dir.admin_cred(),
        admin_user: admin_user.to_string(),
        admin_password: dir.admin_password(),
    })
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
    }
    .save(&dir)?;
    Ok(Initialized {
        cell_file: dir.cell_file(),
        admin_cred: admin_cred.to_path_buf(),
        admin_user: String::new(),
        admin_password: std::path::PathBuf::new(),
    })
}
