//! `vice`, the file server: it serves the volumes in its store over QUIC (file, volume and
//! location services), keeps the callback promises it gives clients, and breaks them when
//! something changes. `vice init` creates a cell; `vice serve` runs the server.

pub mod callbacks;
pub mod config;
mod handlers;
pub mod identity;
pub mod init;
pub mod liveness;
pub mod metrics;
pub mod permits;
pub mod replication;
pub mod server;
