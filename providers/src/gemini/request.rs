//! OpenAI [`ChatRequest`] → Gemini `GenerateContentRequest`: the system
//! instruction, `user`/`model` contents, function calls and responses as parts,
//! function declarations, tool config and generation config. It decides
//! nothing about transport; `mod.rs` picks the method and sends.

use serde_json::{Map, Value, json};

use crate::error::ProviderError;
use crate::types::{ChatRequest, Content, Message, Role};

/// Gemini-only request fields a client may send through the OpenAI shape.
/// Nothing else is relayed: Gemini rejects unknown fields.
const PASSTHROUGH: [&str; 2] = ["safetySettings", "cachedContent"];

/// OpenAI sampling parameters and their `generationConfig` names.
const SAMPLING: [(&str, &str); 6] = [
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("n", "candidateCount"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
];

/// The JSON body for `:generateContent` and `:streamGenerateContent`.
pub(crate) fn encode(req: &ChatRequest) -> Result<Vec<u8>, ProviderError> {
    let body = build(req)?;
    serde_json::to_vec(&body).map_err(|err| invalid(format!("could not encode the body: {err}")))
}

/// The request body as JSON (separate from `encode` so tests can read it).
pub(super) fn build(req: &ChatRequest) -> Result<Value, ProviderError> {
    let (system, contents) = translate_messages(&req.messages)?;
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        let parts: Vec<Value> = system.iter().map(|text| json!({ "text": text })).collect();
        body.insert("systemInstruction".into(), json!({ "parts": parts }));
    }
    add_tools(req, &mut body)?;
    let config = generation_config(req);
    if !config.is_empty() {
        body.insert("generationConfig".into(), config.into());
    }
    for key in PASSTHROUGH {
        if let Some(value) = req.extra.get(key) {
            body.insert(key.into(), value.clone());
        }
    }
    Ok(body.into())
}

/// Splits the conversation into system texts and Gemini contents, merging
/// consecutive turns of one role. Tool results are `functionResponse` parts
/// in a user turn, named after the call they answer.
fn translate_messages(messages: &[Message]) -> Result<(Vec<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System | Role::Developer => {
                let texts = message.content.iter().flat_map(Content::text);
                system.extend(texts.filter(|t| !t.is_empty()).map(str::to_owned));
                continue;
            }
            Role::User | Role::Function => ("user", content_parts(message.content.as_ref())?),
            Role::Assistant => ("model", assistant_parts(message)?),
            Role::Tool => (
                "user",
                vec![function_response(message, &messages[..position])?],
            ),
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect();
    Ok((system, contents))
}

/// User content as Gemini parts; empty text is dropped.
fn content_parts(content: Option<&Content>) -> Result<Vec<Value>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![json!({ "text": text })]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|part| content_part(part).transpose())
            .collect(),
    }
}

fn content_part(part: &Value) -> Result<Option<Value>, ProviderError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(part
            .get("text")
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(|text| json!({ "text": text }))),
        Some("image_url") => {
            let url = part.pointer("/image_url/url").and_then(Value::as_str);
            let url = url.ok_or_else(|| invalid("an image_url part has no url".to_owned()))?;
            Ok(Some(image_part(url)))
        }
        other => Err(invalid(format!(
            "content parts of type {} cannot be sent to Gemini",
            other.unwrap_or("(none)")
        ))),
    }
}

/// `data:` URLs are sent inline; other URLs as `fileData` with a MIME type
/// guessed from the extension (Gemini requires one).
fn image_part(url: &str) -> Value {
    let inline = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"));
    if let Some((mime_type, data)) = inline {
        return json!({"inlineData": {"mimeType": mime_type, "data": data}});
    }
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let mime_type = [
        (".png", "image/png"),
        (".webp", "image/webp"),
        (".gif", "image/gif"),
        (".pdf", "application/pdf"),
    ]
    .into_iter()
    .find_map(|(extension, mime)| path.ends_with(extension).then_some(mime))
    .unwrap_or("image/jpeg");
    json!({"fileData": {"mimeType": mime_type, "fileUri": url}})
}

/// A model turn: its text, then one `functionCall` part per tool call, with the
/// thought signature Gemini gave it (see `response::tool_call`) sent back.
fn assistant_parts(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut parts = content_parts(message.content.as_ref())?;
    let calls = message.extra.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let name = name.ok_or_else(|| invalid("a tool call has no function name".to_owned()))?;
        let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
        let args = arguments
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let mut part = json!({"functionCall": {"name": name, "args": args}});
        let signature = call.pointer("/extra_content/google/thought_signature");
        if let Some(signature) = signature.filter(|s| s.is_string()) {
            part["thoughtSignature"] = signature.clone();
        }
        parts.push(part);
    }
    Ok(parts)
}

