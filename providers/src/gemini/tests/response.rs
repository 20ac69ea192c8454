//! Non-streaming Gemini answers, finish reasons, status classification,
//! embeddings translation, URLs and the adapter's redacting `Debug`.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::fixture;
use crate::embeddings::EmbeddingRequest;
use crate::error::ProviderError;
use crate::gemini::response::{self, finish_reason};
use crate::gemini::{GeminiAdapter, embed, error};
use crate::http::http_client;
use crate::types::{PromptTokensDetails, Usage};

const KEY: &str = "AIza-test-SECRET-0123456789";

fn adapter(base: &str) -> GeminiAdapter {
    GeminiAdapter::new(
        base,
        Some(KEY.to_owned()),
        http_client(Duration::from_secs(5)).unwrap(),
    )
}

#[test]
fn text_answer_parses_with_thoughts_and_cache() {
    let completion = response::parse_completion(&fixture("answer.json"), "gemini-test").unwrap();
    assert_eq!(completion.id, "v2Y1aPyxO5G6nvgP4N6WuQM");
    assert_eq!(completion.model, "gemini-test");
    assert_eq!(
        completion.choices[0].message,
        json!({"role": "assistant", "content": "Hello, wörld 👋!", "refusal": null,
               "reasoning_content": "The user says hello."})
    );
    assert_eq!(completion.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = Usage {
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 4 }),
        ..Usage::new(8, 6 + 26)
    };
    assert_eq!(completion.usage, Some(usage));
}

#[test]
fn candidates_become_choices_and_calls_tool_calls() {
    let completion = response::parse_completion(&fixture("answer_tools.json"), "m").unwrap();
    assert!(
        completion.id.starts_with("chatcmpl-gemini-"),
        "{}",
        completion.id
    );
    let first = &completion.choices[0];
    assert!(first.message["content"].is_null());
    assert_eq!(
        first.message["tool_calls"],
        json!([{"id": "call_0", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"},
                "extra_content": {"google": {"thought_signature": "CiQB0e2Kb1T"}}}])
    );
    assert_eq!(first.finish_reason.as_deref(), Some("tool_calls"));
    let second = &completion.choices[1];
    assert_eq!(
        (second.index, second.message["content"].as_str()),
        (1, Some("It is sunny."))
    );
    assert_eq!(second.finish_reason.as_deref(), Some("length"));
    // Tool-use prompt tokens are prompt tokens.
    assert_eq!(completion.usage, Some(Usage::new(55, 20)));
}

