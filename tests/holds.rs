//! One owner per hold, seen from outside: on every transport a client that
//! leaves mid-call leaves nothing held (the account shows `held` 0 and no open
//! hold, so its actor can idle out) and the ledger verifies; embeddings get
//! permits and failover like chat; an account actor that cannot start is a
//! 500 with a request id, never a 404.

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
use support::{
    Harness, account, chat, client_with_key, new_account, upstream_config, verify_clean,
};
use tokio_tungstenite::tungstenite::Message;
use tokun_testkit::{FakeUpstream, Script};

const WAIT: Duration = Duration::from_secs(20);

/// A slow stream: `n` tokens, `ms` apart.
fn slow(n: usize, ms: u64) -> Script {
    Script {
        tokens: (0..n).map(|i| format!(" w{i}")).collect(),
        delay: Duration::from_millis(ms),
        ..Script::default()
    }
}

fn hang() -> Script {
    Script {
        hang: true,
        ..Script::default()
    }
}

/// Polls the account until `open_holds` is `holds` (bounded by `WAIT`).
async fn wait_for_holds(client: &reqwest::Client, h: &Harness, holds: u64) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let view = account(client, h).await;
            if view["open_holds"] == holds {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the account never had {holds} open holds"))
}

/// Nothing held, nothing open, every stream actor gone, the ledger clean.
async fn assert_nothing_held(client: &reqwest::Client, h: &Harness) {
    let view = wait_for_holds(client, h, 0).await;
    assert_eq!(view["held_nanos"], 0, "{view}");
    assert_eq!(h.wait_streams_idle().await, 0);
    assert!(h.server.services().store.open_holds().unwrap().is_empty());
    verify_clean(h).await;
}

async fn harness(upstream: &FakeUpstream) -> (Harness, reqwest::Client) {
    let h = Harness::start(Some(&upstream_config(upstream, ""))).await;
    let (_, key) = new_account(&h, "leaver@example.com", "5").await;
    (h, client_with_key(&key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_leaving_mid_stream_leaves_nothing_held() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(slow(500, 20));
    let (h, client) = harness(&upstream).await;
    let response = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("fake-model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    wait_for_holds(&client, &h, 1).await;
    drop(body);
    assert_nothing_held(&client, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_non_streamed_call_leaves_nothing_held() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(hang());
    let (h, client) = harness(&upstream).await;
    let call = tokio::spawn({
        let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
        async move {
            client
                .post(url)
                .json(&chat("fake-model", false))
                .send()
                .await
        }
    });
    wait_for_holds(&client, &h, 1).await;
    call.abort();
    assert_nothing_held(&client, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_an_embeddings_call_leaves_nothing_held() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(hang());
    let (h, client) = harness(&upstream).await;
    let call = tokio::spawn({
        let (client, url) = (client.clone(), h.url("/v1/embeddings"));
        let body = json!({"model": "fake-model", "input": "hold this for me"});
        async move { client.post(url).json(&body).send().await }
    });
    wait_for_holds(&client, &h, 1).await;
    call.abort();
    assert_nothing_held(&client, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_closed_mid_completion_leaves_nothing_held() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(slow(500, 20));
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let (_, key) = new_account(&h, "ws-leaver@example.com", "5").await;
    let client = client_with_key(&key);
    let mut ws = support::ws_with_key(&h, &key).await;
    let create = json!({"type": "chat.completion.create", "id": "c1",
        "request": chat("fake-model", true)});
    ws.send(Message::text(create.to_string())).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        if let Some(Ok(Message::Text(text))) = message {
            let event: Value = serde_json::from_str(&text).unwrap();
            assert_ne!(event["type"], "error", "{event}");
            if event["type"] == "chunk" {
                break;
            }
        }
    }
    wait_for_holds(&client, &h, 1).await;
    drop(ws);
    assert_nothing_held(&client, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_get_permits_and_fail_over_like_chat() {
    let first = FakeUpstream::start().await.unwrap();
    let second = FakeUpstream::start().await.unwrap();
    first.set_default(Script {
        status: Some(500),
        ..Script::default()
    });
    let config = support::two_routes(&first, &second, "max_concurrency = 4");
    let h = Harness::start(Some(&config)).await;
    let (_, key) = new_account(&h, "embedder@example.com", "5").await;
    let client = client_with_key(&key);
    let response = client
        .post(h.url("/v1/embeddings"))
        .json(&json!({"model": "two-routes", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tokun-route"], "second");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["usage"]["prompt_tokens"], 4,
        "the upstream's own usage"
    );
    assert_eq!((first.calls(), second.calls()), (1, 1));
    // The first route's provider actor saw the failure: it holds no permit.
    let providers = support::admin_get(&h, "/admin/providers").await;
    let first_health = providers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "first")
        .cloned()
        .unwrap_or_else(|| panic!("{providers}"));
    assert_eq!(first_health["in_flight"], 0, "{first_health}");
    assert_nothing_held(&client, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_actor_that_cannot_start_is_a_500_with_a_request_id() {
    let data_dir = support::temp_dir("spawn-failure");
    let config = || {
        let mut config = tokun::config::Config::default();
        config.server.data_dir = data_dir.clone();
        config
    };
    let (key, account) = {
        let h = Harness::start_with(config()).await;
        let (account, key) = new_account(&h, "broken@example.com", "5").await;
        h.server.shutdown().await.unwrap();
        (key, account)
    };
    // Damage the account's balance row so its actor cannot load its books.
    {
        let db = sled::open(data_dir.join("ledger")).unwrap();
        let balances = db.open_tree("balances").unwrap();
        let id: u64 = account.trim_start_matches("acct_").parse().unwrap();
        let mut damaged = false;
        for entry in balances.iter() {
            let (k, _) = entry.unwrap();
            if k.as_ref().ends_with(&id.to_be_bytes()) {
                balances.insert(k, &b"not a balance"[..]).unwrap();
                damaged = true;
            }
        }
        assert!(damaged, "found the balance row of {account}");
        db.flush().unwrap();
    }
    let h = Harness::start_with(config()).await;
    let response = client_with_key(&key)
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!request_id.is_empty());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
}
