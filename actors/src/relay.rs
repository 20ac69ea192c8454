//! What a stream actor sends towards the client, and the routes it may call.
//!
//! These are domain events, not wire bytes: the HTTP and WebSocket edges turn
//! them into SSE frames or JSON messages. Nothing here knows about HTTP.

use std::sync::Arc;
use std::time::Duration;

use tokun_providers::{
    Adapter, ChatCompletion, ChatCompletionChunk, EmbeddingResponse, ProviderError, Usage,
};
use tokun_storage::Nanos;

use crate::account::AccountError;

/// One upstream route a model may be served by, tried in configured order.
#[derive(Debug, Clone)]
pub struct Route {
    /// The configured provider name (for logs, metrics, `x-tokun-route`).
    pub provider: Arc<str>,
    /// The model name sent upstream.
    pub upstream_model: Arc<str>,
    /// Where this route stands among the model's configured routes (0 is
    /// the first): the request log's `route`.
    pub position: u32,
    pub adapter: Adapter,
    pub timeouts: Timeouts,
    /// The provider actor that grants permits for this route (limits, circuit).
    pub limiter: Option<crate::provider::ProviderHandle>,
}

/// Watchdog limits for one route.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From sending the request until the first chunk (or the whole non-streaming body).
    pub first_byte: Duration,
    /// Longest silence between two chunks once streaming.
    pub idle: Duration,
    /// Longest a whole request may take.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    }
}

/// Whether a settlement came from the upstream's own usage or from tokun's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The upstream reported usage; this is what is billed.
    Exact,
    /// The upstream never reported usage (drop, disconnect, cancel before the end);
    /// tokun counted what was relayed.
    Estimated,
}

/// How a request ended, as billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub usage: Usage,
    pub source: UsageSource,
    /// Zero while billing is off.
    pub cost: Nanos,
    /// Balance after the settlement, when the request was billed to an account.
    pub balance: Option<Nanos>,
}

/// Why a committed stream failed (sent as one error event before the usage chunk).
#[derive(Debug, Clone)]
pub enum StreamFailure {
    Upstream(ProviderError),
}

/// Events a stream actor sends to the edge, in order.
///
/// A streamed request yields `Routed`, `Chunk`s, at most one `Failed` (only after a chunk
/// was sent), then exactly one `Finished`. A non-streaming request yields
/// `Routed` and one `Completion` (or `Embedded` for embeddings), or one `Rejected`. `Rejected` is only ever sent before any chunk:
/// the first chunk is the commit point after which the edge can no longer
/// change the HTTP status.
///
/// Every variant's payload is boxed: each stream's relay channel allocates
/// its slots up front (a block of 32 events), so the event's size is paid
/// per open stream whether or not anything is buffered.
#[derive(Debug)]
pub enum RelayEvent {
    /// Which provider serves the request, and how long the upstream part took
    /// (until its first chunk, or its whole answer); sent once, first.
    Routed {
        provider: Arc<str>,
        upstream: Duration,
    },
    Chunk(Box<ChatCompletionChunk>),
    Completion(Box<ChatCompletion>, Box<Settlement>),
    Embedded(Box<EmbeddingResponse>, Box<Settlement>),
    Rejected(Box<RequestError>),
    Failed(Box<StreamFailure>),
    Finished(Box<Settlement>),
}

/// Why a request failed before anything was sent to the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Upstream(#[from] ProviderError),
    /// The hold could not be placed (funds, limits, a disabled account, the
    /// ledger), or the settlement could not be recorded.
    #[error(transparent)]
    Account(#[from] AccountError),
}

#[cfg(test)]
mod tests {
    use super::RelayEvent;

    #[test]
    fn relay_events_stay_small() {
        // A stream's relay channel allocates 32 event slots when it is made,
        // so this size is paid per open stream (10,000 WebSocket completions
        // at 40 bytes: 12.5 MiB; at the ≈ 170 bytes of an unboxed chunk: 52 MiB).
        assert!(std::mem::size_of::<RelayEvent>() <= 40);
    }
}