/// A `tool` message as a `functionResponse` part. Gemini identifies calls by
/// function name, so the name is found on the latest earlier assistant call
/// with this `tool_call_id` (ids like `call_0` repeat across turns).
fn function_response(message: &Message, earlier: &[Message]) -> Result<Value, ProviderError> {
    let id = message.extra.get("tool_call_id").and_then(Value::as_str);
    let name = earlier
        .iter()
        .rev()
        .filter(|m| m.role == Role::Assistant)
        .filter_map(|m| m.extra.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .find(|call| call.get("id").and_then(Value::as_str) == id)
        .and_then(|call| call.pointer("/function/name").and_then(Value::as_str))
        .or_else(|| message.extra.get("name").and_then(Value::as_str));
    let name = name.ok_or_else(|| {
        invalid(format!(
            "the tool result {:?} answers no earlier tool call",
            id.unwrap_or_default()
        ))
    })?;
    let text: String = message.content.iter().flat_map(Content::text).collect();
    // Gemini wants an object: a JSON object result is sent as is, anything else wrapped.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "result": text }),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// Function tools as one `functionDeclarations` tool (JSON Schema parameters
/// go in `parametersJsonSchema`, which accepts full JSON Schema), and
/// `tool_choice` as `toolConfig`. Without tools no config is sent.
fn add_tools(req: &ChatRequest, body: &mut Map<String, Value>) -> Result<(), ProviderError> {
    let tools = req.extra.get("tools").and_then(Value::as_array);
    let Some(tools) = tools.filter(|tools| !tools.is_empty()) else {
        return Ok(());
    };
    let declarations = tools
        .iter()
        .map(declaration)
        .collect::<Result<Vec<_>, _>>()?;
    body.insert(
        "tools".into(),
        json!([{ "functionDeclarations": declarations }]),
    );
    let config = match req.extra.get("tool_choice") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            _ => json!({"mode": "AUTO"}),
        },
        Some(named) => match named.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            None => return Err(invalid("tool_choice names no function".to_owned())),
        },
    };
    body.insert(
        "toolConfig".into(),
        json!({ "functionCallingConfig": config }),
    );
    Ok(())
}

fn declaration(tool: &Value) -> Result<Value, ProviderError> {
    let kind = tool
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function");
    let function = tool.get("function").filter(|_| kind == "function");
    let function =
        function.ok_or_else(|| invalid(format!("{kind} tools cannot be sent to Gemini")))?;
    let name = function.get("name").and_then(Value::as_str);
    let name = name.ok_or_else(|| invalid("a tool has no function name".to_owned()))?;
    let mut out = json!({ "name": name });
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out["description"] = json!(description);
    }
    if let Some(schema) = function
        .get("parameters")
        .filter(|schema| schema.is_object())
    {
        out["parametersJsonSchema"] = schema.clone();
    }
    Ok(out)
}

/// `generationConfig`: output cap, sampling, stop sequences, seed and JSON mode.
fn generation_config(req: &ChatRequest) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(max_tokens) = req.requested_max_tokens() {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    for (openai, gemini) in SAMPLING {
        if let Some(value) = req.extra.get(openai).filter(|v| !v.is_null()) {
            config.insert(gemini.into(), value.clone());
        }
    }
    let stop = match req.extra.get("stop") {
        Some(Value::String(one)) => Some(json!([one])),
        Some(Value::Array(many)) if !many.is_empty() => Some(Value::Array(many.clone())),
        _ => None,
    };
    if let Some(stop) = stop {
        config.insert("stopSequences".into(), stop);
    }
    if let Some(seed) = req.extra.get("seed").filter(|v| v.is_number()) {
        config.insert("seed".into(), seed.clone());
    }
    let format = req.extra.get("response_format");
    let kind = format.and_then(|f| f.get("type")).and_then(Value::as_str);
    if matches!(kind, Some("json_object" | "json_schema")) {
        config.insert("responseMimeType".into(), json!("application/json"));
    }
    if let Some(schema) = format.and_then(|f| f.pointer("/json_schema/schema")) {
        config.insert("responseJsonSchema".into(), schema.clone());
    }
    config
}

fn invalid(detail: String) -> ProviderError {
    ProviderError::Request { detail }
}
