//! A server's configuration and the layout of its data directory.
//!
//! ```text
//! DIR/server.toml    this file: cell, server id, listen address, admin fingerprints
//! DIR/server.pem     the server's certificate and private key (owner-only)
//! DIR/cell.toml      the cell file to give to clients and admins
//! DIR/admin.cred     the first admin credential (owner-only; copy it to admins' machines)
//! DIR/admin.password the password of the first administrator user (owner-only)
//! DIR/cell.key       the cell's token key (owner-only; the same on every server of the cell)
//! DIR/cell.sqlite    the embedded cell database: volume locations, users and groups, servers,
//!                    admin locks (cells made before it had vldb.sqlite and pts.sqlite: they are
//!                    imported into it once, and kept as *.sqlite.imported)
//! DIR/store/         the volume store: volumes.sqlite and chunks/
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use volumes::CellDb;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerConfig {
    pub cell: String,
    pub server_id: u32,
    pub listen: String,
    /// Fingerprints of client certificates allowed to administer the cell.
    pub admins: Vec<String>,
    /// How long a token lasts when the client does not ask for less (AFS's default: 25 hours).
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u32,
    /// Whether this server holds the cell's databases (the location and protection databases):
    /// the server `vice init` made. Servers that joined hold volumes only.
    #[serde(default = "yes")]
    pub database: bool,
    /// Where the cell database is when it is not the embedded SQLite: `etcd://HOST:PORT,...`.
    /// Every server of such a cell answers location and login requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_db: Option<String>,
    /// How long a write-back permit lasts unrenewed (0: no permits); see `vice::permits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_lease_secs: Option<u32>,
}

fn yes() -> bool {
    true
}

fn default_token_lifetime() -> u32 {
    25 * 3600
}

pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        DataDir { root: root.to_path_buf() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("server.toml")
    }
    pub fn identity(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn cell_file(&self) -> PathBuf {
        self.root.join("cell.toml")
    }
    pub fn admin_cred(&self) -> PathBuf {
        self.root.join("admin.cred")
    }
    pub fn admin_password(&self) -> PathBuf {
        self.root.join("admin.password")
    }
    pub fn token_key(&self) -> PathBuf {
        self.root.join("cell.key")
    }
    pub fn cell_db(&self) -> PathBuf {
        self.root.join("cell.sqlite")
    }
    /// The protection database of a cell made before the cell database (imported from).
    pub fn old_pts(&self) -> PathBuf {
        self.root.join("pts.sqlite")
    }
    /// The location database of a cell made before the cell database (imported from).
    pub fn old_vldb(&self) -> PathBuf {
        self.root.join("vldb.sqlite")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
}

impl ServerConfig {
    /// Opens this server's cell database: etcd, the embedded SQLite (importing a cell made
    /// before it), or, for a server that joined a cell whose database is the first server's
    /// SQLite, [`Elsewhere`](volumes::celldb::Elsewhere). Blocks: call it off the async threads.
    pub fn open_cell_db(&self, dir: &DataDir) -> Result<std::sync::Arc<dyn CellDb>> {
        use volumes::celldb::{self, Location};
        let location = match &self.cell_db {
            Some(text) => Location::parse(text).map_err(anyhow::Error::msg).context("cell_db in server.toml")?,
            None => Location::Embedded,
        };
        match location {
            Location::Embedded if !self.database => Ok(std::sync::Arc::new(celldb::Elsewhere)),
            Location::Embedded => {
                let db = celldb::SqliteCellDb::open(&dir.cell_db()).context("opening the cell database")?;
                celldb::legacy::import_old_files(&dir.old_vldb(), &dir.old_pts(), &db)
                    .context("importing the old location and protection databases")?;
                Ok(std::sync::Arc::new(db))
            }
            etcd => celldb::open(&etcd, &self.cell, &dir.cell_db())
                .with_context(|| format!("connecting to the cell database {}", etcd.to_text())),
        }
    }

    pub fn load(dir: &DataDir) -> Result<Self> {
        let path = dir.config();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is this a directory made by `vice init`?)", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self, dir: &DataDir) -> Result<()> {
        let text = toml::to_string(self).context("encoding server.toml")?;
        write_private(&dir.config(), text.as_bytes())
    }
}

/// Writes a file readable by its owner only, atomically (temporary file, fsync, rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
