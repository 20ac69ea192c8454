//! Provider behaviour through the public API: failover before the first
//! chunk, same-route retry after a 429, limits learned from `x-ratelimit-*`
//! headers, breakers, watchdogs, Anthropic and
//! Gemini translated to OpenAI shapes with exact usage, `model: "auto"`, and
//! embeddings billed by input tokens.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Harness, admin_get, chat, get_json};
use tokun_testkit::{FakeAnthropic, FakeGemini, FakeUpstream, Script};

fn two_routes(a: &FakeUpstream, b: &FakeUpstream, extra: &str) -> String {
    format!(
        r#"
[[providers]]
name = "a"
kind = "openai"
base_url = "{a}"
first_byte_timeout_ms = 300
breaker_failures = 2
breaker_cooldown_secs = 60

[[providers]]
name = "b"
kind = "openai"
base_url = "{b}"

[[models]]
id = "duo"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "a" }}, {{ provider = "b" }}]

[[models]]
id = "solo"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "a" }}]
{extra}
"#,
        a = a.base_url(),
        b = b.base_url()
    )
}

/// One provider's entry in `GET /admin/providers`.
async fn provider_view(h: &Harness, name: &str) -> Value {
    let providers = admin_get(h, "/admin/providers").await;
    providers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone()
}

async fn fakes() -> (FakeUpstream, FakeUpstream) {
    (
        FakeUpstream::start().await.unwrap(),
        FakeUpstream::start().await.unwrap(),
    )
}

#[tokio::test]
async fn a_5xx_on_the_first_route_is_served_by_the_second() {
    let (a, b) = fakes().await;
    let h = Harness::start(Some(&two_routes(&a, &b, ""))).await;
    a.push(Script::status(500));
    let (headers, data) = h.stream_events(&chat("duo", true)).await;
    assert_eq!(headers["x-tokun-route"], "b");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!((a.calls(), b.calls()), (1, 1));
    let body: Value = h
        .post_json("/v1/chat/completions", &chat("duo", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["model"], "duo");
}

#[tokio::test]
async fn a_first_byte_timeout_fails_over_but_never_after_the_first_chunk() {
    let (a, b) = fakes().await;
    let h = Harness::start(Some(&two_routes(&a, &b, ""))).await;
    a.push(Script {
        hang: true,
        ..Script::default()
    });
    let response = h
        .post_json("/v1/chat/completions", &chat("duo", true))
        .await;
    assert_eq!(response.headers()["x-tokun-route"], "b");
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    // Once a chunk was relayed, a failure is not retried elsewhere.
    a.push(Script {
        drop_after: Some(3),
        ..Script::default()
    });
    let text = h
        .post_json("/v1/chat/completions", &chat("duo", true))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text.matches("\"error\"").count(), 1);
    assert_eq!(b.calls(), 1, "no failover after the commit point");
}

