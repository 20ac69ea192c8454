//! OpenAI chat requests → Anthropic Messages bodies.

use serde_json::{Value, json};

use crate::anthropic::request::{self, DEFAULT_MAX_TOKENS};
use crate::types::ChatRequest;

fn body(request: Value) -> Value {
    let req: ChatRequest = serde_json::from_value(request).unwrap();
    request::build(&req, false).unwrap()
}

fn error_kind(request: Value) -> &'static str {
    let req: ChatRequest = serde_json::from_value(request).unwrap();
    request::build(&req, false).unwrap_err().kind()
}

#[test]
fn system_and_developer_messages_become_the_system_prompt() {
    let out = body(json!({"model": "claude", "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "hi"},
    ], "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-42"}));
    assert_eq!(
        out,
        json!({
            "model": "claude", "max_tokens": 100, "system": "Be terse.\n\nAnswer in French.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
            "metadata": {"user_id": "u-42"},
        })
    );
}

#[test]
fn max_tokens_is_always_sent() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(body(base.clone())["max_tokens"], DEFAULT_MAX_TOKENS);
    let mut newer = base;
    newer["max_completion_tokens"] = json!(77);
    assert_eq!(body(newer)["max_tokens"], 77);
}

#[test]
fn consecutive_turns_of_one_role_are_merged() {
    let out = body(json!({"model": "m", "messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"},
    ]}));
    let text = |t: &str| json!({"type": "text", "text": t});
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [text("one"), text("two")]},
            {"role": "assistant", "content": [text("three"), text("four")]},
            {"role": "user", "content": [text("five")]},
        ])
    );
}

#[test]
fn tool_calls_and_results_become_blocks() {
    let out = body(json!({"model": "m", "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "user", "content": "thanks"},
    ]}));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "weather and time?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
                {"type": "text", "text": "thanks"},
            ]},
        ])
    );
}

#[test]
fn function_tools_become_input_schemas() {
    let out = body(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "ping"}},
        ],
        "tool_choice": "required", "parallel_tool_calls": false}),
    );
    assert_eq!(
        out["tools"],
        json!([
            {"name": "get_weather", "description": "Weather now", "input_schema":
                {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
        ])
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn tool_choice_forms() {
    let choice = |choice: Value| {
        let out = body(json!({"model": "m", "messages": [], "tool_choice": choice,
            "tools": [{"type": "function", "function": {"name": "f"}}]}));
        out["tool_choice"].clone()
    };
    assert_eq!(choice(json!("auto")), json!({"type": "auto"}));
    assert_eq!(choice(json!("none")), json!({"type": "none"}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "f"}})),
        json!({"type": "tool", "name": "f"})
    );
    let without_tools = body(json!({"model": "m", "messages": [], "tool_choice": "required"}));
    assert!(without_tools.get("tool_choice").is_none());
    let default = body(
        json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}),
    );
    assert!(default.get("tool_choice").is_none());
}

#[test]
fn images_and_cache_control_are_translated() {
    let out = body(
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]}]}),
    );
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
}

#[test]
fn untranslatable_requests_are_request_errors() {
    let audio =
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
    assert_eq!(error_kind(audio), "request");
    let custom_tool = json!({"model": "m", "messages": [], "tools": [{"type": "custom", "custom": {"name": "x"}}]});
    assert_eq!(error_kind(custom_tool), "request");
}

#[test]
fn streaming_sets_stream_and_unknown_openai_fields_are_dropped() {
    let req: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [],
        "stream": true, "stream_options": {"include_usage": true}, "logprobs": true,
        "response_format": {"type": "json_object"}, "top_k": 5}))
    .unwrap();
    let out = request::build(&req, true).unwrap();
    assert_eq!(
        out,
        json!({"model": "m", "max_tokens": DEFAULT_MAX_TOKENS, "messages": [], "stream": true, "top_k": 5})
    );
}
