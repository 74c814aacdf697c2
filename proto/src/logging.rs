//! The logging of the programs (`vice`, `venus`): one set-up, so they all log alike. Events go
//! to stderr, filtered by `RUST_LOG` ([`DEFAULT_FILTER`] when unset or unreadable), in colour only on a
//! terminal. Behind the `logging` feature, which only crates with programs enable: the libraries
//! emit `tracing` events and never choose where they go.

/// What is logged unless `RUST_LOG` says otherwise: our own events from `info` up, and the
/// consensus library's warnings only (its `info` narrates every vote and heartbeat).
pub const DEFAULT_FILTER: &str = "info,openraft=warn";

/// Installs the global subscriber. Call it once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
