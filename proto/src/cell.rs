//! The cell file: what a client or admin needs to reach a cell.
//!
//! ```toml
//! cell = "example.org"
//!
//! [[servers]]
//! id = 1
//! address = "127.0.0.1:7000"
//! fingerprint = "b3:…"
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::ids::ServerId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellFile {
    pub cell: String,
    pub servers: Vec<CellServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellServer {
    pub id: u32,
    pub address: String,
    pub fingerprint: String,
}

impl CellServer {
    pub fn server_id(&self) -> ServerId {
        ServerId(self.id)
    }
}

/// Cell names look like DNS names: lower-case letters, digits, `.` and `-`.
pub fn validate_cell_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !name.starts_with(['.', '-']);
    if ok { Ok(()) } else { Err(format!("cell name {name:?}: use lower-case letters, digits, '.' and '-'")) }
}

impl CellFile {
    pub fn parse(text: &str, path: &str) -> Result<Self, ProtoError> {
        let bad = |reason: String| ProtoError::CellFile { path: path.to_string(), reason };
        let cell: CellFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        validate_cell_name(&cell.cell).map_err(bad)?;
        if cell.servers.is_empty() {
            return Err(bad("lists no servers".into()));
        }
        for s in &cell.servers {
            if s.address.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(format!("server {}: address {:?} is not IP:PORT", s.id, s.address)));
            }
            if !s.fingerprint.starts_with("b3:") || s.fingerprint.len() != 67 {
                return Err(bad(format!("server {}: fingerprint {:?} is not b3:<64 hex digits>", s.id, s.fingerprint)));
            }
        }
        Ok(cell)
    }

    pub fn load(path: &Path) -> Result<Self, ProtoError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProtoError::CellFile { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    pub fn server(&self, id: ServerId) -> Option<&CellServer> {
        self.servers.iter().find(|s| s.id == id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CellFile {
        CellFile {
            cell: "example.org".into(),
            servers: vec![CellServer {
                id: 1,
                address: "127.0.0.1:7000".into(),
                fingerprint: format!("b3:{}", "a".repeat(64)),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(CellFile::parse(&c.to_toml(), "t").unwrap(), c);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let mut c = sample();
        c.servers[0].address = "nowhere".into();
        assert!(CellFile::parse(&c.to_toml(), "t").unwrap_err().to_string().contains("not IP:PORT"));
        let mut c = sample();
        c.servers[0].fingerprint = "sha1:00".into();
        assert!(CellFile::parse(&c.to_toml(), "t").unwrap_err().to_string().contains("fingerprint"));
        let mut c = sample();
        c.cell = "Bad Cell".into();
        assert!(CellFile::parse(&c.to_toml(), "t").is_err());
        assert!(CellFile::parse("cell = ", "t").unwrap_err().to_string().contains("cell file t"));
    }
}
