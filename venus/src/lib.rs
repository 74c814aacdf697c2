//! `venus`, the client cache manager: it mounts the global namespace with FUSE, caches whole
//! files on local disk, keeps the callback promises servers give it, sends every change through
//! the client modification log, and answers the `venus` command on a control socket.
//!
//! `fs` is the core (testable without a mount); `fuse` is the thin kernel adapter; `cache`,
//! `net` and `control` are its parts.

pub mod cache;
pub mod control;
pub mod counters;
pub mod disk;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod ids;
pub mod kernel;
pub mod mount;
pub mod mounts;
pub mod net;
pub mod recycle;
