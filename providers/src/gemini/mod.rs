//! The Google Gemini adapter: translates OpenAI chat requests into
//! `POST {base}/v1beta/models/{model}:generateContent` (or
//! `:streamGenerateContent?alt=sse`) and embeddings into `:batchEmbedContents`,
//! and the answers back into OpenAI shapes. The API key travels only in the
//! `x-goog-api-key` header, never in a URL, so no error or log can show it.
//! Like every adapter it applies no timeouts beyond the client's connect
//! timeout and never retries.

mod embed;
pub(crate) mod error;
pub(crate) mod request;
pub(crate) mod response;
mod stream;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use futures_util::TryStreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

pub use self::stream::parse_chunk_stream;
use crate::ChunkStream;
use crate::error::ProviderError;
use crate::openai::{is_json, response as wire};
use crate::types::{ChatCompletion, ChatRequest};

/// One Gemini upstream. Cheap to clone: the client is shared and the rest is
/// reference-counted or small.
#[derive(Clone)]
pub struct GeminiAdapter {
    /// `{base}/v1beta`, built once; model and method are appended per request.
    api_root: Arc<str>,
    auth: Auth,
    client: reqwest::Client,
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    None,
    /// The ready `x-goog-api-key` value, and the key itself to scrub it from upstream messages.
    Key {
        header: HeaderValue,
        key: Arc<str>,
    },
    /// The key has bytes no HTTP header may carry; every request fails with
    /// `Request` instead of sending without credentials.
    Invalid,
}

impl GeminiAdapter {
    /// `base_url` is like `https://generativelanguage.googleapis.com`; a base
    /// already ending in an API version (`…/v1beta`, `…/v1`) is used as is.
    /// An empty key means no `x-goog-api-key` header (for proxies that add it).
    pub fn new(base_url: &str, api_key: Option<String>, client: reqwest::Client) -> Self {
        let base = base_url.trim_end_matches('/');
        let versioned = base
            .rsplit('/')
            .next()
            .is_some_and(|last| matches!(last, "v1" | "v1beta" | "v1alpha"));
        let api_root = if versioned {
            base.to_owned()
        } else {
            format!("{base}/v1beta")
        };
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
            api_root: api_root.into(),
            auth,
            client,
        }
    }

    /// `{base}/v1beta/models/{model}:{method}`. The model must be a plain name
    /// (a `models/` prefix is accepted), so it cannot change the path or query.
    pub fn method_url(&self, model: &str, method: &str) -> Result<String, ProviderError> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if model.is_empty() || !model.chars().all(plain) {
            return Err(ProviderError::Request {
                detail: format!("{model:?} is not a Gemini model name"),
            });
        }
        Ok(format!("{}/models/{model}:{method}", self.api_root))
    }

    /// A non-streaming completion.
    pub async fn complete(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let url = self.method_url(&req.model, "generateContent")?;
        let body = request::encode(req)?;
        let answer = self.send(&url, body, "application/json").await?;
        let body = answer.bytes().await.map_err(wire::body_error)?;
        response::parse_completion(&body, &req.model)
    }

    /// Starts a streamed completion. Resolves once the upstream answered 2xx
    /// with an event stream; the returned stream then translates the body (see
    /// [`parse_chunk_stream`]) and ends with one usage chunk when Gemini
    /// reported usage.
    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let url = self.method_url(&req.model, "streamGenerateContent")? + "?alt=sse";
        let body = request::encode(req)?;
        let answer = self.send(&url, body, "text/event-stream").await?;
        if is_json(&answer) {
            // An error envelope (or a whole answer) instead of the stream asked for.
            let body = answer.bytes().await.map_err(wire::body_error)?;
            return Err(response::json_instead_of_stream(&body));
        }
        Ok(parse_chunk_stream(
            answer.bytes_stream().map_err(wire::body_error),
            &req.model,
        ))
    }

    /// Posts `body` to `url` and returns the response if its status is 2xx.
    async fn send(
        &self,
        url: &str,
        body: Vec<u8>,
        accept: &'static str,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, accept)
            .body(body);
        let key = match &self.auth {
            Auth::None => None,
            Auth::Key { header, key } => {
                builder = builder.header("x-goog-api-key", header.clone());
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
        Err(error::status_error(status, &headers, &body, key))
    }
}

impl fmt::Debug for GeminiAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Key { .. } => "x-goog-api-key (redacted)",
            Auth::Invalid => "invalid (redacted)",
        };
        f.debug_struct("GeminiAdapter")
            .field("api_root", &self.api_root)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}
