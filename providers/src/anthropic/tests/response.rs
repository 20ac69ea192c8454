//! Non-streaming Anthropic bodies, stop reasons, status classification and
//! the adapter's redacting `Debug`.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

use super::fixture;
use crate::anthropic::AnthropicAdapter;
use crate::anthropic::response::{self, finish_reason};
use crate::error::ProviderError;
use crate::http::http_client;
use crate::openai::response::status_error;
use crate::types::{PromptTokensDetails, Usage};

const KEY: &str = "sk-ant-test-SECRET-0123456789";

#[test]
fn text_message_parses() {
    let completion = response::parse_completion(&fixture("message.json"), "claude-test").unwrap();
    assert_eq!(completion.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(
        (completion.object.as_str(), completion.model.as_str()),
        ("chat.completion", "claude-test")
    );
    let choice = &completion.choices[0];
    assert_eq!(
        choice.message,
        json!({"role": "assistant", "content": "Hello, wörld 👋!", "refusal": null})
    );
    assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.usage, Some(Usage::new(21, 9)));
}

#[test]
fn tool_use_message_parses_with_cache_usage() {
    let completion =
        response::parse_completion(&fixture("message_tool_use.json"), "claude-test").unwrap();
    let message = &completion.choices[0].message;
    assert_eq!(message["content"], "I'll check the weather.");
    assert_eq!(message["reasoning_content"], "I should call the tool.");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function":
            {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"}}])
    );
    assert_eq!(
        completion.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
    let usage = Usage {
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: 2048,
        }),
        ..Usage::new(312 + 100 + 2048, 77)
    };
    assert_eq!(completion.usage, Some(usage));
}

#[test]
fn a_tool_only_message_has_null_content() {
    let body = json!({"id": "msg_1", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
    let completion = response::parse_completion(body.to_string().as_bytes(), "m").unwrap();
    assert!(completion.choices[0].message["content"].is_null());
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    let cases = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ];
    for (reason, finish) in cases {
        assert_eq!(finish_reason(reason), finish, "{reason}");
    }
}

#[test]
fn bad_bodies_are_classified() {
    let in_200 = response::parse_completion(&fixture("error_in_200.json"), "m").unwrap_err();
    assert!(
        matches!(&in_200, ProviderError::Stream { message } if message == "Internal server error"),
        "{in_200:?}"
    );
    let html = response::parse_completion(&fixture("html_504.html"), "m").unwrap_err();
    assert_eq!(html.kind(), "protocol");
    let body = fixture("message.json");
    let cut = response::parse_completion(&body[..body.len() / 2], "m").unwrap_err();
    assert_eq!(cut.kind(), "protocol");
    assert_eq!(
        response::json_instead_of_stream(&fixture("error_in_200.json")).kind(),
        "stream_error"
    );
    assert_eq!(
        response::json_instead_of_stream(&fixture("message.json")).kind(),
        "protocol"
    );
}

#[test]
fn statuses_are_classified() {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("12"));
    let overloaded = status_error(529, &headers, &fixture("error_529.json"), None);
    assert_eq!(
        (overloaded.kind(), overloaded.retryable()),
        ("status", true)
    );
    assert_eq!(overloaded.retry_after(), Some(Duration::from_secs(12)));
    assert_eq!(
        overloaded.to_string(),
        "the upstream answered HTTP 529: Overloaded"
    );

    let rejected = status_error(
        401,
        &HeaderMap::new(),
        &fixture("error_401.json"),
        Some(KEY),
    );
    assert_eq!((rejected.kind(), rejected.retryable()), ("rejected", false));
    assert_eq!(
        rejected.to_string(),
        "the upstream answered HTTP 401: invalid x-api-key: [redacted]"
    );

    let html = status_error(504, &HeaderMap::new(), &fixture("html_504.html"), None);
    assert!(html.retryable());
    assert!(
        html.to_string()
            .ends_with("504 Gateway Time-out 504 Gateway Time-out cloudflare"),
        "{html}"
    );
}

#[test]
fn debug_output_never_shows_the_key() {
    let client = http_client(Duration::from_secs(5)).unwrap();
    let adapter = AnthropicAdapter::new("https://api.anthropic.com/", Some(KEY.to_owned()), client);
    let debug = format!("{adapter:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert_eq!(adapter.endpoint(), "https://api.anthropic.com/v1/messages");
}

#[tokio::test]
async fn a_key_that_cannot_be_a_header_fails_without_sending() {
    let client = http_client(Duration::from_secs(5)).unwrap();
    let adapter = AnthropicAdapter::new("http://127.0.0.1:9", Some("bad\nkey".to_owned()), client);
    let req = serde_json::from_value(json!({"model": "m", "messages": []})).unwrap();
    let err = adapter.complete(&req).await.unwrap_err();
    assert_eq!(err.kind(), "request");
    assert!(!format!("{adapter:?}{err}").contains("bad\nkey"));
}
