//! Anthropic answers → OpenAI shapes: the wire types shared with the stream
//! translator (content blocks, usage), stop-reason mapping, and non-streaming
//! bodies. Status codes and transport failures are classified in `mod.rs` with
//! the shared OpenAI classifier; this module only reads 2xx bodies.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ProviderError;
use crate::openai::response::{truncate, upstream_error_message};
use crate::types::{ChatCompletion, Choice, PromptTokensDetails, Usage};

/// A whole Anthropic `message` (non-streaming body, or `message_start.message`).
#[derive(Debug, Deserialize)]
pub(super) struct WireMessage {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub content: Vec<WireBlock>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: WireUsage,
}

/// The content blocks tokun translates; the rest (server tools, redacted
/// thinking, …) are skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

/// Anthropic usage. Every field is optional (and may be `null`): `message_start`
/// carries the input side, `message_delta` the running output count and,
/// on newer API versions, final input counts too.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

impl WireUsage {
    /// Takes every count `later` reports; Anthropic's counts are cumulative,
    /// so the latest value of each field is the right one.
    pub fn update(&mut self, later: &WireUsage) {
        let fields = [
            (&mut self.input_tokens, later.input_tokens),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
            (&mut self.output_tokens, later.output_tokens),
        ];
        for (field, value) in fields {
            if value.is_some() {
                *field = value;
            }
        }
    }

    /// Whether Anthropic reported any count at all (else usage is unknown, not zero).
    pub fn is_known(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some()
    }

    /// OpenAI usage: cache writes and reads are prompt tokens too (Anthropic
    /// bills them), and cache reads are also reported as `cached_tokens`.
    pub fn to_openai(self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + self.cache_creation_input_tokens.unwrap_or(0) + cached;
        let mut usage = Usage::new(prompt, self.output_tokens.unwrap_or(0));
        if cached > 0 {
            usage.prompt_tokens_details = Some(PromptTokensDetails {
                cached_tokens: cached,
            });
        }
        usage
    }
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
pub(super) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // `end_turn`, `stop_sequence`, `pause_turn` and reasons added later.
        _ => "stop",
    }
}

/// Parses a 2xx non-streaming body into a completion for `model` (the
/// request's model). An error envelope with a 2xx status is the upstream's
/// failure (`Stream`); anything else that is not a message is `Protocol`.
pub(crate) fn parse_completion(body: &[u8], model: &str) -> Result<ChatCompletion, ProviderError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| unparsable(body, &err))?;
    if value.get("type").and_then(Value::as_str) == Some("error") || value.get("error").is_some() {
        return Err(stream_error(&value.to_string()));
    }
    let message: WireMessage =
        serde_json::from_value(value).map_err(|err| unparsable(body, &err))?;
    let finish = message.stop_reason.as_deref().map(finish_reason);
    Ok(ChatCompletion {
        id: message.id.clone(),
        object: "chat.completion".to_owned(),
        created: crate::clock::unix_seconds(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: assistant_message(&message.content),
            logprobs: None,
            finish_reason: Some(finish.unwrap_or("stop").to_owned()),
        }],
        usage: message.usage.is_known().then(|| message.usage.to_openai()),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

/// The error for a JSON body where an event stream was expected.
pub(crate) fn json_instead_of_stream(body: &[u8]) -> ProviderError {
    match upstream_error_message(&String::from_utf8_lossy(body)) {
        Some(message) => ProviderError::Stream { message },
        None => ProviderError::Protocol {
            detail: "expected an event stream, got a JSON body".to_owned(),
        },
    }
}

/// The `Stream` error for an Anthropic error envelope's JSON text.
pub(super) fn stream_error(data: &str) -> ProviderError {
    ProviderError::Stream {
        message: upstream_error_message(data)
            .unwrap_or_else(|| "the upstream reported an error".to_owned()),
    }
}

/// The OpenAI assistant message for Anthropic content blocks: texts joined,
/// tool uses as `tool_calls` (arguments as a JSON string), thinking as
/// `reasoning_content`.
fn assistant_message(blocks: &[WireBlock]) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block {
            WireBlock::Text { text: piece } => text.push_str(piece),
            WireBlock::Thinking { thinking } => reasoning.push_str(thinking),
            WireBlock::ToolUse { id, name, input } => calls.push(json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments(input)},
            })),
            WireBlock::Other => {}
        }
    }
    let content = (!text.is_empty() || calls.is_empty()).then_some(text);
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    message
}

/// Tool input as OpenAI's JSON-string `arguments` (`{}` when absent).
fn arguments(input: &Value) -> String {
    if input.is_null() {
        "{}".to_owned()
    } else {
        input.to_string()
    }
}

fn unparsable(body: &[u8], err: &serde_json::Error) -> ProviderError {
    let text = String::from_utf8_lossy(body);
    if let Some(message) = upstream_error_message(&text) {
        return ProviderError::Stream { message };
    }
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    ProviderError::Protocol {
        detail: format!(
            "invalid message body ({err}): {}",
            truncate(&collapsed, 120)
        ),
    }
}
