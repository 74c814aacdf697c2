//! `venus`, the client cache manager: it mounts the global namespace with FUSE, caches whole
//! files on local disk, keeps the callback promises servers give it, sends every change through
//! the client modification log, and answers the `venus` command on a control socket.
//!
//! `fs` is the core (testable without a mount); `fuse` is the thin kernel adapter; `remote` is
//! what the core asks of the servers, which `net` does over QUIC; `cache` and `control` are its
//! other parts.

pub mod cache;
pub mod conflict;
pub mod control;
pub mod counters;
pub mod disk;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod ids;
pub mod kernel;
pub mod metrics;
pub mod mount;
pub mod mounts;
pub mod net;
pub mod recycle;
#[cfg(test)]
mod reftest;
pub mod remote;
pub mod user;
