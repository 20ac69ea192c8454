//! The OpenAI-compatible adapter (OpenAI, vLLM, Ollama, any compatible base
//! URL): sends `POST {base}/chat/completions` and turns the answer into
//! [`ChatCompletion`]s or a [`ChunkStream`]. It applies no timeouts beyond the
//! client's connect timeout and never retries; callers own both.

mod embeddings;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use futures_util::TryStreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use self::request::Mode;
pub use self::stream::parse_chunk_stream;
use crate::ChunkStream;
use crate::error::ProviderError;
use crate::ratelimit::{RateLimits, Reply};
use crate::types::{ChatCompletion, ChatRequest};

/// One OpenAI-compatible upstream. Cheap to clone: the client is shared and the
/// rest is reference-counted or small.
#[derive(Clone)]
pub struct OpenAiAdapter {
    /// `{base}/chat/completions`, built once.
    endpoint: Arc<str>,
    /// The same, parsed once (`None` if it does not parse: sending then
    /// reports the bad URL).
    url: Option<reqwest::Url>,
    auth: Auth,
    client: reqwest::Client,
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    None,
    /// The ready header, and the key itself to scrub it from upstream messages.
    Bearer {
        header: HeaderValue,
        key: Arc<str>,
    },
    /// The key has bytes no HTTP header may carry; every request fails with
    /// `Request` instead of sending without credentials.
    Invalid,
}

impl OpenAiAdapter {
    /// `base_url` is like `https://api.openai.com/v1` (a trailing slash is fine).
    /// An empty key means no `Authorization` header.
    pub fn new(base_url: &str, api_key: Option<String>, client: reqwest::Client) -> Self {
        let endpoint = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let auth = match api_key.filter(|key| !key.is_empty()) {
            None => Auth::None,
            Some(key) => match request::bearer(&key) {
                Some(header) => Auth::Bearer {
                    header,
                    key: key.into(),
                },
                None => Auth::Invalid,
            },
        };
        Self {
            url: reqwest::Url::parse(&endpoint).ok(),
            endpoint: endpoint.into(),
            auth,
            client,
        }
    }

    /// The chat endpoint, parsed once rather than per request.
    fn chat_url(&self) -> Result<reqwest::Url, ProviderError> {
        self.url.clone().ok_or_else(|| ProviderError::Request {
            detail: format!("{:?} is not a valid URL", self.endpoint),
        })
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
        let body = request::encode(req, Mode::Complete)?;
        let response = self
            .send(self.chat_url()?, body, "application/json")
            .await?;
        let limits = RateLimits::from_headers(response.headers());
        let body = response.bytes().await.map_err(response::body_error)?;
        Ok(Reply {
            body: response::parse_completion(&body)?,
            limits,
        })
    }

    /// Starts a streamed completion with the final usage chunk requested.
    /// Resolves once the upstream answered 2xx with an event stream; the
    /// returned stream then reads the body (see [`parse_chunk_stream`]).
    pub async fn stream(&self, req: &ChatRequest) -> Result<Reply<ChunkStream>, ProviderError> {
        let body = request::encode(req, Mode::Stream)?;
        let response = self
            .send(self.chat_url()?, body, "text/event-stream")
            .await?;
        let limits = RateLimits::from_headers(response.headers());
        if is_json(&response) {
            // The upstream ignored `stream: true` or reported an error with a 2xx.
            let body = response.bytes().await.map_err(response::body_error)?;
            return Err(
                match response::upstream_error_message(&String::from_utf8_lossy(&body)) {
                    Some(message) => ProviderError::Stream { message },
                    None => ProviderError::Protocol {
                        detail: "expected an event stream, got a JSON body".to_owned(),
                    },
                },
            );
        }
        Ok(Reply {
            body: parse_chunk_stream(response.bytes_stream().map_err(response::body_error)),
            limits,
        })
    }

    /// Posts `body` to `url` and returns the response if its status is 2xx.
    async fn send(
        &self,
        url: impl reqwest::IntoUrl,
        body: Vec<u8>,
        accept: &'static str,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, accept)
            .body(body);
        match &self.auth {
            Auth::None => {}
            Auth::Bearer { header, .. } => builder = builder.header(AUTHORIZATION, header.clone()),
            Auth::Invalid => {
                return Err(ProviderError::Request {
                    detail: "the API key is not a valid HTTP header value".to_owned(),
                });
            }
        }
        let response = builder.send().await.map_err(response::send_error)?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.status_error(response).await)
    }

    /// Reads (a bounded prefix of) an error body and classifies it.
    async fn status_error(&self, response: reqwest::Response) -> ProviderError {
        let (status, headers, body) = response::read_error_body(response).await;
        let key = match &self.auth {
            Auth::Bearer { key, .. } => Some(&**key),
            Auth::None | Auth::Invalid => None,
        };
        response::status_error(status, &headers, &body, key)
    }
}

impl fmt::Debug for OpenAiAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Bearer { .. } => "bearer (redacted)",
            Auth::Invalid => "invalid (redacted)",
        };
        f.debug_struct("OpenAiAdapter")
            .field("endpoint", &self.endpoint)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

pub(crate) fn is_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"))
}
