//! Streaming and non-streaming chat completions through a real listener,
//! against the built-in echo provider and a fake OpenAI upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use serde_json::{Value, json};
use support::{Harness, chat, upstream_config};
use tokun_testkit::FakeUpstream;

#[tokio::test]
async fn echo_stream_has_openai_chunk_shapes_and_usage_chunk() {
    let h = Harness::start(None).await;
    let mut body = chat("echo-mini", true);
    body["stream_options"] = json!({"include_usage": true});
    let (headers, data) = h.stream_events(&body).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| support::json(d))
        .collect();
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "echo-mini");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["id"], id, "one id for the whole stream");
        assert!(chunk["usage"].is_null() && chunk.as_object().unwrap().contains_key("usage"));
    }
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count() as u64;
    assert!(!text.is_empty());
    assert_eq!(usage["completion_tokens"], content_chunks);
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + content_chunks
    );
    assert!(usage["cost"].is_string());
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(finish, ["stop"]);
}

#[tokio::test]
async fn usage_chunk_is_stripped_when_the_client_did_not_ask() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let (headers, data) = h.stream_events(&chat("fake-model", true)).await;
    assert_eq!(headers["x-tokun-route"], "fake");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| support::json(d))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| !c.as_object().unwrap().contains_key("usage"))
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the fake upstream.");
    assert!(chunks.iter().all(|c| c["model"] == "fake-model"));
    // tokun always asks the upstream for usage, with the upstream's model name.
    let sent = &upstream.requests()[0];
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["model"], "upstream-model");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn non_streaming_completion_has_openai_shape_cost_and_headers() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let response = h
        .post_json("/v1/chat/completions", &chat("fake-model", false))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert!(response.headers().contains_key("x-tokun-cost"));
    assert_eq!(response.headers()["x-tokun-route"], "fake");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the fake upstream."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["usage"]["total_tokens"], 16);
    assert!(body["usage"]["cost"].is_string());
    assert!(body["usage"].get("estimated").is_none());
}

#[tokio::test]
async fn echo_non_streaming_respects_max_tokens() {
    let h = Harness::start(None).await;
    let mut body = chat("echo-mini", false);
    body["max_tokens"] = json!(3);
    let response: Value = h
        .post_json("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(response["usage"]["completion_tokens"], 3);
    assert_eq!(response["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn many_concurrent_streams_each_get_their_own_tokens() {
    let h = Harness::start(None).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = h.client.clone();
        let url = h.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "echo-mini", "stream": true, "max_tokens": 5 + i % 7,
                "messages": [{"role": "user", "content": format!("request number {i}")}]});
            let text = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            (i, text)
        }));
    }
    for task in tasks {
        let (i, text) = task.await.unwrap();
        assert!(
            text.ends_with("data: [DONE]\n\n"),
            "stream {i} ended cleanly"
        );
        let chunks = text.matches("chat.completion.chunk").count();
        // role chunk + (5 + i % 7) tokens + finish chunk
        assert_eq!(chunks, 5 + i % 7 + 2, "stream {i}");
    }
    assert_eq!(h.wait_streams_idle().await, 0);
}