#[test]
fn finish_reasons_map() {
    let cases = [
        ("STOP", false, "stop"),
        ("STOP", true, "tool_calls"),
        ("MAX_TOKENS", true, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("BLOCKLIST", false, "content_filter"),
        ("PROHIBITED_CONTENT", false, "content_filter"),
        ("SPII", false, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", false, "stop"),
        ("SOMETHING_NEW", false, "stop"),
    ];
    for (reason, called, finish) in cases {
        assert_eq!(finish_reason(reason, called), finish, "{reason}");
    }
}

#[test]
fn bad_bodies_are_classified() {
    let in_200 = response::parse_completion(&fixture("error_in_200.json"), "m").unwrap_err();
    assert!(
        matches!(&in_200, ProviderError::Stream { message } if message.starts_with("An internal error has occurred")),
        "{in_200:?}"
    );
    let html = response::parse_completion(&fixture("html_503.html"), "m").unwrap_err();
    assert_eq!(html.kind(), "protocol");
    let body = fixture("answer.json");
    let cut = response::parse_completion(&body[..body.len() / 2], "m").unwrap_err();
    assert_eq!(cut.kind(), "protocol");
    let blocked = br#"{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}"#;
    let completion = response::parse_completion(blocked, "m").unwrap();
    assert_eq!(
        completion.choices[0].finish_reason.as_deref(),
        Some("content_filter")
    );
    assert_eq!(
        response::json_instead_of_stream(&fixture("error_in_200.json")).kind(),
        "stream_error"
    );
}

#[test]
fn statuses_are_classified() {
    let limited = error::status_error(
        429,
        &HeaderMap::new(),
        &fixture("error_429.json"),
        Some(KEY),
    );
    assert_eq!(
        (limited.kind(), limited.retryable()),
        ("rate_limited", true)
    );
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(34)));
    let unavailable = error::status_error(503, &HeaderMap::new(), &fixture("html_503.html"), None);
    assert!(unavailable.retryable());
    assert!(
        unavailable
            .to_string()
            .contains("The service is temporarily unavailable."),
        "{unavailable}"
    );
    let echoed = format!(r#"{{"error":{{"code":400,"message":"API key {KEY} not valid."}}}}"#);
    let rejected = error::status_error(400, &HeaderMap::new(), echoed.as_bytes(), Some(KEY));
    assert_eq!(
        rejected.to_string(),
        "the upstream answered HTTP 400: API key [redacted] not valid."
    );
}

fn embedding_request(body: Value) -> EmbeddingRequest {
    serde_json::from_value(body).unwrap()
}

#[test]
fn embeddings_translate_both_ways() {
    let req = embedding_request(
        json!({"model": "text-embedding-004", "input": ["hello world", "bye"], "dimensions": 3}),
    );
    let body: Value = serde_json::from_slice(&embed::encode(&req).unwrap()).unwrap();
    let one = |text: &str| json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": text}]}, "outputDimensionality": 3});
    assert_eq!(body, json!({"requests": [one("hello world"), one("bye")]}));

    let out = embed::parse(&fixture("embeddings.json"), &req).unwrap();
    assert_eq!(out.data.len(), 2);
    assert_eq!(
        (out.data[1].index, out.data[1].embedding.clone()),
        (1, vec![-0.02, 0.5, 0.25])
    );
    // Gemini reports no usage: o200k counts stand in ("hello world" 2 + "bye" 1).
    assert_eq!((out.usage.prompt_tokens, out.usage.total_tokens), (3, 3));
    assert!(out.usage_estimated);
    assert_eq!(out.model, "text-embedding-004");

    let single = embedding_request(json!({"model": "m", "input": "only one"}));
    assert_eq!(
        embed::parse(&fixture("embeddings.json"), &single)
            .unwrap_err()
            .kind(),
        "protocol"
    );
    let tokens = embedding_request(json!({"model": "m", "input": [1, 2, 3]}));
    assert_eq!(embed::encode(&tokens).unwrap_err().kind(), "request");
    let error = br#"{"error": {"code": 400, "message": "bad model"}}"#;
    assert_eq!(
        embed::parse(error, &req).unwrap_err().kind(),
        "stream_error"
    );
}

#[test]
fn urls_never_carry_the_key_and_reject_odd_models() {
    let gemini = adapter("https://generativelanguage.googleapis.com/");
    assert_eq!(
        gemini
            .method_url("models/gemini-2.5-flash", "generateContent")
            .unwrap(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    let versioned = adapter("https://proxy.example.com/google/v1");
    assert_eq!(
        versioned
            .method_url("gemini-1.5-pro-002", "batchEmbedContents")
            .unwrap(),
        "https://proxy.example.com/google/v1/models/gemini-1.5-pro-002:batchEmbedContents"
    );
    for model in ["", "../x", "a/b", "m?key=x", "m:streamGenerateContent"] {
        assert_eq!(
            gemini
                .method_url(model, "generateContent")
                .unwrap_err()
                .kind(),
            "request",
            "{model}"
        );
    }
    let debug = format!("{gemini:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
}

#[tokio::test]
async fn a_key_that_cannot_be_a_header_fails_without_sending() {
    let client = http_client(Duration::from_secs(5)).unwrap();
    let gemini = GeminiAdapter::new("http://127.0.0.1:9", Some("bad\nkey".to_owned()), client);
    let req = serde_json::from_value(json!({"model": "m", "messages": []})).unwrap();
    let err = gemini.complete(&req).await.unwrap_err();
    assert_eq!(err.kind(), "request");
    assert!(!format!("{gemini:?}{err}").contains("bad\nkey"));
}
