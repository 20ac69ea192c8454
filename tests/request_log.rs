//! The request log on every transport, through a real listener in front of
//! fake upstreams whose usage reports cached prompt tokens: SSE, a JSON
//! body, `/v1/ws`, `/v1/embeddings` and the Realtime relay each leave one
//! record with the cached tokens and the route that answered (the second,
//! after the first failed over); a request no route answered is logged too,
//! with the status its client got, its error kind and no cost.

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
use support::{Harness, account, chat, get_json, verify_clean, ws_with_key};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokun_testkit::{FakeRealtime, FakeUpstream, RealtimeScript, Script};

const WAIT: Duration = Duration::from_secs(20);

/// `two-routes` and `embed` fail over from `first` to `second`;
/// `first-only` has no second route; `rt-model`'s Realtime route is its
/// second (the first has no `realtime_url`).
fn config(first: &FakeUpstream, second: &FakeUpstream, realtime: &FakeRealtime) -> String {
    format!(
        r#"
[[providers]]
name = "first"
kind = "openai"
base_url = "{first}"

[[providers]]
name = "second"
kind = "openai"
base_url = "{second}"

[[providers]]
name = "rt"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
realtime_url = "{realtime}"

[[models]]
id = "two-routes"
price = {{ input = 1.0, output = 2.0, cached_input = 0.5 }}
routes = [{{ provider = "first" }}, {{ provider = "second", model = "second-model" }}]

[[models]]
id = "embed"
price = {{ input = 1.0, output = 0.0 }}
routes = [{{ provider = "first" }}, {{ provider = "second", model = "second-embed" }}]

[[models]]
id = "first-only"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "first" }}]

[[models]]
id = "rt-model"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "first" }}, {{ provider = "rt", model = "upstream-rt" }}]
"#,
        first = first.base_url(),
        second = second.base_url(),
        realtime = realtime.url(),
    )
}

struct Setup {
    h: Harness,
    first: FakeUpstream,
    second: FakeUpstream,
    realtime: FakeRealtime,
}

/// The first route answers 500 to everything; the second reports 4 of its
/// 10 prompt tokens as cached.
async fn setup() -> Setup {
    let first = FakeUpstream::start().await.unwrap();
    let second = FakeUpstream::start().await.unwrap();
    let realtime = FakeRealtime::start().await.unwrap();
    first.set_default(Script::status(500));
    second.set_default(Script {
        cached_tokens: Some(4),
        ..Script::default()
    });
    let h = Harness::start(Some(&config(&first, &second, &realtime))).await;
    Setup {
        h,
        first,
        second,
        realtime,
    }
}

/// The request log, through `GET /v1/usage`.
async fn records(h: &Harness) -> Vec<Value> {
    let usage = get_json(&h.client, h, "/v1/usage").await;
    usage["data"].as_array().unwrap().clone()
}

fn record<'a>(records: &'a [Value], request_id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["request_id"] == request_id)
        .unwrap_or_else(|| panic!("{request_id} is logged: {records:?}"))
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn sse(h: &Harness) -> String {
    let mut body = chat("two-routes", true);
    body["stream_options"] = json!({"include_usage": true});
    let (headers, events) = h.stream_events(&body).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    headers["x-request-id"].to_str().unwrap().to_owned()
}

async fn whole(h: &Harness) -> String {
    let response = h
        .post_json("/v1/chat/completions", &chat("two-routes", false))
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    id
}

async fn embeddings(h: &Harness) -> String {
    let body = json!({"model": "embed", "input": ["a", "b"]});
    let response = h.post_json("/v1/embeddings", &body).await;
    assert_eq!(response.status(), 200);
    request_id(&response)
}

/// One completion on `/v1/ws`; its request id, from the chunk ids.
async fn websocket(h: &Harness) -> String {
    let mut ws = ws_with_key(h, &h.api_key).await;
    let create =
        json!({"type": "chat.completion.create", "id": "c1", "request": chat("two-routes", true)});
    ws.send(Message::text(create.to_string())).await.unwrap();
    let mut request_id = None;
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        let Message::Text(text) = message else {
            continue;
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if let Some(id) = message["chunk"]["id"].as_str() {
            request_id = Some(id.strip_prefix("chatcmpl-").unwrap().to_owned());
        }
        if message["type"] == "done" {
            break;
        }
        assert_ne!(message["type"], "error", "{message}");
    }
    request_id.expect("chunks came")
}

