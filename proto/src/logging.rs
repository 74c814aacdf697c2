//! The logging of the programs (`vice`, `venus`): one set-up, so they all log alike. Events go
//! to stderr, filtered by `RUST_LOG` (`info` when unset or unreadable), in colour only on a
//! terminal. Behind the `logging` feature, which only crates with programs enable: the libraries
//! emit `tracing` events and never choose where they go.

/// Installs the global subscriber. Call it once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
