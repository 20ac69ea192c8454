//! OpenAI [`ChatRequest`] → Anthropic Messages request body: the top-level
//! system prompt, strictly alternating user/assistant turns, tool use and tool
//! results as content blocks, tool definitions, and sampling parameters. It
//! decides nothing about transport; `mod.rs` sends what this builds.

use serde_json::{Map, Value, json};

use crate::error::ProviderError;
use crate::types::{ChatRequest, Content, Message, Role};

/// Anthropic requires `max_tokens`; this is sent when the client set none
/// (so it is also the output cap to reserve for such requests).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Anthropic-only parameters a client may send through the OpenAI shape.
/// Nothing else is relayed: Anthropic rejects unknown fields.
const PASSTHROUGH: [&str; 3] = ["top_k", "thinking", "metadata"];

/// The JSON body for `POST /v1/messages`.
pub(crate) fn encode(req: &ChatRequest, stream: bool) -> Result<Vec<u8>, ProviderError> {
    let body = build(req, stream)?;
    serde_json::to_vec(&body).map_err(|err| invalid(format!("could not encode the body: {err}")))
}

/// The request body as JSON (separate from `encode` so tests can read it).
pub(super) fn build(req: &ChatRequest, stream: bool) -> Result<Value, ProviderError> {
    let (system, messages) = translate_messages(&req.messages)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    let max_tokens = req.requested_max_tokens().unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if stream {
        body.insert("stream".into(), json!(true));
    }
    for key in ["temperature", "top_p"] {
        if let Some(value) = req.extra.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), value.clone());
        }
    }
    if let Some(stop) = stop_sequences(req.extra.get("stop")) {
        body.insert("stop_sequences".into(), stop);
    }
    add_tools(req, &mut body)?;
    if let Some(user) = req.extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    for key in PASSTHROUGH {
        if let Some(value) = req.extra.get(key) {
            body.insert(key.into(), value.clone());
        }
    }
    Ok(body.into())
}

/// Splits the conversation into the system prompt pieces and Anthropic turns.
/// Consecutive turns of one role are merged, since Anthropic requires
/// alternation; tool results travel as `tool_result` blocks in a user turn.
fn translate_messages(messages: &[Message]) -> Result<(Vec<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.extend(message.content.iter().flat_map(text_of));
                continue;
            }
            Role::User | Role::Function => ("user", content_blocks(message.content.as_ref())?),
            Role::Assistant => ("assistant", assistant_blocks(message)?),
            Role::Tool => ("user", vec![tool_result(message)]),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    Ok((system, turns))
}

/// The non-empty text pieces of a system message.
fn text_of(content: &Content) -> Vec<String> {
    content
        .text()
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
        .collect()
}

/// User content as Anthropic blocks. Empty text is dropped (Anthropic rejects
/// empty text blocks); images become `image` blocks; a part's `cache_control`
/// is kept so clients can mark cache breakpoints.
fn content_blocks(content: Option<&Content>) -> Result<Vec<Value>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|part| part_block(part).transpose())
            .collect(),
    }
}

fn part_block(part: &Value) -> Result<Option<Value>, ProviderError> {
    let mut block = match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text").and_then(Value::as_str) {
            Some(text) if !text.is_empty() => json!({"type": "text", "text": text}),
            _ => return Ok(None),
        },
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("an image_url part has no url".to_owned()))?;
            json!({"type": "image", "source": image_source(url)})
        }
        other => {
            return Err(invalid(format!(
                "content parts of type {} cannot be sent to Anthropic",
                other.unwrap_or("(none)")
            )));
        }
    };
    if let (Some(cache), Some(fields)) = (part.get("cache_control"), block.as_object_mut()) {
        fields.insert("cache_control".into(), cache.clone());
    }
    Ok(Some(block))
}

/// `data:` URLs are sent inline as base64; anything else by URL.
fn image_source(url: &str) -> Value {
    let inline = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"));
    match inline {
        Some((media_type, data)) => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": url}),
    }
}

/// An assistant turn: its text, then one `tool_use` block per tool call.
fn assistant_blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = content_blocks(message.content.as_ref())?;
    let calls = message.extra.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let name = name.ok_or_else(|| invalid("a tool call has no function name".to_owned()))?;
        let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
        blocks.push(json!({
            "type": "tool_use", "id": id, "name": name, "input": tool_input(arguments),
        }));
    }
    Ok(blocks)
}

/// Tool-call arguments as the JSON object Anthropic requires. Arguments that
/// are not an object (a model may have produced broken JSON earlier in the
/// conversation) become `{}` rather than failing the whole request.
fn tool_input(arguments: Option<&str>) -> Value {
    arguments
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// A `tool` message as a `tool_result` block (its text; no content if empty).
fn tool_result(message: &Message) -> Value {
    let id = message.extra.get("tool_call_id").and_then(Value::as_str);
    let mut block = json!({"type": "tool_result", "tool_use_id": id.unwrap_or_default()});
    let text: String = message.content.iter().flat_map(Content::text).collect();
    if !text.is_empty() {
        block["content"] = json!(text);
    }
    block
}

/// OpenAI's `stop` (a string or a list) as Anthropic's `stop_sequences` list.
fn stop_sequences(stop: Option<&Value>) -> Option<Value> {
    match stop? {
        Value::String(one) => Some(json!([one])),
        Value::Array(many) if !many.is_empty() => Some(Value::Array(many.clone())),
        _ => None,
    }
}

/// `tools` (function tools only) and `tool_choice`, with `parallel_tool_calls:
/// false` as `disable_parallel_tool_use`. Without tools no choice is sent.
fn add_tools(req: &ChatRequest, body: &mut Map<String, Value>) -> Result<(), ProviderError> {
    let tools = req.extra.get("tools").and_then(Value::as_array);
    let Some(tools) = tools.filter(|tools| !tools.is_empty()) else {
        return Ok(());
    };
    let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
    body.insert("tools".into(), Value::Array(tools));
    let mut choice = match req.extra.get("tool_choice") {
        None | Some(Value::Null) => json!({"type": "auto"}),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => json!({"type": "auto"}),
        },
        Some(named) => match named.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(invalid("tool_choice names no function".to_owned())),
        },
    };
    let serial = req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false));
    if serial && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    if req.extra.contains_key("tool_choice") || serial {
        body.insert("tool_choice".into(), choice);
    }
    Ok(())
}

/// One OpenAI function tool as an Anthropic tool with `input_schema`.
fn tool(tool: &Value) -> Result<Value, ProviderError> {
    let kind = tool
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function");
    let function = tool.get("function").filter(|_| kind == "function");
    let function =
        function.ok_or_else(|| invalid(format!("{kind} tools cannot be sent to Anthropic")))?;
    let name = function.get("name").and_then(Value::as_str);
    let name = name.ok_or_else(|| invalid("a tool has no function name".to_owned()))?;
    let schema = function
        .get("parameters")
        .filter(|schema| schema.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    let mut out = json!({"name": name, "input_schema": schema});
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out["description"] = json!(description);
    }
    Ok(out)
}

fn invalid(detail: String) -> ProviderError {
    ProviderError::Request { detail }
}
