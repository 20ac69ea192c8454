//! Bad input and broken upstreams: every case gets an OpenAI-shaped error or
//! a clean stream end, and the server keeps serving everyone else.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Harness, chat, upstream_config};
use tokun_testkit::{FakeUpstream, Script};

async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string());
    assert!(error.as_object().unwrap().contains_key("param"));
    assert!(error.as_object().unwrap().contains_key("code"));
    error.clone()
}

async fn post_raw(
    h: &Harness,
    body: impl Into<reqwest::Body>,
    content_type: &str,
) -> reqwest::Response {
    h.client
        .post(h.url("/v1/chat/completions"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_wrong_types_and_missing_fields_are_400() {
    let h = Harness::start(None).await;
    let error = error_of(post_raw(&h, "{not json", "application/json").await, 400).await;
    assert_eq!(error["code"], "invalid_json");

    let wrong_type = json!({"model": "echo-mini", "messages": "hello"});
    let error = error_of(h.post_json("/v1/chat/completions", &wrong_type).await, 400).await;
    assert_eq!(error["param"], "messages");

    let missing = json!({"model": "echo-mini"});
    let error = error_of(h.post_json("/v1/chat/completions", &missing).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("messages"));

    let bad_role = json!({"model": "echo-mini", "messages": [{"role": "wizard", "content": "x"}]});
    let error = error_of(h.post_json("/v1/chat/completions", &bad_role).await, 400).await;
    assert_eq!(error["param"], "messages[0].role");

    let empty = json!({"model": "echo-mini", "messages": []});
    let error = error_of(h.post_json("/v1/chat/completions", &empty).await, 400).await;
    assert_eq!(error["param"], "messages");

    let zero = json!({"model": "echo-mini", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]});
    error_of(h.post_json("/v1/chat/completions", &zero).await, 400).await;
}

#[tokio::test]
async fn invalid_utf8_is_a_clear_400() {
    let h = Harness::start(None).await;
    let mut body = br#"{"model":"echo-mini","messages":[{"role":"user","content":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    body.extend_from_slice(br#""}]}"#);
    let error = error_of(post_raw(&h, body, "application/json").await, 400).await;
    assert_eq!(error["code"], "invalid_json");
}

#[tokio::test]
async fn unknown_model_is_404_and_unknown_url_is_404() {
    let h = Harness::start(None).await;
    let error = error_of(
        h.post_json("/v1/chat/completions", &chat("gpt-99", false))
            .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
    let error = error_of(
        h.client
            .get(h.url("/v1/models/gpt-99"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
    error_of(
        h.client
            .get(h.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_wrong_method_405_and_media_type_415() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let big = json!({"model": "fake-model", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    error_of(h.post_json("/v1/chat/completions", &big).await, 413).await;
    // Chunked body without a content-length is limited too.
    let chunks =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8192])));
    let response = post_raw(&h, reqwest::Body::wrap_stream(chunks), "application/json").await;
    error_of(response, 413).await;
    error_of(
        h.client
            .get(h.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    error_of(
        post_raw(&h, "model=x", "multipart/form-data; boundary=x").await,
        415,
    )
    .await;
    assert_eq!(upstream.calls(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn upstream_errors_map_to_502_and_504_without_leaking_the_key() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.push(Script::status(500));
    let response = h
        .post_json("/v1/chat/completions", &chat("fake-model", true))
        .await;
    let error = error_of(response, 502).await;
    assert!(!error.to_string().contains("sk-upstream-secret"));

    upstream.push(Script {
        hang: true,
        ..Script::default()
    });
    let error = error_of(
        h.post_json("/v1/chat/completions", &chat("fake-model", true))
            .await,
        504,
    )
    .await;
    assert_eq!(error["code"], "timeout_first_byte");

    upstream.push(Script::status(400));
    let error = error_of(
        h.post_json("/v1/chat/completions", &chat("fake-model", false))
            .await,
        400,
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("fake upstream says 400")
    );

    upstream.push(Script {
        status: Some(429),
        retry_after_secs: Some(7),
        ..Script::default()
    });
    let response = h
        .post_json("/v1/chat/completions", &chat("fake-model", false))
        .await;
    assert_eq!(response.headers()["retry-after"], "7");
    error_of(response, 429).await;
}

async fn stream_text(h: &Harness, body: &Value) -> String {
    let response = h.post_json("/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn failures_after_the_first_chunk_end_with_one_error_event_then_done() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let mut body = chat("fake-model", true);
    body["stream_options"] = json!({"include_usage": true});
    for script in [
        Script {
            drop_after: Some(2),
            ..Script::default()
        },
        Script {
            garbage_after: Some(2),
            ..Script::default()
        },
        Script {
            error_event_after: Some(2),
            ..Script::default()
        },
        Script {
            tokens: vec!["a".into(), "b".into(), "c".into()],
            delay: Duration::from_secs(3),
            ..Script::default()
        },
    ] {
        upstream.push(script);
        let text = stream_text(&h, &body).await;
        assert_eq!(text.matches("\"error\"").count(), 1, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let usage_line = text
            .lines()
            .rfind(|l| l.contains("\"usage\":{"))
            .expect("usage chunk");
        let usage: Value = serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
        assert_eq!(
            usage["usage"]["estimated"], true,
            "billed from tokun's own count"
        );
    }
    // The server still serves.
    let ok = stream_text(&h, &chat("fake-model", true)).await;
    assert!(ok.ends_with("data: [DONE]\n\n"));
    assert_eq!(h.wait_streams_idle().await, 0);
}

#[tokio::test]
async fn client_disconnect_mid_stream_stops_the_stream_actor() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.push(Script {
        tokens: (0..500).map(|i| format!(" {i}")).collect(),
        delay: Duration::from_millis(5),
        ..Script::default()
    });
    let response = h
        .post_json("/v1/chat/completions", &chat("fake-model", true))
        .await;
    let mut bytes = response.bytes_stream();
    let first = bytes.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert_eq!(h.server.streams().stats().live(), 1);
    drop(bytes);
    assert_eq!(
        h.wait_streams_idle().await,
        0,
        "stream actor stopped after the client left"
    );
    // Others are unaffected.
    let ok = stream_text(&h, &chat("echo-mini", true)).await;
    assert!(ok.ends_with("data: [DONE]\n\n"));
}
