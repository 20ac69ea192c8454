//! The OpenAI Realtime relay (`GET /v1/realtime`) through a real listener, in
//! front of a fake Realtime upstream: events relayed byte for byte both ways,
//! a hold per response settled from `response.done` usage, and what happens
//! when either side goes away mid-response, or tokun shuts down.

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
use support::{Harness, get_json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokun_testkit::{FakeRealtime, RealtimeScript};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

/// `rt-model` is served by the fake Realtime upstream; `chat-only` has no Realtime route.
fn config(fake: &FakeRealtime) -> String {
    format!(
        r#"
[[providers]]
name = "fake-rt"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-upstream-secret"
realtime_url = "{url}"

[[providers]]
name = "echo"
kind = "echo"

[[models]]
id = "rt-model"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "echo" }}, {{ provider = "fake-rt", model = "upstream-rt" }}]

[[models]]
id = "chat-only"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "echo" }}]
"#,
        url = fake.url()
    )
}

async fn open(h: &Harness, query: &str, key: &str) -> Ws {
    let url = format!(
        "{}/v1/realtime?{query}",
        h.base.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    let protocols = format!("realtime, openai-insecure-api-key.{key}");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next frame: `Ok(text)` or `Err(close frame)`.
async fn next(ws: &mut Ws) -> Result<String, CloseFrame> {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("a frame before the end")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Close(frame) => return Err(frame.expect("a close code")),
            _ => {}
        }
    }
}

async fn text(ws: &mut Ws) -> String {
    next(ws).await.expect("an event, not a close")
}

fn kind(event: &str) -> String {
    serde_json::from_str::<Value>(event).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

async fn realtime_usage(h: &Harness) -> Vec<Value> {
    let usage: Value = get_json(&h.client, h, "/v1/usage").await;
    let records = usage["data"].as_array().unwrap();
    records
        .iter()
        .filter(|r| r["transport"] == "realtime")
        .cloned()
        .collect()
}

async fn verify_clean(h: &Harness) {
    support::verify_clean(h).await;
    assert!(h.server.services().store.open_holds().unwrap().is_empty());
}

const ITEM: &str = r#"{"type":"conversation.item.create","event_id":"e0","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"Say hello"}]}}"#;
const CREATE: &str =
    r#"{"type":"response.create","event_id":"e1","response":{"max_output_tokens":100}}"#;

#[tokio::test]
async fn events_are_relayed_unchanged_and_each_response_is_metered() {
    let fake = FakeRealtime::start().await.unwrap();
    let h = Harness::start(Some(&config(&fake))).await;
    let mut ws = open(&h, "model=rt-model", &h.api_key).await;
    assert_eq!(kind(&text(&mut ws).await), "session.created");
    send(&mut ws, ITEM).await;
    send(&mut ws, CREATE).await;
    let mut kinds = Vec::new();
    let done = loop {
        let event = text(&mut ws).await;
        kinds.push(kind(&event));
        if kinds.last().unwrap() == "response.done" {
            break event;
        }
    };
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.text.delta",
            "response.text.delta",
            "response.text.delta",
            "response.done"
        ]
    );
    let done: Value = serde_json::from_str(&done).unwrap();
    assert_eq!(
        done["response"]["usage"]["input_tokens"], 12,
        "relayed as is"
    );
    assert_eq!(
        fake.received(),
        [ITEM, CREATE],
        "client events reach the upstream unchanged"
    );
    let handshake = &fake.handshakes()[0];
    assert_eq!(handshake.uri, "/v1/realtime?model=upstream-rt");
    assert_eq!(
        handshake.authorization.as_deref(),
        Some("Bearer sk-upstream-secret")
    );

    // The settlement was durable before `response.done` reached the client.
    let records = realtime_usage(&h).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (
            record["prompt_tokens"].as_u64(),
            record["completion_tokens"].as_u64()
        ),
        (Some(12), Some(3))
    );
    assert_eq!(record["estimated"], false);
    // 12 × $1/M + 3 × $2/M = $0.000018.
    assert_eq!(record["cost"], "0.000018");
    assert_eq!(record["model"], "rt-model");

    ws.close(None).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while fake.closed() == 0 {
            tokio::task::yield_now().await
        }
    })
    .await
    .expect("the upstream socket is closed too");
    verify_clean(&h).await;
}

#[tokio::test]
async fn an_upstream_drop_mid_response_settles_what_was_streamed_and_closes_the_client() {
    let fake = FakeRealtime::start().await.unwrap();
    let h = Harness::start(Some(&config(&fake))).await;
    fake.push(RealtimeScript {
        deltas: (0..10).map(|i| format!(" d{i}")).collect(),
        drop_after: Some(4),
        ..RealtimeScript::default()
    });
    let mut ws = open(&h, "model=rt-model", &h.api_key).await;
    text(&mut ws).await;
    send(&mut ws, ITEM).await;
    send(&mut ws, CREATE).await;
    let mut deltas = 0;
    let close = loop {
        match next(&mut ws).await {
            Ok(event) => deltas += usize::from(kind(&event) == "response.text.delta"),
            Err(close) => break close,
        }
    };
    assert_eq!(
        deltas, 4,
        "what the upstream sent before it dropped still arrives"
    );
    assert_eq!(u16::from(close.code), 1011);
    let records = realtime_usage(&h).await;
    assert_eq!(records.len(), 1, "settled before the client saw the close");
    assert_eq!(records[0]["estimated"], true);
    assert_eq!(records[0]["completion_tokens"], 4);
    assert!(
        records[0]["prompt_tokens"].as_u64().unwrap() > 0,
        "the prompt text is counted"
    );
    verify_clean(&h).await;
}

