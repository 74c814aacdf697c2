//! The wire vocabulary shared by `vice` (servers) and `venus` (clients): identifiers, attributes,
//! version vectors, mutation records and the rules they follow ([`rules`]), RPC messages, framing
//! over QUIC, TLS identities and the cell file. Nothing else in the workspace defines bytes that
//! cross the network.
//!
//! Three features, off by default: `logging` (`logging::init`, the programs' one logging set-up),
//! `metrics` (`metrics::serve`, the programs' one `/metrics` endpoint) and `samples` (test data
//! for other crates' tests, enabled from `[dev-dependencies]` only).

pub mod attr;
pub mod auth;
pub mod cell;
pub mod chunk;
pub mod client;
pub mod error;
pub mod frame;
pub mod ids;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod msg;
pub mod name;
pub mod record;
pub mod rules;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod tls;
pub mod udp;
pub mod units;
pub mod version;

pub use attr::{Attr, DirEntry, NodeKind, ObjectKind, SetAttrs, Timestamp};
pub use auth::{Access, Acl, PtsId, Rights, Token};
pub use chunk::{ChunkHash, ChunkRef};
pub use error::ProtoError;
pub use ids::{ClientId, Fid, ObjectId, OpId, ServerId, VolumeId};
pub use msg::{RemoteError, Request, Response};
pub use name::Name;
pub use record::{Applied, Base, ConflictKind, Mutation, Record, RecordResult, Seen};
pub use version::{VersionVector, VolumeStamp, VvOrder};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod golden;
