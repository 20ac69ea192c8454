//! tokun's edge: the axum HTTP/SSE API, configuration and the command line.
//! Business rules live in `tokun-actors`; wire formats in `tokun-providers`;
//! money and the ledger in `tokun-storage`.

pub mod access_log;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod corrections;
pub mod error;
pub mod hex;
pub mod inflight;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod services;
pub mod state;
pub mod stripe;
pub mod telemetry;
pub mod top;

/// Entry points for the fuzz targets in `fuzz/` (outside the workspace) that
/// are otherwise private to their modules. Not an API; nothing calls these.
#[doc(hidden)]
pub mod fuzzing {
    use tokun_providers::ChatRequest;

    use crate::api::ws::protocol::{ClientMessage, parse, peek_id};
    use crate::error::ApiError;

    /// Decodes one `/v1/ws` text frame as the socket does: the request of a
    /// `chat.completion.create`, `None` for a `cancel`, or why it was refused.
    pub fn ws_client_message(text: &str) -> Result<Option<ChatRequest>, ApiError> {
        match parse(text) {
            Ok(ClientMessage::Create { request, .. }) => Ok(Some(request)),
            Ok(ClientMessage::Cancel { .. }) => Ok(None),
            Err(refused) => Err(refused.error),
        }
    }

    /// The `id` the socket reads from a frame it will not decode further.
    pub fn ws_peek_id(text: &str) -> Option<String> {
        peek_id(text)
    }
}
