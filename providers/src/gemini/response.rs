//! Gemini answers → OpenAI shapes: the `GenerateContentResponse` wire types
//! shared with the stream translator, parts → text / reasoning / tool calls,
//! finish-reason and usage mapping, and non-streaming bodies. Status codes are
//! classified in `error.rs`; this module only reads 2xx bodies.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ProviderError;
use crate::openai::response::{truncate, upstream_error_message};
use crate::types::{ChatCompletion, Choice, PromptTokensDetails, Usage};

/// One `GenerateContentResponse` (a whole answer, or one stream chunk).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireResponse {
    #[serde(default)]
    pub candidates: Vec<WireCandidate>,
    #[serde(default)]
    pub usage_metadata: Option<WireUsage>,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireCandidate {
    #[serde(default)]
    pub content: Option<WireContent>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub index: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireContent {
    #[serde(default)]
    pub parts: Vec<WirePart>,
}

/// A part; kinds tokun does not translate (inline data, executable code, …)
/// have none of these fields and are skipped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WirePart {
    #[serde(default)]
    pub text: Option<String>,
    /// A thought summary rather than answer text.
    #[serde(default)]
    pub thought: bool,
    #[serde(default)]
    pub function_call: Option<WireFunctionCall>,
    #[serde(default)]
    pub thought_signature: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireFunctionCall {
    pub name: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub id: Option<String>,
}

/// `usageMetadata`. Gemini repeats it, cumulatively, on stream chunks.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireUsage {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
}

impl WireUsage {
    /// OpenAI usage: tool-use prompts are prompt tokens and thoughts are
    /// completion tokens (Gemini bills both so); cached content, already part
    /// of the prompt count, is also reported as `cached_tokens`.
    pub fn to_openai(self) -> Usage {
        let prompt = self.prompt_token_count + self.tool_use_prompt_token_count;
        let completion = self.candidates_token_count + self.thoughts_token_count;
        let mut usage = Usage::new(prompt, completion);
        if self.cached_content_token_count > 0 {
            usage.prompt_tokens_details = Some(PromptTokensDetails {
                cached_tokens: self.cached_content_token_count,
            });
        }
        usage
    }
}

/// What a candidate's parts say in OpenAI terms.
#[derive(Debug, Default)]
pub(super) struct Translated {
    pub text: String,
    pub reasoning: String,
    pub calls: Vec<Value>,
}

/// Translates `parts`; tool calls are numbered from `first_call` and, for
/// stream deltas (`with_index`), carry that number as `index`.
pub(super) fn translate_parts(parts: &[WirePart], first_call: u32, with_index: bool) -> Translated {
    let mut out = Translated::default();
    for part in parts {
        if let Some(call) = &part.function_call {
            let position =
                first_call.saturating_add(u32::try_from(out.calls.len()).unwrap_or(u32::MAX));
            let mut value = tool_call(call, part.thought_signature.as_deref(), position);
            if with_index {
                value["index"] = json!(position);
            }
            out.calls.push(value);
        } else if let Some(text) = &part.text {
            let target = if part.thought {
                &mut out.reasoning
            } else {
                &mut out.text
            };
            target.push_str(text);
        }
    }
    out
}

/// Gemini's `finishReason` as an OpenAI `finish_reason`; a normal stop after
/// function calls is `tool_calls`.
pub(super) fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => "content_filter",
        _ if called_tools => "tool_calls",
        // `STOP`, `LANGUAGE`, `OTHER`, `MALFORMED_FUNCTION_CALL` and reasons added later.
        _ => "stop",
    }
}

/// Parses a 2xx non-streaming body into a completion for `model` (the
/// request's model). An error envelope with a 2xx status is the upstream's
/// failure (`Stream`); anything else that is not an answer is `Protocol`.
pub(crate) fn parse_completion(body: &[u8], model: &str) -> Result<ChatCompletion, ProviderError> {
    let text = String::from_utf8_lossy(body);
    // A bare `"error"` can only be a key (strings escape their quotes), so the
    // envelope is looked for only then, keeping the common path to one parse.
    if text.contains("\"error\"") {
        if let Some(message) = upstream_error_message(&text) {
            return Err(ProviderError::Stream { message });
        }
    }
    let answer: WireResponse = serde_json::from_slice(body).map_err(|err| {
        let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
        ProviderError::Protocol {
            detail: format!("invalid answer body ({err}): {}", truncate(&collapsed, 120)),
        }
    })?;
    let mut choices: Vec<Choice> = answer.candidates.iter().enumerate().map(choice).collect();
    if choices.is_empty() {
        // No candidates: the prompt itself was blocked (or nothing came back).
        let blocked = answer
            .prompt_feedback
            .and_then(|f| f.block_reason)
            .is_some();
        let finish = if blocked { "content_filter" } else { "stop" };
        choices.push(Choice {
            index: 0,
            message: json!({"role": "assistant", "content": null, "refusal": null}),
            logprobs: None,
            finish_reason: Some(finish.to_owned()),
        });
    }
    Ok(ChatCompletion {
        id: answer.response_id.unwrap_or_else(generated_id),
        object: "chat.completion".to_owned(),
        created: crate::clock::unix_seconds(),
        model: model.to_owned(),
        choices,
        usage: answer.usage_metadata.map(WireUsage::to_openai),
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

/// An id for answers Gemini gave none (older API versions send no `responseId`).
pub(super) fn generated_id() -> String {
    let nanos = crate::clock::unix_nanos();
    format!("chatcmpl-gemini-{nanos:x}")
}

fn choice((position, candidate): (usize, &WireCandidate)) -> Choice {
    let parts = candidate.content.as_ref().map_or(&[][..], |c| &c.parts[..]);
    let translated = translate_parts(parts, 0, false);
    let called = !translated.calls.is_empty();
    let content = (!translated.text.is_empty() || !called).then_some(translated.text);
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if called {
        message["tool_calls"] = Value::Array(translated.calls);
    }
    if !translated.reasoning.is_empty() {
        message["reasoning_content"] = json!(translated.reasoning);
    }
    let reason = candidate.finish_reason.as_deref().unwrap_or("STOP");
    Choice {
        index: candidate
            .index
            .unwrap_or(u32::try_from(position).unwrap_or(u32::MAX)),
        message,
        logprobs: None,
        finish_reason: Some(finish_reason(reason, called).to_owned()),
    }
}

/// One function call as an OpenAI tool call: `arguments` as a JSON string, id
/// `call_{position}` unless Gemini gave one. A thought signature travels in
/// `extra_content.google.thought_signature` (where Google's own
/// OpenAI-compatible endpoint puts it), so clients that echo tool calls back
/// return it, as Gemini 3 requires.
fn tool_call(call: &WireFunctionCall, signature: Option<&str>, position: u32) -> Value {
    let arguments = match &call.args {
        Some(args) if !args.is_null() => args.to_string(),
        _ => "{}".to_owned(),
    };
    let id = call
        .id
        .clone()
        .unwrap_or_else(|| format!("call_{position}"));
    let mut value = json!({
        "id": id, "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    });
    if let Some(signature) = signature {
        value["extra_content"] = json!({"google": {"thought_signature": signature}});
    }
    value
}
