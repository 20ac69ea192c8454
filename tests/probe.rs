//! Regression tests for what a bad-input probe found (tried as an attacker
//! would, against a running server): each case answers a clear,
//! OpenAI-shaped error, and nothing is run, held or charged that should not be.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Harness, account, admin_post, chat, client_with_key, new_account, upstream_config};
use tokio_tungstenite::tungstenite::Message;
use tokun_testkit::{FakeUpstream, Script};

const WAIT: Duration = Duration::from_secs(20);

/// The OpenAI error object of a response with `status`.
async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"].clone()
}

#[tokio::test]
async fn a_key_revoked_while_its_socket_is_open_starts_nothing_more() {
    let h = Harness::start(None).await;
    let (_, key) = new_account(&h, "revoked-ws@example.com", "5").await;
    let client = client_with_key(&key);
    let mut ws = support::ws_with_key(&h, &key).await;
    let create = |id: &str| {
        let body = json!({"type": "chat.completion.create", "id": id,
            "request": chat("echo-mini", true)});
        Message::text(body.to_string())
    };
    ws.send(create("before")).await.unwrap();
    let done = next_of(&mut ws, &["done", "error"]).await;
    assert_eq!(done["type"], "done", "{done}");
    let keys: Value = support::get_json(&client, &h, "/v1/keys").await;
    let id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let revoked = client
        .delete(h.url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    ws.send(create("after")).await.unwrap();
    let refused = next_of(&mut ws, &["done", "error"]).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "after");
    assert_eq!(refused["error"]["code"], "invalid_api_key", "{refused}");
    assert_eq!(h.wait_streams_idle().await, 0, "nothing was started");
}

