//! The store's error type: either the client's request is wrong in a way the protocol can say
//! ([`RemoteError`]), or the server itself failed (disk, database).

use proto::RemoteError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An answer for the client: not found, exists, conflict, quota...
    #[error("{0}")]
    Refused(#[from] RemoteError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The cell database cannot be reached (etcd without a quorum, or too slow).
    #[error("cell database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// What to tell the client: its own error, or an opaque internal failure. A full disk is
    /// `NoSpace` however it shows (SQLite's "database or disk is full", or `ENOSPC`), never
    /// internal: the client can act on it (remove something), and venus answers `ENOSPC`.
    pub fn to_remote(&self) -> RemoteError {
        if self.is_no_space() {
            return RemoteError::NoSpace;
        }
        match self {
            StoreError::Refused(e) => e.clone(),
            StoreError::Db(e) => RemoteError::Internal(format!("database: {e}")),
            StoreError::Io(e) => RemoteError::Internal(format!("i/o: {e}")),
            StoreError::Corrupt(e) => RemoteError::Internal(format!("corrupt store: {e}")),
            StoreError::Unavailable(e) => RemoteError::CellDbUnavailable(e.clone()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Shorthand for refusing a request.
pub(crate) fn refuse<T>(e: RemoteError) -> Result<T> {
    Err(StoreError::Refused(e))
}

/// Directory parents that never reach the root: the rows are damaged, not the request wrong.
impl From<proto::rules::Cycle> for StoreError {
    fn from(c: proto::rules::Cycle) -> Self {
        StoreError::Corrupt(c.to_string())
    }
}
