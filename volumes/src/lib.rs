//! The server side of storage: the volume store (SQLite metadata plus a blake3 chunk store),
//! certification and application of mutation records, space reclamation, and the cell database
//! (volume locations, users and groups, servers, admin locks: [`celldb`]). The `vos` and `pts` admin CLIs are this crate's binaries; [`admin`] is
//! what they share: finding the cell and calling its servers with the admin credential.
//!
//! Durability: a chunk is recorded only after its file is synced; a mutation commits in one
//! SQLite transaction (WAL, `synchronous=FULL`) that references recorded chunks only. A crash at
//! any moment therefore leaves every object at its old or its new version.
//!
//! A full disk never stops clients: growth is refused (`NoSpace`) below a low-water mark while
//! removals go on, and a reserve file is given up so they can commit (see [`space`]).

pub mod access;
pub mod admin;
pub mod apply;
pub mod celldb;
pub mod chunks;
mod clone;
pub mod dump;
pub mod error;
pub mod gc;
mod permits;
pub mod replicated;
mod rows;
mod schema;
pub mod space;
pub mod store;

pub use access::Caller;
pub use apply::BatchOutcome;
pub use celldb::pts::Ptdb;
pub use celldb::vldb::Vldb;
pub use celldb::{CellDb, SqliteCellDb};
pub use error::{Result, StoreError};
pub use space::{FreeSpace, Limits, SpaceGuard};
pub use store::{ChunkUpload, SmallChunk, Store};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_acl;
#[cfg(test)]
mod tests_dump;
#[cfg(test)]
mod tests_replicated;
#[cfg(test)]
mod tests_space;
