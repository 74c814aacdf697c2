//! The server side of storage: the volume store (SQLite metadata plus a blake3 chunk store),
//! certification and application of mutation records, space reclamation, and the volume
//! location database. The `vos` admin CLI is this crate's binary.
//!
//! Durability: a chunk is recorded only after its file is synced; a mutation commits in one
//! SQLite transaction (WAL, `synchronous=FULL`) that references recorded chunks only. A crash at
//! any moment therefore leaves every object at its old or its new version.

pub mod access;
pub mod apply;
pub mod chunks;
mod clone;
pub mod dump;
pub mod error;
pub mod gc;
pub mod pts;
mod rows;
mod schema;
pub mod store;
pub mod vldb;

pub use access::Caller;
pub use apply::BatchOutcome;
pub use error::{Result, StoreError};
pub use pts::Ptdb;
pub use store::{ChunkUpload, SmallChunk, Store};
pub use vldb::{NoVldb, SqliteVldb, Vldb};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_acl;
#[cfg(test)]
mod tests_dump;
