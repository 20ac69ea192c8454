//! OpenAI chat requests → Gemini `GenerateContentRequest` bodies.

use serde_json::{Value, json};

use crate::gemini::request;
use crate::types::ChatRequest;

fn body(request: Value) -> Value {
    let req: ChatRequest = serde_json::from_value(request).unwrap();
    request::build(&req).unwrap()
}

fn error_kind(request: Value) -> &'static str {
    let req: ChatRequest = serde_json::from_value(request).unwrap();
    request::build(&req).unwrap_err().kind()
}

#[test]
fn system_prompt_roles_and_generation_config() {
    let out = body(json!({"model": "gemini", "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "salut"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ], "max_completion_tokens": 64, "temperature": 0.3, "top_p": 0.8, "n": 2,
       "stop": ["END", "STOP"], "seed": 7, "presence_penalty": 0.1, "logprobs": true}));
    assert_eq!(
        out,
        json!({
            "systemInstruction": {"parts": [{"text": "Be terse."}, {"text": "Answer in French."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "salut"}]},
                {"role": "user", "parts": [{"text": "again"}]},
            ],
            "generationConfig": {"maxOutputTokens": 64, "temperature": 0.3, "topP": 0.8,
                "candidateCount": 2, "presencePenalty": 0.1, "stopSequences": ["END", "STOP"], "seed": 7},
        })
    );
}

#[test]
fn consecutive_turns_merge_and_empty_ones_vanish() {
    let out = body(json!({"model": "m", "messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "three"},
    ]}));
    assert_eq!(
        out["contents"],
        json!([{"role": "user", "parts": [{"text": "one"}, {"text": "two"}, {"text": "three"}]}])
    );
    assert!(out.get("generationConfig").is_none());
}

#[test]
fn tool_calls_and_results_become_function_parts() {
    let out = body(json!({"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
             "extra_content": {"google": {"thought_signature": "SIG"}}},
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 18}"},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_news", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_0", "content": "nothing new"},
    ]}));
    assert_eq!(
        out["contents"],
        json!([
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "SIG"},
                {"functionCall": {"name": "get_time", "args": {}}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
            ]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_news", "args": {}}}]},
            // `call_0` repeats across turns: the latest call with that id names it.
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_news", "response": {"result": "nothing new"}}},
            ]},
        ])
    );
}

#[test]
fn a_tool_result_without_a_call_is_a_request_error() {
    let orphan = json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "call_9", "content": "x"}]});
    assert_eq!(error_kind(orphan), "request");
}

#[test]
fn tools_become_function_declarations() {
    let out = body(json!({"model": "m", "messages": [],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "ping"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
    assert_eq!(
        out["tools"],
        json!([{"functionDeclarations": [
            {"name": "get_weather", "description": "Weather now", "parametersJsonSchema":
                {"type": "object", "properties": {"city": {"type": "string"}},
                 "required": ["city"], "additionalProperties": false}},
            {"name": "ping"},
        ]}])
    );
    assert_eq!(
        out["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    let modes = [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")];
    for (choice, mode) in modes {
        let out = body(json!({"model": "m", "messages": [], "tool_choice": choice,
            "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], mode);
    }
}

#[test]
fn images_json_mode_and_passthrough() {
    let out = body(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.PNG?x=1"}},
    ]}], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
       "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]}),
    );
    assert_eq!(
        out["contents"][0]["parts"],
        json!([
            {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
            {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a.PNG?x=1"}},
        ])
    );
    assert_eq!(
        out["generationConfig"],
        json!({"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}})
    );
    assert_eq!(out["safetySettings"][0]["threshold"], "BLOCK_NONE");
    let audio =
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
    assert_eq!(error_kind(audio), "request");
}