/// The next `/v1/ws` message whose type is one of `kinds`.
async fn next_of<S>(ws: &mut S, kinds: &[&str]) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if kinds.iter().any(|k| value["type"] == *k) {
                return value;
            }
        }
    }
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_request_is_refused() {
    let h = Harness::start(None).await;
    let send = |body: String| {
        h.client
            .post(h.url("/v1/chat/completions"))
            .header("idempotency-key", "probe-1")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send(chat("echo-mini", false).to_string()).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // The same request, spelled differently: replayed.
    let spaced = serde_json::to_string_pretty(&chat("echo-mini", false)).unwrap();
    let again = send(spaced).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    // Another request under the same key: refused, not answered with the first.
    let other = json!({"model": "echo-large", "messages": [{"role": "user", "content": "else"}]});
    let error = error_of(send(other.to_string()).await.unwrap(), 400).await;
    assert_eq!(error["code"], "idempotency_key_reused", "{error}");
}

#[tokio::test]
async fn embeddings_inputs_are_capped_before_anything_runs() {
    let h = Harness::start(None).await;
    let before = account(&h.client, &h).await;
    let inputs: Vec<&str> = vec!["x"; 2049];
    let response = h
        .post_json(
            "/v1/embeddings",
            &json!({"model": "echo-mini", "input": inputs}),
        )
        .await;
    let error = error_of(response, 400).await;
    assert_eq!(error["param"], "input");
    let tokens: Vec<u32> = vec![1; 300_001];
    let response = h
        .post_json(
            "/v1/embeddings",
            &json!({"model": "echo-mini", "input": tokens}),
        )
        .await;
    assert_eq!(error_of(response, 400).await["param"], "input");
    let fine: Vec<&str> = vec!["x"; 2048];
    let response = h
        .post_json(
            "/v1/embeddings",
            &json!({"model": "echo-mini", "input": fine}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let after = account(&h.client, &h).await;
    assert_eq!(after["held_nanos"], 0);
    assert_ne!(
        before["balance_nanos"], after["balance_nanos"],
        "the fine one is billed"
    );
}

#[tokio::test]
async fn a_prompt_over_the_context_window_is_refused_before_any_upstream_call() {
    let upstream = FakeUpstream::start().await.unwrap();
    let extra = r#"
[[models]]
id = "tiny"
context_window = 50
price = { input = 1.0, output = 2.0 }
routes = [{ provider = "fake", model = "upstream-model" }]
"#;
    let h = Harness::start(Some(&upstream_config(&upstream, extra))).await;
    let before = account(&h.client, &h).await;
    let long = "word ".repeat(200);
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": long}]});
    let error = error_of(h.post_json("/v1/chat/completions", &body).await, 400).await;
    assert_eq!(error["code"], "context_length_exceeded");
    assert!(
        error["message"].as_str().unwrap().contains("50 tokens"),
        "{error}"
    );
    let asks_too_much = json!({"model": "tiny", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]});
    let error = error_of(
        h.post_json("/v1/chat/completions", &asks_too_much).await,
        400,
    )
    .await;
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(upstream.calls(), 0, "no upstream call");
    assert_eq!(
        account(&h.client, &h).await,
        before,
        "nothing held or charged"
    );
}

#[tokio::test]
async fn more_than_one_choice_is_refused_not_billed_as_one() {
    let h = Harness::start(None).await;
    let mut body = chat("echo-mini", true);
    body["n"] = json!(3);
    let error = error_of(h.post_json("/v1/chat/completions", &body).await, 400).await;
    assert_eq!(error["param"], "n");
    body["n"] = json!(1);
    assert_eq!(
        h.post_json("/v1/chat/completions", &body).await.status(),
        200
    );
}

#[tokio::test]
async fn a_disabled_account_creates_no_keys_and_no_tickets() {
    let h = Harness::start(None).await;
    let (id, key) = new_account(&h, "disabled@example.com", "5").await;
    let client = client_with_key(&key);
    let disabled = admin_post(
        &h,
        &format!("/admin/accounts/{id}/disable"),
        json!({"disabled": true}),
    )
    .await;
    assert_eq!(disabled.status(), 200);
    let key = client
        .post(h.url("/v1/keys"))
        .json(&json!({"name": "another"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(key, 403).await["message"],
        "This account is disabled."
    );
    let ticket = client.post(h.url("/v1/ws/ticket")).send().await.unwrap();
    assert_eq!(
        error_of(ticket, 403).await["message"],
        "This account is disabled."
    );
}

#[tokio::test]
async fn control_characters_in_emails_and_key_names_are_refused() {
    let h = Harness::start(None).await;
    for email in ["a\n@example.com", "b@exa\rmple.com", "c\u{0}@example.com"] {
        let response = admin_post(&h, "/admin/accounts", json!({"email": email})).await;
        assert_eq!(error_of(response, 400).await["param"], "email", "{email:?}");
    }
    for name in ["line\nbreak", "nul\u{0}", "tab\there"] {
        let response = h.post_json("/v1/keys", &json!({"name": name})).await;
        assert_eq!(error_of(response, 400).await["param"], "name", "{name:?}");
    }
}

#[tokio::test]
async fn query_errors_are_openai_shaped_and_long_names_are_not_echoed_whole() {
    let h = Harness::start(None).await;
    let response = h
        .client
        .get(h.url("/v1/usage?from=-1"))
        .send()
        .await
        .unwrap();
    let error = error_of(response, 400).await;
    assert_eq!(error["code"], "invalid_query");
    let long = "m".repeat(100_000);
    let body = json!({"model": long, "messages": [{"role": "user", "content": "hi"}]});
    let error = error_of(h.post_json("/v1/chat/completions", &body).await, 404).await;
    assert!(error["message"].as_str().unwrap().len() < 300, "{error}");
}

#[tokio::test]
async fn the_model_list_needs_a_key_while_billing_is_on() {
    let h = Harness::start(None).await;
    let anonymous = h.anonymous.get(h.url("/v1/models")).send().await.unwrap();
    assert_eq!(error_of(anonymous, 401).await["code"], "invalid_api_key");
    let one = h
        .anonymous
        .get(h.url("/v1/models/echo-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 401);
    let listed = h.client.get(h.url("/v1/models")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_call_to_a_silent_route_fails_over_to_the_next() {
    let silent = FakeUpstream::start().await.unwrap();
    let healthy = FakeUpstream::start().await.unwrap();
    silent.set_default(Script {
        hang: true,
        ..Script::default()
    });
    let config = support::two_routes(&silent, &healthy, "total_timeout_ms = 300");
    let h = Harness::start(Some(&config)).await;
    let response = h
        .post_json("/v1/chat/completions", &chat("two-routes", false))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tokun-route"], "second");
    assert_eq!((silent.calls(), healthy.calls()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_spend_limit_is_shared_by_concurrent_streams_and_never_exceeded() {
    let h = Harness::start(None).await;
    let created: Value = h
        .post_json(
            "/v1/keys",
            &json!({"name": "capped", "spend_limit_usd": "0.001"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let client = client_with_key(created["key"].as_str().unwrap());
    // Each echo stream spends ≈ $0.00001 of the $0.001; each first hold is a
    // 256-token increment (≈ $0.00016): without sharing, 8 of 50 got through.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&chat("echo-mini", true))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    let usage = support::get_json(&h.client, &h, &format!("/v1/usage?key={key_id}")).await;
    let usd = |text: &Value| tokun_storage::Nanos::parse_usd(text.as_str().unwrap()).unwrap();
    let spent = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .fold(tokun_storage::Nanos::ZERO, |sum, r| {
            sum.saturating_add(usd(&r["cost"]))
        });
    assert_eq!(usage["data"].as_array().unwrap().len(), 50);
    assert_eq!(usd(&usage["total_cost"]), spent);
    let limit = tokun_storage::Nanos::parse_usd("0.001").unwrap();
    assert!(
        spent > tokun_storage::Nanos::ZERO && spent <= limit,
        "spent {spent}"
    );
    support::verify_clean(&h).await;
}
