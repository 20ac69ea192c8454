//! Upstream wire formats: building requests, parsing responses and SSE streams,
//! and counting tokens. Knows nothing of actors, accounts, storage or the HTTP
//! server; everything it returns is in OpenAI's shapes (see [`types`]).

pub mod anthropic;
pub mod clock;
pub mod echo;
pub mod embeddings;
pub mod error;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod ratelimit;
pub mod tokens;
pub mod types;

use std::pin::Pin;

use futures_util::Stream;

pub use anthropic::AnthropicAdapter;
pub use embeddings::{EmbeddingInput, EmbeddingRequest, EmbeddingResponse};
pub use error::{ErrorSource, ProviderError, TimeoutPhase};
pub use gemini::GeminiAdapter;
pub use ratelimit::{RateLimits, Reply};
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
    Anthropic(anthropic::AnthropicAdapter),
    Gemini(gemini::GeminiAdapter),
    Echo(echo::EchoAdapter),
}

impl Adapter {
    /// A non-streaming completion. `request.model` is already the upstream's
    /// model name. The reply carries the rate limits the upstream reported.
    pub async fn complete(
        &self,
        request: &ChatRequest,
    ) -> Result<Reply<ChatCompletion>, ProviderError> {
        match self {
            Adapter::OpenAi(adapter) => adapter.complete(request).await,
            Adapter::Anthropic(adapter) => adapter.complete(request).await,
            // Gemini reports no rate limits in headers; the echo provider has none.
            Adapter::Gemini(adapter) => adapter.complete(request).await.map(Reply::unlimited),
            Adapter::Echo(adapter) => adapter.complete(request).await.map(Reply::unlimited),
        }
    }

    /// Starts a streamed completion; resolves once the upstream accepted the request.
    /// The adapter always asks the upstream for the final usage chunk.
    pub async fn stream(&self, request: &ChatRequest) -> Result<Reply<ChunkStream>, ProviderError> {
        match self {
            Adapter::OpenAi(adapter) => adapter.stream(request).await,
            Adapter::Anthropic(adapter) => adapter.stream(request).await,
            Adapter::Gemini(adapter) => adapter.stream(request).await.map(Reply::unlimited),
            Adapter::Echo(adapter) => adapter.stream(request).await.map(Reply::unlimited),
        }
    }

    /// Embeddings for `request.input`; `request.model` is already the upstream's
    /// model name. Usage is always filled: from the upstream when it reports
    /// it, else counted with o200k. Anthropic has no embeddings endpoint.
    pub async fn embed(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, ProviderError> {
        match self {
            Adapter::OpenAi(adapter) => adapter.embed(request).await,
            Adapter::Anthropic(_) => Err(ProviderError::Request {
                detail: "anthropic has no embeddings endpoint".to_owned(),
            }),
            Adapter::Gemini(adapter) => adapter.embed(request).await,
            Adapter::Echo(_) => embeddings::echo(request),
        }
    }

    /// Whether this wire format has an embeddings endpoint (Anthropic has none).
    pub fn can_embed(&self) -> bool {
        !matches!(self, Adapter::Anthropic(_))
    }

    /// A short name of the wire format, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Adapter::OpenAi(_) => "openai",
            Adapter::Anthropic(_) => "anthropic",
            Adapter::Gemini(_) => "gemini",
            Adapter::Echo(_) => "echo",
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/` (outside the workspace):
/// the request builders and non-streaming body parsers, which are otherwise
/// private to their adapters. Not an API; nothing in tokun calls these.
#[doc(hidden)]
pub mod fuzzing {
    use reqwest::header::{HeaderMap, HeaderValue};

    use crate::{ChatCompletion, ChatRequest, ProviderError};

    /// The OpenAI request body, streaming or not.
    pub fn openai_request(req: &ChatRequest, stream: bool) -> Result<Vec<u8>, ProviderError> {
        let mode = if stream {
            crate::openai::request::Mode::Stream
        } else {
            crate::openai::request::Mode::Complete
        };
        crate::openai::request::encode(req, mode)
    }

    /// The Anthropic Messages request body, streaming or not.
    pub fn anthropic_request(req: &ChatRequest, stream: bool) -> Result<Vec<u8>, ProviderError> {
        crate::anthropic::request::encode(req, stream)
    }

    /// The Gemini `generateContent` request body.
    pub fn gemini_request(req: &ChatRequest) -> Result<Vec<u8>, ProviderError> {
        crate::gemini::request::encode(req)
    }

    /// A 2xx non-streaming OpenAI body.
    pub fn openai_completion(body: &[u8]) -> Result<ChatCompletion, ProviderError> {
        crate::openai::response::parse_completion(body)
    }

    /// A 2xx non-streaming Anthropic body, and the error for it in place of a stream.
    pub fn anthropic_completion(
        body: &[u8],
        model: &str,
    ) -> (Result<ChatCompletion, ProviderError>, ProviderError) {
        (
            crate::anthropic::response::parse_completion(body, model),
            crate::anthropic::response::json_instead_of_stream(body),
        )
    }

    /// A 2xx non-streaming Gemini body, and the error for it in place of a stream.
    pub fn gemini_completion(
        body: &[u8],
        model: &str,
    ) -> (Result<ChatCompletion, ProviderError>, ProviderError) {
        (
            crate::gemini::response::parse_completion(body, model),
            crate::gemini::response::json_instead_of_stream(body),
        )
    }

    /// The error for a non-2xx answer with this body and a `retry-after`
    /// (or, with `in_ms`, `retry-after-ms`) header, as the OpenAI and
    /// Anthropic adapters classify it, or with `gemini` as Gemini's does.
    pub fn status_error(
        gemini: bool,
        status: u16,
        retry_after: &[u8],
        in_ms: bool,
        body: &[u8],
        key: &str,
    ) -> ProviderError {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(retry_after) {
            let name = if in_ms {
                "retry-after-ms"
            } else {
                "retry-after"
            };
            headers.insert(name, value);
        }
        if gemini {
            crate::gemini::error::status_error(status, &headers, body, Some(key))
        } else {
            crate::openai::response::status_error(status, &headers, body, Some(key))
        }
    }
}
