//! tokun's edge: the axum HTTP/SSE API, configuration and the command line.
//! Business rules live in `tokun-actors`; wire formats in `tokun-providers`;
//! money and the ledger in `tokun-storage`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod inflight;
pub mod metrics;
pub mod server;
pub mod services;
pub mod state;
pub mod stripe;
pub mod telemetry;
pub mod top;
