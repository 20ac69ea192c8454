//! Upstream wire formats: building requests, parsing responses and SSE streams,
//! and counting tokens. Knows nothing of actors, accounts, storage or the HTTP
//! server; everything it returns is in OpenAI's shapes (see [`types`]).

pub mod echo;
pub mod error;
pub mod http;
pub mod openai;
pub mod tokens;
pub mod types;

use std::pin::Pin;

use futures_util::Stream;

pub use error::{ErrorSource, ProviderError, TimeoutPhase};
pub use types::{ChatCompletion, ChatCompletionChunk, ChatRequest, Usage};

/// The chunks of one streamed completion, ending after the upstream's `[DONE]`.
pub type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<ChatCompletionChunk, ProviderError>> + Send>>;

/// One configured upstream, dispatched by wire format.
///
/// An enum rather than a trait object: the set of wire formats is closed and
/// known at compile time, and async methods stay plain.
#[derive(Debug, Clone)]
pub enum Adapter {
    OpenAi(openai::OpenAiAdapter),
    Echo(echo::EchoAdapter),
}

impl Adapter {
    /// A non-streaming completion. `request.model` is already the upstream's model name.
    pub async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        match self {
            Adapter::OpenAi(adapter) => adapter.complete(request).await,
            Adapter::Echo(adapter) => adapter.complete(request).await,
        }
    }

    /// Starts a streamed completion; resolves once the upstream accepted the request.
    /// The adapter always asks the upstream for the final usage chunk.
    pub async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        match self {
            Adapter::OpenAi(adapter) => adapter.stream(request).await,
            Adapter::Echo(adapter) => adapter.stream(request).await,
        }
    }

    /// A short name of the wire format, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Adapter::OpenAi(_) => "openai",
            Adapter::Echo(_) => "echo",
        }
    }
}
