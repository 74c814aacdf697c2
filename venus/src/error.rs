//! Venus's error type, and the one exhaustive mapping to errno.
//!
//! There is no catch-all arm: a new error kind cannot silently become `EIO`.

use proto::{ConflictKind, ProtoError, RemoteError};

#[derive(Debug, thiserror::Error)]
pub enum VenusError {
    /// The server refused or failed the request.
    #[error("{0}")]
    Remote(RemoteError),
    /// The server could not be reached.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// A protocol-level failure that is not a refusal (bad reply, hash mismatch).
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("local i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index: {0}")]
    Index(#[from] rusqlite::Error),
    #[error("modification log: {0}")]
    Log(#[from] cml::CmlError),
    #[error("no such file or directory")]
    NotFound,
    #[error("invalid name: {0}")]
    BadName(#[from] proto::name::NameError),
    #[error("the file is larger than the whole cache ({size} > {limit} bytes)")]
    TooLargeForCache { size: u64, limit: u64 },
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("read-only: {0}")]
    ReadOnly(&'static str),
    /// The file changed while it was being stored (it is still being written through another
    /// descriptor); it stays dirty and is stored again later.
    #[error("the file changed while it was being stored")]
    ChangedDuringStore,
    /// Disconnected, and the object is not in the cache.
    #[error("not cached, and the servers cannot be reached")]
    NotCached,
    /// One of venus's own files is damaged (a database that fails its check).
    #[error("damaged: {0}")]
    Damaged(String),
    /// The log of a volume holds another user's changes, or needs its owner's token.
    #[error("{0}")]
    LogOwner(String),
}

pub type Result<T, E = VenusError> = std::result::Result<T, E>;

impl From<ProtoError> for VenusError {
    fn from(e: ProtoError) -> Self {
        if e.is_unreachable() {
            return VenusError::Unreachable(e.to_string());
        }
        match e {
            ProtoError::Remote(r) => VenusError::Remote(r),
            // The cache's own disk (full, say): its errno is the answer.
            ProtoError::Local(e) => VenusError::Io(e),
            other => VenusError::Protocol(other.to_string()),
        }
    }
}

impl From<RemoteError> for VenusError {
    fn from(e: RemoteError) -> Self {
        VenusError::Remote(e)
    }
}

impl VenusError {
    pub fn to_errno(&self) -> i32 {
        match self {
            VenusError::Remote(r) => remote_errno(r),
            VenusError::Unreachable(_) => libc::ETIMEDOUT,
            VenusError::Protocol(_) => libc::EIO,
            VenusError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            // A database that cannot commit because the cache disk is full: the disk's errno.
            VenusError::Index(_) | VenusError::Log(_) if self.is_disk_full() => libc::ENOSPC,
            VenusError::Index(_) => libc::EIO,
            VenusError::Log(_) => libc::EIO,
            VenusError::NotFound => libc::ENOENT,
            VenusError::BadName(proto::name::NameError::TooLong(_)) => libc::ENAMETOOLONG,
            VenusError::BadName(_) => libc::EINVAL,
            VenusError::TooLargeForCache { .. } => libc::EFBIG,
            VenusError::Unsupported(_) => libc::ENOTSUP,
            VenusError::NotDirectory => libc::ENOTDIR,
            VenusError::IsDirectory => libc::EISDIR,
            VenusError::ReadOnly(_) => libc::EROFS,
            VenusError::ChangedDuringStore => libc::EAGAIN,
            VenusError::NotCached => libc::EIO,
            VenusError::LogOwner(_) => libc::EACCES,
            VenusError::Damaged(_) => libc::EIO,
        }
    }

    /// Whether this failed because the cache's disk is full (a container, or a database that
    /// could not commit): room can be made and the work tried again.
    pub fn is_disk_full(&self) -> bool {
        let sqlite_full = |e: &rusqlite::Error| matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull);
        match self {
            VenusError::Io(e) => crate::disk::is_full(e),
            VenusError::Index(e) => sqlite_full(e),
            VenusError::Log(cml::CmlError::Db(e)) => sqlite_full(e),
            _ => false,
        }
    }

    /// Whether a database of venus's is damaged (as opposed to busy, full or unreadable).
    pub fn is_damage(&self) -> bool {
        match self {
            VenusError::Damaged(_) => true,
            VenusError::Index(rusqlite::Error::SqliteFailure(f, _)) => {
                matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            }
            _ => false,
        }
    }

    /// Expected outcomes (a lookup that finds nothing) log at debug, not as warnings.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            VenusError::NotFound
                | VenusError::Remote(RemoteError::NotFound)
                | VenusError::Remote(RemoteError::Exists)
                | VenusError::Remote(RemoteError::NotEmpty)
                | VenusError::Remote(RemoteError::Conflict(ConflictKind::NameTaken { .. }))
                | VenusError::Remote(RemoteError::Conflict(ConflictKind::DirectoryNotEmpty))
        )
    }
}

fn remote_errno(r: &RemoteError) -> i32 {
    match r {
        RemoteError::NotFound => libc::ENOENT,
        RemoteError::Exists => libc::EEXIST,
        RemoteError::NotDirectory => libc::ENOTDIR,
        RemoteError::IsDirectory => libc::EISDIR,
        RemoteError::NotEmpty => libc::ENOTEMPTY,
        RemoteError::CrossVolume => libc::EXDEV,
        RemoteError::Invalid(_) => libc::EINVAL,
        RemoteError::QuotaExceeded => libc::EDQUOT,
        RemoteError::PermissionDenied => libc::EACCES,
        RemoteError::NoSuchVolume => libc::ENOENT,
        RemoteError::VolumeMoved => libc::EAGAIN,
        RemoteError::VolumeBusy => libc::EBUSY,
        RemoteError::CallbacksLost => libc::EAGAIN,
        RemoteError::TooLarge => libc::EFBIG,
        RemoteError::Conflict(c) => match c {
            ConflictKind::NameTaken { .. } => libc::EEXIST,
            ConflictKind::DirectoryNotEmpty => libc::ENOTEMPTY,
            ConflictKind::ObjectGone | ConflictKind::ParentGone => libc::ENOENT,
            ConflictKind::NameChanged | ConflictKind::VersionChanged { .. } | ConflictKind::VolumeRewound => {
                libc::ESTALE
            }
        },
        RemoteError::MissingChunks(_) => libc::EIO,
        RemoteError::NotAdmin => libc::EPERM,
        RemoteError::Protocol(_) => libc::EPROTO,
        RemoteError::Internal(_) => libc::EIO,
        RemoteError::ReadOnly => libc::EROFS,
        RemoteError::BadToken(_) | RemoteError::BadLogin => libc::EACCES,
        RemoteError::CrossDirectoryLink => libc::EXDEV,
        RemoteError::DuplicateObject => libc::EEXIST,
        RemoteError::WouldLoop => libc::EINVAL,
        RemoteError::NoSpace => libc::ENOSPC,
        RemoteError::Locked(_) => libc::EBUSY,
        RemoteError::StaleFence(_) => libc::ESTALE,
        // Only location and login need the cell database; file service goes on without it.
        RemoteError::CellDbUnavailable(_) => libc::EAGAIN,
        // Followed inside venus; seen only if no leader could be found.
        RemoteError::NotLeader(_) => libc::EAGAIN,
    }
}
