//! The log's one error type.

/// What can go wrong with the log. Every failure is the database's or the data's: the log
/// never refuses a record (certification is the server's business).
#[derive(Debug, thiserror::Error)]
pub enum CmlError {
    #[error("modification log database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database holds something this code cannot read: a blob that does not decode, a
    /// schema from a newer version, a malformed id.
    #[error("corrupt modification log: {0}")]
    Corrupt(String),
    /// The database file itself is damaged (it fails SQLite's check).
    #[error("damaged modification log: {0}")]
    Damaged(String),
}

pub type Result<T, E = CmlError> = std::result::Result<T, E>;

pub(crate) fn corrupt<T>(what: impl Into<String>) -> Result<T> {
    Err(CmlError::Corrupt(what.into()))
}