/// One Realtime response, reported with 5 cached input tokens.
async fn realtime(s: &Setup) {
    s.realtime.push(RealtimeScript {
        cached_tokens: 5,
        ..RealtimeScript::default()
    });
    let url = format!(
        "{}/v1/realtime?model=rt-model",
        s.h.base.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    let protocols = format!("realtime, openai-insecure-api-key.{}", s.h.api_key);
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let create =
        r#"{"type":"response.create","event_id":"e1","response":{"max_output_tokens":100}}"#;
    ws.send(Message::text(create)).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an event in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            if serde_json::from_str::<Value>(&text).unwrap()["type"] == "response.done" {
                break;
            }
        }
    }
    ws.close(None).await.unwrap();
}

/// One answered request's record: the second route, 4 cached tokens.
fn assert_second_route(record: &Value, transport: &str, cached: u64) {
    assert_eq!(record["transport"], transport, "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["provider"], "second", "{record}");
    assert_eq!(record["route"], 1, "{record}");
    assert_eq!(record["cached_tokens"], cached, "{record}");
    assert_eq!(record["estimated"], false, "{record}");
    assert!(record["error"].is_null(), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_logs_cached_tokens_and_the_route_that_answered() {
    let s = setup().await;
    let h = &s.h;
    let sse = sse(h).await;
    let whole = whole(h).await;
    let ws = websocket(h).await;
    let embedded = embeddings(h).await;
    realtime(&s).await;
    assert_eq!(h.wait_streams_idle().await, 0);
    // Every failover went through the first route, which failed each time.
    assert_eq!(s.first.calls(), 4);
    assert_eq!(s.second.calls(), 4);

    let log = records(h).await;
    assert_second_route(record(&log, &sse), "http", 4);
    assert_eq!(record(&log, &sse)["served_model"], "second-model");
    assert!(record(&log, &sse)["ttft_ms"].as_u64().is_some());
    assert_second_route(record(&log, &whole), "http", 4);
    assert_second_route(record(&log, &ws), "ws", 4);
    // Embeddings report no cached tokens.
    assert_second_route(record(&log, &embedded), "http", 0);
    assert_eq!(record(&log, &embedded)["served_model"], "second-embed");
    let realtime: Vec<&Value> = log
        .iter()
        .filter(|r| r["transport"] == "realtime")
        .collect();
    assert_eq!(realtime.len(), 1, "{log:?}");
    assert_eq!(realtime[0]["provider"], "rt");
    assert_eq!(realtime[0]["route"], 1);
    assert_eq!(realtime[0]["cached_tokens"], 5);

    // The CSV has them as its last two columns.
    let csv = h
        .client
        .get(h.url("/v1/usage?format=csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(",cached_tokens,route"), "{header}");
    let row = csv.lines().find(|line| line.starts_with(&sse)).unwrap();
    assert!(row.ends_with(",4,1"), "{row}");
    verify_clean(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_route_answered_is_logged_as_failed_and_costs_nothing() {
    let s = setup().await;
    let h = &s.h;
    let before = account(&h.client, h).await;
    let mut ids = Vec::new();
    for stream in [false, true] {
        let response = h
            .post_json("/v1/chat/completions", &chat("first-only", stream))
            .await;
        // The upstream's 500 is answered as a 502 (a failing upstream).
        assert_eq!(response.status(), 502);
        ids.push(request_id(&response));
    }
    assert_eq!(h.wait_streams_idle().await, 0);
    let after = account(&h.client, h).await;
    assert_eq!(after["balance"], before["balance"], "nothing charged");
    // A release (and its record) is written without a waiter, within the
    // ledger's `max_unflushed` of the answer: polled, up to 30 s.
    let mut log = Vec::new();
    for _ in 0..1500 {
        log = records(h).await;
        if ids
            .iter()
            .all(|id| log.iter().any(|r| r["request_id"] == id.as_str()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        let failed = record(&log, id);
        assert_eq!(failed["status"], 502, "{failed}");
        assert_eq!(failed["error"], "status", "{failed}");
        assert_eq!(failed["cost"], "0.00", "{failed}");
        assert_eq!(failed["provider"], "", "{failed}");
        assert!(failed["route"].is_null(), "{failed}");
        assert_eq!(failed["prompt_tokens"], 0, "{failed}");
    }
    verify_clean(h).await;
}