#[tokio::test]
async fn a_drop_after_n_chunks_bills_exactly_the_relayed_tokens() {
    let (a, b) = fakes().await;
    let h = Harness::start(Some(&two_routes(&a, &b, ""))).await;
    a.push(Script {
        drop_after: Some(3),
        ..Script::default()
    });
    let mut body = chat("solo", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = h
        .post_json("/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let usage_line = text
        .lines()
        .rfind(|l| l.contains("\"usage\":{"))
        .expect("usage chunk");
    let usage: Value = serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
    // "Hello", " from", " the": three one-token chunks relayed.
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["estimated"], true);
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_on_the_same_route() {
    let (a, b) = fakes().await;
    let h = Harness::start(Some(&two_routes(&a, &b, ""))).await;
    a.push(Script {
        status: Some(429),
        retry_after_secs: Some(1),
        ..Script::default()
    });
    let started = std::time::Instant::now();
    let response = h
        .post_json("/v1/chat/completions", &chat("solo", false))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(a.calls(), 2, "the same route, after the upstream's pause");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for retry-after"
    );
}

#[tokio::test]
async fn an_exhausted_x_ratelimit_window_moves_traffic_before_the_upstream_says_429() {
    let (a, b) = fakes().await;
    let h = Harness::start(Some(&two_routes(&a, &b, ""))).await;
    a.push(Script {
        headers: vec![
            ("x-ratelimit-limit-requests", "100".into()),
            ("x-ratelimit-remaining-requests", "0".into()),
            ("x-ratelimit-reset-requests", "30s".into()),
        ],
        ..Script::default()
    });
    let first = h
        .post_json("/v1/chat/completions", &chat("duo", true))
        .await;
    assert_eq!(first.headers()["x-tokun-route"], "a");
    assert!(first.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    // `a` said its window is spent for 30 s: tokun stops sending it traffic.
    let second = h
        .post_json("/v1/chat/completions", &chat("duo", false))
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-tokun-route"], "b");
    let refused = h
        .post_json("/v1/chat/completions", &chat("solo", false))
        .await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(a.calls(), 1, "no call reached the exhausted upstream");

    let a_view = provider_view(&h, "a").await;
    assert_eq!(a_view["headroom"]["requests"], 0);
    assert!(a_view["headroom"]["paused_ms"].as_u64().unwrap() > 25_000);
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_refuses_without_calling_upstream() {
    let (a, b) = fakes().await;
    let h = Harness::start(Some(&two_routes(&a, &b, ""))).await;
    a.set_default(Script::status(500));
    for _ in 0..2 {
        assert_eq!(
            h.post_json("/v1/chat/completions", &chat("solo", false))
                .await
                .status(),
            502
        );
    }
    let refused = h
        .post_json("/v1/chat/completions", &chat("solo", false))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(a.calls(), 2, "an open circuit does not call the upstream");
    // The model with a second route is still served.
    let duo = h
        .post_json("/v1/chat/completions", &chat("duo", false))
        .await;
    assert_eq!(duo.status(), 200);
    assert_eq!(duo.headers()["x-tokun-route"], "b");
    let a_view = provider_view(&h, "a").await;
    assert_eq!(a_view["circuit"], "open");
}

async fn sse_usage(h: &Harness, model: &str) -> (Vec<Value>, Value) {
    let body = json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    let response = h.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let mut chunks = Vec::new();
    while let Some(event) = events.next().await {
        let data = event.unwrap().data;
        if data == "[DONE]" {
            break;
        }
        chunks.push(serde_json::from_str::<Value>(&data).unwrap());
    }
    let usage = chunks.pop().unwrap();
    (chunks, usage)
}

#[tokio::test]
async fn anthropic_and_gemini_stream_as_openai_chunks_with_exact_usage() {
    let anthropic = FakeAnthropic::start().await.unwrap();
    let gemini = FakeGemini::start().await.unwrap();
    let config = format!(
        r#"
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{a}"
api_key = "sk-ant-secret"

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{g}"
api_key = "gem-secret"

[[models]]
id = "claude-haiku"
price = {{ input = 1.0, output = 5.0 }}
routes = [{{ provider = "claude", model = "claude-3-5-haiku-latest" }}]

[[models]]
id = "gemini-flash"
price = {{ input = 0.1, output = 0.4 }}
routes = [{{ provider = "gem", model = "gemini-2.0-flash" }}]
"#,
        a = anthropic.base_url(),
        g = gemini.base_url()
    );
    let h = Harness::start(Some(&config)).await;
    for (fake_usage, model) in [((12u64, 6u64), "claude-haiku"), ((9, 6), "gemini-flash")] {
        let script = Script {
            usage: Some(fake_usage),
            ..Script::default()
        };
        if model == "claude-haiku" {
            anthropic.push(script)
        } else {
            gemini.push(script)
        }
        let (chunks, usage) = sse_usage(&h, model).await;
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == model)
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello from the fake upstream.", "{model}");
        assert_eq!(
            chunks
                .iter()
                .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
                .collect::<Vec<_>>(),
            ["stop"]
        );
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], fake_usage.0, "{model}");
        assert_eq!(usage["usage"]["completion_tokens"], fake_usage.1, "{model}");
        assert!(
            usage["usage"].get("estimated").is_none(),
            "exact usage from {model}"
        );
    }
    let sent = &anthropic.recorded()[0];
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-secret"));
    assert_eq!(sent.body["system"], "be brief");
    assert!(!anthropic.recorded()[0].contains_outside("sk-ant-secret", "x-api-key"));
    assert_eq!(
        gemini.recorded()[0].header("x-goog-api-key"),
        Some("gem-secret")
    );
}

#[tokio::test]
async fn auto_picks_the_cheapest_fit_deterministically_and_says_so() {
    let (a, b) = fakes().await;
    let extra = r#"
[[models]]
id = "cheap"
context_window = 50
price = { input = 0.1, output = 0.1 }
routes = [{ provider = "b" }]

[auto]
candidates = ["duo", "cheap"]
"#;
    let h = Harness::start(Some(&two_routes(&a, &b, extra))).await;
    for _ in 0..3 {
        let response = h
            .post_json("/v1/chat/completions", &chat("auto", false))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-tokun-route"], "b");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], "cheap", "the cheapest candidate that fits");
    }
    // A prompt too long for `cheap`'s window goes to the next cheapest fit.
    let long =
        json!({"model": "auto", "messages": [{"role": "user", "content": "word ".repeat(80)}]});
    let body: Value = h
        .post_json("/v1/chat/completions", &long)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["model"], "duo");
}

#[tokio::test]
async fn embeddings_are_billed_by_input_tokens() {
    let h = Harness::start(None).await;
    let before: Value = get_json(&h.client, &h, "/v1/account").await;
    let response = h
        .post_json(
            "/v1/embeddings",
            &json!({"model": "echo-mini", "input": ["hello world", "tokun"]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-tokun-cost"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    // o200k: "hello world" is 2 tokens, "tokun" 2.
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let after: Value = get_json(&h.client, &h, "/v1/account").await;
    // 4 input tokens at $0.15/M = 600 nanos.
    assert_eq!(
        before["balance_nanos"].as_i64().unwrap() - after["balance_nanos"].as_i64().unwrap(),
        600
    );
    let empty = h
        .post_json(
            "/v1/embeddings",
            &json!({"model": "echo-mini", "input": ""}),
        )
        .await;
    assert_eq!(empty.status(), 400);
}
