//! Classifying upstream answers (statuses, error bodies, retry hints,
//! non-streaming bodies) and encoding the upstream request body.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use super::fixture;
use crate::ErrorSource;
use crate::error::ProviderError;
use crate::openai::request::{self, Mode};
use crate::openai::response;
use crate::types::ChatRequest;

#[test]
fn non_streaming_body_parses() {
    let completion = response::parse_completion(&fixture("completion.json")).unwrap();
    assert_eq!(completion.choices[0].message["content"], "Hello, wörld 👋!");
    assert_eq!(completion.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        completion
            .usage
            .map(|u| (u.total_tokens, u.cached_tokens())),
        Some((26, 6))
    );
    assert_eq!(completion.extra["service_tier"], "default");
}

#[test]
fn error_envelope_with_200_is_a_stream_error() {
    let err = response::parse_completion(&fixture("error_in_200.json")).unwrap_err();
    assert!(
        matches!(&err, ProviderError::Stream { message } if message == "Internal error while generating")
    );
}

#[test]
fn html_and_truncated_bodies_are_protocol_errors() {
    let html = response::parse_completion(&fixture("html_502.html")).unwrap_err();
    assert_eq!(html.kind(), "protocol");
    let body = fixture("completion.json");
    let cut = response::parse_completion(&body[..body.len() / 2]).unwrap_err();
    assert_eq!(cut.kind(), "protocol");
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| (name.parse().unwrap(), HeaderValue::from_static(value)))
        .collect()
}

#[test]
fn statuses_are_classified() {
    let limited = response::status_error(
        429,
        &headers(&[("retry-after-ms", "688"), ("retry-after", "1")]),
        &fixture("error_429.json"),
        None,
    );
    assert_eq!(
        (limited.kind(), limited.retryable()),
        ("rate_limited", true)
    );
    assert_eq!(limited.retry_after(), Some(Duration::from_millis(688)));
    assert!(
        limited
            .to_string()
            .contains("Rate limit reached for gpt-4o"),
        "{limited}"
    );

    let gateway = response::status_error(
        502,
        &headers(&[("retry-after", "7")]),
        &fixture("html_502.html"),
        None,
    );
    assert!(gateway.retryable());
    assert_eq!(gateway.retry_after(), Some(Duration::from_secs(7)));
    let ProviderError::Status { message, .. } = &gateway else {
        panic!("{gateway:?}")
    };
    assert_eq!(message, "502 Bad Gateway 502 Bad Gateway cloudflare");

    let key = "sk-test-SECRET-0123456789";
    let rejected = response::status_error(
        401,
        &HeaderMap::new(),
        &fixture("error_401.json"),
        Some(key),
    );
    assert_eq!(
        (rejected.kind(), rejected.retryable(), rejected.source()),
        ("rejected", false, ErrorSource::Client)
    );
    assert!(!rejected.to_string().contains(key), "{rejected}");
    assert!(
        rejected
            .to_string()
            .contains("Incorrect API key provided: [redacted]."),
        "{rejected}"
    );

    let empty = response::status_error(503, &HeaderMap::new(), b"", None);
    assert!(empty.to_string().ends_with("(empty body)"), "{empty}");
}

#[test]
fn retry_after_forms() {
    let parse = |pairs: &[(&'static str, &'static str)]| response::retry_after(&headers(pairs));
    let ms = Duration::from_millis;
    assert_eq!(parse(&[("retry-after", "0")]), Some(ms(0)));
    assert_eq!(parse(&[("retry-after", "2.5")]), Some(ms(2500)));
    assert_eq!(
        parse(&[("retry-after-ms", "20.75")]),
        Some(Duration::from_micros(20_750))
    );
    assert_eq!(
        parse(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
        None
    );
    assert_eq!(parse(&[("retry-after", "-1")]), None);
    assert_eq!(parse(&[("retry-after", "99999999999999999999")]), None);
    assert_eq!(parse(&[]), None);
}

#[test]
fn long_messages_are_truncated_on_char_boundaries() {
    let body = format!(r#"{{"error":{{"message":"{}"}}}}"#, "é".repeat(1000));
    let message = response::error_message(body.as_bytes());
    assert_eq!(message.chars().count(), 301);
    assert!(message.ends_with('…'));
}

fn chat(body: serde_json::Value) -> ChatRequest {
    serde_json::from_value(body).unwrap()
}

#[test]
fn request_body_sets_only_the_streaming_fields() {
    let req = chat(serde_json::json!({
        "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": true,
        "stream_options": {"include_usage": false, "continuous_usage_stats": true},
        "max_tokens": 5, "temperature": 0.5
    }));
    let complete: serde_json::Value =
        serde_json::from_slice(&request::encode(&req, Mode::Complete).unwrap()).unwrap();
    assert_eq!(
        complete,
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0.5})
    );
    let streamed: serde_json::Value =
        serde_json::from_slice(&request::encode(&req, Mode::Stream).unwrap()).unwrap();
    assert_eq!(streamed["stream"], true);
    assert_eq!(
        streamed["stream_options"],
        serde_json::json!({"include_usage": true, "continuous_usage_stats": true})
    );
    assert_eq!(streamed["temperature"], 0.5);
}
