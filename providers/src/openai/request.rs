//! Building the upstream request body and headers from a [`ChatRequest`]. It
//! decides only the streaming fields; every other parameter is relayed as is.

use reqwest::header::HeaderValue;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::error::ProviderError;
use crate::types::ChatRequest;

/// Keys tokun writes itself; copies of them in `extra` are not relayed twice.
const OWN_KEYS: [&str; 6] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
];

/// Whether the upstream should stream its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `stream` and `stream_options` are left out (OpenAI rejects
    /// `stream_options` on a non-streaming request).
    Complete,
    /// `stream: true` and `stream_options.include_usage: true`, keeping any
    /// other `stream_options` the client sent.
    Stream,
}

/// The JSON body for `POST {base}/chat/completions`.
pub(crate) fn encode(request: &ChatRequest, mode: Mode) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(&UpstreamBody { request, mode }).map_err(|err| ProviderError::Request {
        detail: format!("could not encode the request body: {err}"),
    })
}

/// `Bearer {key}`, marked sensitive so it never shows in debug output.
/// `None` if the key cannot be an HTTP header value.
pub(super) fn bearer(api_key: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {api_key}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Serializes the request without cloning it: the messages may be large.
struct UpstreamBody<'a> {
    request: &'a ChatRequest,
    mode: Mode,
}

/// `stream_options` with `include_usage` forced on.
struct StreamOptionsOut<'a> {
    extra: Option<&'a Map<String, Value>>,
}

impl Serialize for UpstreamBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let request = self.request;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", &request.model)?;
        map.serialize_entry("messages", &request.messages)?;
        if self.mode == Mode::Stream {
            map.serialize_entry("stream", &true)?;
            let extra = request
                .stream_options
                .as_ref()
                .map(|options| &options.extra);
            map.serialize_entry("stream_options", &StreamOptionsOut { extra })?;
        }
        if let Some(max_tokens) = request.max_tokens {
            map.serialize_entry("max_tokens", &max_tokens)?;
        }
        if let Some(max_tokens) = request.max_completion_tokens {
            map.serialize_entry("max_completion_tokens", &max_tokens)?;
        }
        for (key, value) in &request.extra {
            if !OWN_KEYS.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

impl Serialize for StreamOptionsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("include_usage", &true)?;
        for (key, value) in self.extra.into_iter().flatten() {
            if key != "include_usage" {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}
