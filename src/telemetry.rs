//! Logging setup: `tracing` to stderr, text or JSON, level from config or
//! `RUST_LOG`. Request bodies, prompts and secrets are never logged.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; keep the first subscriber.
    let _ = if log.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
