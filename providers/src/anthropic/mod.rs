//! The Anthropic Messages adapter: translates OpenAI chat requests into
//! `POST {base}/v1/messages` and the answers (JSON or event stream) back into
//! [`ChatCompletion`]s and [`ChunkStream`]s. Like every adapter it applies no
//! timeouts beyond the client's connect timeout and never retries.

pub(crate) mod request;
pub(crate) mod response;
mod stream;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use futures_util::TryStreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

pub use self::request::DEFAULT_MAX_TOKENS;
pub use self::stream::parse_chunk_stream;
use crate::ChunkStream;
use crate::error::ProviderError;
use crate::openai::{is_json, response as wire};
use crate::ratelimit::{RateLimits, Reply};
use crate::types::{ChatCompletion, ChatRequest};

/// The API version tokun's translation is written against.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One Anthropic upstream. Cheap to clone: the client is shared and the rest
/// is reference-counted or small.
#[derive(Clone)]
pub struct AnthropicAdapter {
    /// `{base}/v1/messages`, built once.
    endpoint: Arc<str>,
    auth: Auth,
    client: reqwest::Client,
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    None,
    /// The ready `x-api-key` value, and the key itself to scrub it from upstream messages.
    Key {
        header: HeaderValue,
        key: Arc<str>,
    },
    /// The key has bytes no HTTP header may carry; every request fails with
    /// `Request` instead of sending without credentials.
    Invalid,
}

impl AnthropicAdapter {
    /// `base_url` is like `https://api.anthropic.com` (a trailing slash is fine).
    /// An empty key means no `x-api-key` header (for proxies that add it).
    pub fn new(base_url: &str, api_key: Option<String>, client: reqwest::Client) -> Self {
        let endpoint = format!("{}/v1/messages", base_url.trim_end_matches('/'));
        let auth = match api_key.filter(|key| !key.is_empty()) {
            None => Auth::None,
            Some(key) => match HeaderValue::from_str(&key) {
                Ok(mut header) => {
                    header.set_sensitive(true);
                    Auth::Key {
                        header,
                        key: key.into(),
                    }
                }
                Err(_) => Auth::Invalid,
            },
        };
        Self {
            endpoint: endpoint.into(),
            auth,
            client,
        }
    }

    /// The URL requests are posted to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A non-streaming completion (`stream` is not sent, whatever `req` says).
    pub async fn complete(
        &self,
        req: &ChatRequest,
    ) -> Result<Reply<ChatCompletion>, ProviderError> {
        let body = request::encode(req, false)?;
        let answer = self.send(body, "application/json").await?;
        let limits = RateLimits::from_headers(answer.headers());
        let body = answer.bytes().await.map_err(wire::body_error)?;
        Ok(Reply {
            body: response::parse_completion(&body, &req.model)?,
            limits,
        })
    }

    /// Starts a streamed completion. Resolves once the upstream answered 2xx
    /// with an event stream; the returned stream then translates the body (see
    /// [`parse_chunk_stream`]) and always ends with a usage chunk when the
    /// upstream reported usage.
    pub async fn stream(&self, req: &ChatRequest) -> Result<Reply<ChunkStream>, ProviderError> {
        let body = request::encode(req, true)?;
        let answer = self.send(body, "text/event-stream").await?;
        let limits = RateLimits::from_headers(answer.headers());
        if is_json(&answer) {
            // An error envelope (or a whole message) instead of the stream asked for.
            let body = answer.bytes().await.map_err(wire::body_error)?;
            return Err(response::json_instead_of_stream(&body));
        }
        Ok(Reply {
            body: parse_chunk_stream(answer.bytes_stream().map_err(wire::body_error), &req.model),
            limits,
        })
    }

    /// Posts `body` and returns the response if its status is 2xx.
    async fn send(
        &self,
        body: Vec<u8>,
        accept: &'static str,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self
            .client
            .post(&*self.endpoint)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, accept)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .body(body);
        let key = match &self.auth {
            Auth::None => None,
            Auth::Key { header, key } => {
                builder = builder.header("x-api-key", header.clone());
                Some(&**key)
            }
            Auth::Invalid => {
                return Err(ProviderError::Request {
                    detail: "the API key is not a valid HTTP header value".to_owned(),
                });
            }
        };
        let answer = builder.send().await.map_err(wire::send_error)?;
        if answer.status().is_success() {
            return Ok(answer);
        }
        let (status, headers, body) = wire::read_error_body(answer).await;
        // Anthropic's envelope (`{"type":"error","error":{"type","message"}}`)
        // carries `error.message`, which the shared classifier reads; 529
        // (overloaded) is a 5xx and so retryable.
        Err(wire::status_error(status, &headers, &body, key))
    }
}

impl fmt::Debug for AnthropicAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Key { .. } => "x-api-key (redacted)",
            Auth::Invalid => "invalid (redacted)",
        };
        f.debug_struct("AnthropicAdapter")
            .field("endpoint", &self.endpoint)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}
