//! Token counting with OpenAI's o200k_base encoding: counting plain text and
//! estimating a chat prompt the way OpenAI bills it. It does not know prices or
//! decide whether an estimate may stand in for upstream usage; callers do.

mod bpe;

use std::sync::LazyLock;

use serde_json::Value;

use crate::types::{ChatRequest, Message, Role};

/// Framing tokens around every message (`<|start|>role<|message|>…<|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// A `name` field costs one token on top of its text.
const TOKENS_PER_NAME: u64 = 1;
/// Tokens priming the assistant's reply (`<|start|>assistant<|message|>`).
const REPLY_PRIMING: u64 = 3;

/// The encoding, loaded once on first use (see `bpe` for why not `CoreBPE`).
///
/// A failed load stays `None`, so counting degrades to an estimate instead
/// of panicking.
static O200K: LazyLock<Option<bpe::Bpe>> = LazyLock::new(bpe::Bpe::o200k);

/// Loads the encoding now, so the first request does not pay for it.
/// Returns whether the real encoding is available (else counts are estimates).
pub fn warm_up() -> bool {
    O200K.is_some()
}

/// Tokens in `text` under o200k_base (special-token markers count as plain text).
pub fn count_text(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match O200K.as_ref() {
        Some(bpe) => bpe.count(text),
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Prompt tokens of a chat request, following OpenAI's chat-format accounting:
/// per message framing, role, name and content text; tool calls and tool
/// definitions by their JSON text; plus the reply priming.
pub fn estimate_prompt(req: &ChatRequest) -> u64 {
    let messages: u64 = req.messages.iter().map(message_tokens).sum();
    let tools = ["tools", "functions"]
        .iter()
        .filter_map(|key| req.extra.get(*key))
        .map(json_tokens)
        .sum::<u64>();
    messages + tools + REPLY_PRIMING
}

fn message_tokens(message: &Message) -> u64 {
    let mut tokens = TOKENS_PER_MESSAGE + count_text(role_name(message.role));
    if let Some(content) = &message.content {
        tokens += content.text().map(count_text).sum::<u64>();
    }
    if let Some(name) = message.extra.get("name").and_then(Value::as_str) {
        tokens += TOKENS_PER_NAME + count_text(name);
    }
    for key in ["tool_calls", "function_call"] {
        if let Some(value) = message.extra.get(key) {
            tokens += json_tokens(value);
        }
    }
    if let Some(id) = message.extra.get("tool_call_id").and_then(Value::as_str) {
        tokens += count_text(id);
    }
    tokens
}

fn json_tokens(value: &Value) -> u64 {
    match value {
        Value::Null => 0,
        Value::String(text) => count_text(text),
        other => count_text(&other.to_string()),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => "function",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn counts_plain_text() {
        assert!(warm_up());
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello"), 1);
        assert_eq!(count_text("The quick brown fox jumps over the lazy dog"), 9);
        assert_eq!(
            count_text("<|endoftext|>"),
            count_text("<|endoftext|>x") - 1
        );
    }

    #[test]
    fn estimates_a_chat_prompt_like_openai() {
        // OpenAI reports prompt_tokens = 8 for one user message "hello" on gpt-4o:
        // 3 framing + 1 role + 1 content + 3 priming.
        let req =
            request(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}));
        assert_eq!(estimate_prompt(&req), 8);

        let two = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url"}], "name": "bob"}
        ]}));
        assert_eq!(estimate_prompt(&two), 3 + 1 + 1 + 3 + 1 + 1 + 1 + 1 + 3);
    }

    #[test]
    fn counts_tool_definitions_by_their_json() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let without = request(json!({"model": "m", "messages": []}));
        let with = request(json!({"model": "m", "messages": [], "tools": tools.clone()}));
        assert_eq!(estimate_prompt(&without), REPLY_PRIMING);
        assert_eq!(
            estimate_prompt(&with),
            REPLY_PRIMING + count_text(&tools.to_string())
        );
    }
}