#[tokio::test]
async fn a_client_leaving_mid_response_settles_it_and_closes_the_upstream() {
    let fake = FakeRealtime::start().await.unwrap();
    let h = Harness::start(Some(&config(&fake))).await;
    fake.push(RealtimeScript {
        hold_open: true,
        ..RealtimeScript::default()
    });
    fake.push(RealtimeScript {
        silent: true,
        ..RealtimeScript::default()
    });
    let mut ws = open(&h, "model=rt-model", &h.api_key).await;
    text(&mut ws).await;
    send(&mut ws, CREATE).await;
    // A second request the upstream never starts: its hold is released.
    send(&mut ws, r#"{"type":"response.create","event_id":"e2"}"#).await;
    let mut deltas = 0;
    while deltas < 3 {
        deltas += usize::from(kind(&text(&mut ws).await) == "response.text.delta");
    }
    drop(ws);
    tokio::time::timeout(WAIT, async {
        while fake.closed() == 0 {
            tokio::task::yield_now().await
        }
    })
    .await
    .expect("the upstream socket is closed");
    let records = tokio::time::timeout(WAIT, async {
        loop {
            let records = realtime_usage(&h).await;
            if !records.is_empty() {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the open response is settled");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["estimated"], true);
    assert_eq!(records[0]["completion_tokens"], 3);
    assert_eq!(records[0]["error"], "client_gone");
    tokio::time::timeout(WAIT, async {
        while !h.server.services().store.open_holds().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the unstarted hold is released");
    // Nothing held: the account actor can idle out.
    let view = get_json(&h.client, &h, "/v1/account").await;
    assert_eq!(
        (view["held_nanos"].clone(), view["open_holds"].clone()),
        (json!(0), json!(0))
    );
    verify_clean(&h).await;
}

#[tokio::test]
async fn refusals_close_with_codes_and_unaffordable_responses_never_reach_the_upstream() {
    let fake = FakeRealtime::start().await.unwrap();
    let h = Harness::start(Some(&config(&fake))).await;
    for (query, key, code) in [
        ("model=rt-model", "sk-tokun-wrong", 4401),
        ("model=chat-only", h.api_key.as_str(), 4404),
        ("model=nope", h.api_key.as_str(), 4404),
        ("", h.api_key.as_str(), 4400),
    ] {
        let mut ws = open(&h, query, key).await;
        let close = next(&mut ws).await.expect_err("refused");
        assert_eq!(u16::from(close.code), code, "{query}");
    }
    assert!(
        fake.handshakes().is_empty(),
        "no upstream socket for a refused client"
    );

    // $0.000001 cannot pay for one output token at $2 per million.
    let created: Value = h
        .anonymous
        .post(h.url("/admin/accounts"))
        .bearer_auth(&h.admin_token)
        .json(&json!({"email": "poor@example.com", "credit_usd": "0.000001"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let poor_key = created["api_key"].as_str().unwrap();
    let mut ws = open(&h, "model=rt-model", poor_key).await;
    text(&mut ws).await;
    let create = r#"{"type":"response.create","event_id":"e9"}"#;
    send(&mut ws, create).await;
    let error: Value = serde_json::from_str(&text(&mut ws).await).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "insufficient_credits");
    assert_eq!(error["error"]["event_id"], "e9");
    // Everything else still flows.
    let item = r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[]}}"#;
    send(&mut ws, item).await;
    tokio::time::timeout(WAIT, async {
        while fake.received().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the item reaches the upstream");
    assert_eq!(
        fake.received(),
        [item],
        "the refused event was not forwarded"
    );
    verify_clean(&h).await;
}

#[tokio::test]
async fn the_key_protocol_is_never_echoed() {
    let fake = FakeRealtime::start().await.unwrap();
    let h = Harness::start(Some(&config(&fake))).await;
    let url = format!(
        "{}/v1/realtime?model=rt-model",
        h.base.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    let protocols = format!("realtime, openai-insecure-api-key.{}", h.api_key);
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    assert_eq!(kind(&text(&mut ws).await), "session.created");
}

#[tokio::test]
async fn shutdown_settles_an_open_response_and_closes_with_1001() {
    let fake = FakeRealtime::start().await.unwrap();
    let h = Harness::start(Some(&config(&fake))).await;
    fake.push(RealtimeScript {
        hold_open: true,
        ..RealtimeScript::default()
    });
    let mut ws = open(&h, "model=rt-model", &h.api_key).await;
    text(&mut ws).await;
    send(&mut ws, CREATE).await;
    let mut deltas = 0;
    while deltas < 3 {
        deltas += usize::from(kind(&text(&mut ws).await) == "response.text.delta");
    }
    let store = h.server.services().store.clone();
    let Harness { server, .. } = h;
    let shutdown = tokio::spawn(server.shutdown());
    let frame = loop {
        if let Err(frame) = next(&mut ws).await {
            break frame;
        }
    };
    support::assert_closed_for_shutdown(&frame, shutdown).await;
    assert!(fake.closed() > 0, "the upstream socket is closed too");
    // The open response was settled (estimated, by what was streamed) before the close.
    assert!(store.open_holds().unwrap().is_empty(), "no hold left open");
    let demo = store.account_by_email("demo@tokun.local").unwrap().unwrap();
    let usage: Vec<_> = store
        .usage_for(demo.id, 0, u64::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    let realtime: Vec<_> = usage.iter().filter(|u| u.model == "rt-model").collect();
    assert_eq!(realtime.len(), 1, "{usage:?}");
    assert_eq!(realtime[0].completion_tokens, 3);
    assert!(realtime[0].estimated);
    assert_eq!(realtime[0].error_kind.as_deref(), Some("shutdown"));
}
