//! The protocol layer's error type.

use std::time::Duration;

use crate::msg::RemoteError;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A local failure in the middle of a request (reading what to send, writing what
    /// arrived): not the server's or the network's fault, so never a reason to think the
    /// server is gone.
    #[error("local i/o: {0}")]
    Local(std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error(
        "server {address} presented certificate {got}, but the cell file pins {expected}: \
         wrong server or wrong cell file"
    )]
    FingerprintMismatch { address: String, expected: String, got: String },
    #[error("{0}")]
    Remote(#[from] RemoteError),
    #[error("unexpected reply to {request}: {got}")]
    Unexpected { request: &'static str, got: String },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("data for chunk {index} does not match its hash")]
    HashMismatch { index: usize },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cell file {path}: {reason}")]
    CellFile { path: String, reason: String },
    #[error("credential {path}: {reason}")]
    Credential { path: String, reason: String },
}

impl ProtoError {
    /// Errors that mean "the server could not be reached or went away", as opposed to an answer.
    /// Venus uses this to decide whether to switch a volume to disconnected operation.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ProtoError::Io(_) | ProtoError::Connection(_) | ProtoError::Connect { .. } | ProtoError::Timeout(_) => true,
            ProtoError::Local(_)
            | ProtoError::FrameTooLarge { .. }
            | ProtoError::Malformed(_)
            | ProtoError::FingerprintMismatch { .. }
            | ProtoError::Remote(_)
            | ProtoError::Unexpected { .. }
            | ProtoError::HashMismatch { .. }
            | ProtoError::Tls(_)
            | ProtoError::CellFile { .. }
            | ProtoError::Credential { .. } => false,
        }
    }

    /// The server's own error, if this is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ProtoError::Remote(e) => Some(e),
            _ => None,
        }
    }
}
