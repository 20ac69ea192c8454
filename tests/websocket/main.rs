//! Chat completions over `GET /v1/ws` through a real listener, with
//! tokio-tungstenite clients (and a hand-rolled one where a test needs a
//! client that never answers pings or never reads): multiplexing, cancel,
//! abrupt closes, tickets and subprotocol auth, limits, keep-alive,
//! backpressure, metering equal to SSE, and the 1001 close at shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

#[path = "../support/mod.rs"]
mod support;

/// Frame limits, malformed input, per-socket limits, keep-alive and backpressure.
mod limits;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Harness, chat, get_json, upstream_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokun_testkit::{FakeUpstream, Script};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest any single wait in these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(20);

fn ws_url(h: &Harness, path: &str) -> String {
    format!("{}{path}", h.base.replacen("http://", "ws://", 1))
}

/// Opens `/v1/ws` with `headers`; returns the socket and the upgrade response's headers.
async fn open(h: &Harness, path: &str, headers: &[(&'static str, String)]) -> (Ws, HeaderMap) {
    let mut request = ws_url(h, path).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    (ws, response.headers().clone())
}

async fn connect(h: &Harness) -> Ws {
    open(
        h,
        "/v1/ws",
        &[("authorization", format!("Bearer {}", h.api_key))],
    )
    .await
    .0
}

async fn send(ws: &mut Ws, value: &Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

fn create(id: &str, request: &Value) -> Value {
    json!({"type": "chat.completion.create", "id": id, "request": request})
}

/// The next JSON message (tungstenite answers pings itself).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server's close frame.
async fn closed(ws: &mut Ws) -> CloseFrame {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close in time")
            .expect("a close frame before the end")
            .expect("a valid frame");
        if let Message::Close(frame) = message {
            return frame.expect("a close code");
        }
    }
}

/// Collects messages by id until `n` completions ended (`done`, or `error` without `done`).
async fn until_ended(ws: &mut Ws, n: usize) -> HashMap<String, Vec<Value>> {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    let mut ended = 0;
    while ended < n {
        let message = next(ws).await;
        let id = message["id"].as_str().expect("an id").to_owned();
        let kind = message["type"].as_str().unwrap().to_owned();
        let messages = by_id.entry(id).or_default();
        let streamed = messages.iter().any(|m| m["type"] == "chunk");
        messages.push(message);
        if kind == "done" || (kind == "error" && !streamed) {
            ended += 1;
        }
    }
    by_id
}

fn content(messages: &[Value]) -> String {
    messages
        .iter()
        .filter_map(|m| m["chunk"]["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The request id behind a completion, from its chunk ids (`chatcmpl-<id>`).
fn request_id(messages: &[Value]) -> String {
    let id = messages
        .iter()
        .find_map(|m| m["chunk"]["id"].as_str())
        .unwrap();
    id.strip_prefix("chatcmpl-").unwrap().to_owned()
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the condition in time");
}

async fn verify_clean(h: &Harness) {
    support::verify_clean(h).await;
    assert!(
        h.server.services().store.open_holds().unwrap().is_empty(),
        "every hold closed"
    );
}

async fn usage_records(h: &Harness) -> Vec<Value> {
    let usage: Value = get_json(&h.client, h, "/v1/usage").await;
    usage["data"].as_array().unwrap().clone()
}

fn slow(tokens: usize, delay_ms: u64) -> Script {
    Script {
        tokens: (0..tokens).map(|i| format!(" w{i}")).collect(),
        delay: Duration::from_millis(delay_ms),
        ..Script::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_completions_share_one_socket() {
    let h = Harness::start(None).await;
    let mut ws = connect(&h).await;
    for i in 0..50 {
        // Each its own length, so chunks delivered to the wrong id would show.
        let mut body = chat("echo-mini", true);
        body["max_tokens"] = json!(1 + i % 15);
        send(&mut ws, &create(&format!("c{i}"), &body)).await;
    }
    send(&mut ws, &create("whole", &chat("echo-mini", false))).await;
    let by_id = until_ended(&mut ws, 51).await;
    let mut request_ids = std::collections::HashSet::new();
    for i in 0..50 {
        let messages = &by_id[&format!("c{i}")];
        let done = messages.last().unwrap();
        assert_eq!(done["type"], "done", "{messages:?}");
        let chunk = &messages[0]["chunk"];
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk.get("usage").is_none(), "usage comes in done");
        let content_chunks = messages
            .iter()
            .filter(|m| {
                m["chunk"]["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            })
            .count() as u64;
        assert_eq!(content_chunks, 1 + i % 15, "its own chunks");
        assert_eq!(done["usage"]["completion_tokens"], content_chunks);
        assert_eq!(done["usage"]["cost"], done["cost"]);
        assert!(done["cost"].is_string());
        assert!(
            request_ids.insert(request_id(messages)),
            "one stream actor each"
        );
    }
    let whole = &by_id["whole"];
    assert_eq!(whole[0]["type"], "completion");
    assert_eq!(whole[0]["completion"]["object"], "chat.completion");
    assert_eq!(whole[1]["type"], "done");
    assert_eq!(whole[0]["completion"]["usage"]["cost"], whole[1]["cost"]);
    assert_eq!(h.wait_streams_idle().await, 0);
    assert_eq!(usage_records(&h).await.len(), 51);
    verify_clean(&h).await;
}

#[tokio::test]
async fn cancel_stops_one_completion_and_still_sends_its_done() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.push(slow(300, 5));
    upstream.push(slow(300, 5));
    upstream.push(slow(5, 0));
    let mut ws = connect(&h).await;
    send(&mut ws, &create("a", &chat("fake-model", true))).await;
    send(&mut ws, &create("b", &chat("fake-model", true))).await;
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    while seen.values().map(Vec::len).min().unwrap_or(0) < 3 || seen.len() < 2 {
        let message = next(&mut ws).await;
        seen.entry(message["id"].as_str().unwrap().into())
            .or_default()
            .push(message);
    }
    // `a` over the socket, `b` through the HTTP cancel endpoint: both work.
    send(&mut ws, &json!({"type": "cancel", "id": "a"})).await;
    let b_request = request_id(&seen["b"]);
    let cancelled = h
        .client
        .post(h.url(&format!("/v1/requests/{b_request}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    send(&mut ws, &json!({"type": "cancel", "id": "nope"})).await;
    send(&mut ws, &create("c", &chat("fake-model", true))).await;
    let rest = until_ended(&mut ws, 4).await;
    for id in ["a", "b"] {
        let mut messages = seen[id].clone();
        messages.extend(rest[id].iter().cloned());
        let done = messages.last().unwrap();
        assert_eq!(done["type"], "done");
        let finish: Vec<_> = messages
            .iter()
            .filter_map(|m| m["chunk"]["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["stop"], "a closing chunk");
        let completion = done["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(
            (1..300).contains(&completion),
            "billed what was generated: {completion}"
        );
    }
    assert_eq!(rest["nope"][0]["error"]["code"], "completion_not_found");
    assert_eq!(content(&rest["c"]), " w0 w1 w2 w3 w4", "the socket goes on");
    assert_eq!(h.wait_streams_idle().await, 0);
    verify_clean(&h).await;
}

#[tokio::test]
async fn an_abrupt_close_bills_every_completion_and_leaks_no_stream_actor() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.set_default(slow(200, 10));
    let mut ws = connect(&h).await;
    for i in 0..10 {
        send(
            &mut ws,
            &create(&format!("d{i}"), &chat("fake-model", true)),
        )
        .await;
    }
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    while seen.len() < 10 || seen.values().any(|m| m.len() < 3) {
        let message = next(&mut ws).await;
        seen.entry(message["id"].as_str().unwrap().into())
            .or_default()
            .push(message);
    }
    assert_eq!(h.server.streams().stats().live(), 10);
    // No close frame: the TCP connection just goes away.
    drop(ws);
    assert_eq!(h.wait_streams_idle().await, 0, "every stream actor stopped");
    let records = usage_records(&h).await;
    for messages in seen.values() {
        let id = request_id(messages);
        let record = records
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .expect("billed");
        assert_eq!(record["estimated"], true);
        assert_eq!(record["transport"], "ws");
        let completion = record["completion_tokens"].as_u64().unwrap();
        assert!(
            (2..200).contains(&completion),
            "what was relayed: {completion}"
        );
    }
    verify_clean(&h).await;
}

#[tokio::test]
async fn tickets_subprotocols_and_bad_credentials() {
    let config = "[websocket]\nticket_ttl_secs = 1\n";
    let h = Harness::start(Some(config)).await;
    let issue = || async {
        let response = h.client.post(h.url("/v1/ws/ticket")).send().await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["expires_in"], 1);
        body["ticket"].as_str().unwrap().to_owned()
    };
    let unauthenticated = h
        .anonymous
        .post(h.url("/v1/ws/ticket"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let ticket = issue().await;
    let (mut ws, _) = open(&h, &format!("/v1/ws?ticket={ticket}"), &[]).await;
    send(&mut ws, &create("t", &chat("echo-mini", true))).await;
    assert_eq!(
        until_ended(&mut ws, 1).await["t"].last().unwrap()["type"],
        "done"
    );
    let (mut reused, _) = open(&h, &format!("/v1/ws?ticket={ticket}"), &[]).await;
    let frame = closed(&mut reused).await;
    assert_eq!(u16::from(frame.code), 4401);
    assert!(frame.reason.contains("already used"), "{}", frame.reason);

    let late = issue().await;
    // Not synchronization: the ticket's deadline must pass, and it does after its TTL.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut expired, _) = open(&h, &format!("/v1/ws?ticket={late}"), &[]).await;
    assert_eq!(u16::from(closed(&mut expired).await.code), 4401);

    for (offered, echoed) in [
        (format!("bearer, {}", h.api_key), "bearer"),
        (
            format!("realtime, openai-insecure-api-key.{}", h.api_key),
            "realtime",
        ),
    ] {
        let (mut ws, headers) = open(&h, "/v1/ws", &[("sec-websocket-protocol", offered)]).await;
        assert_eq!(headers["sec-websocket-protocol"], echoed);
        send(&mut ws, &create("p", &chat("echo-mini", true))).await;
        assert_eq!(
            until_ended(&mut ws, 1).await["p"].last().unwrap()["type"],
            "done"
        );
    }

    let bad = [
        ("authorization", "Bearer sk-tokun-wrong".to_owned()),
        (
            "sec-websocket-protocol",
            "bearer, sk-tokun-wrong".to_owned(),
        ),
    ];
    for header in bad {
        let (mut ws, _) = open(&h, "/v1/ws", &[header]).await;
        let frame = closed(&mut ws).await;
        assert_eq!(u16::from(frame.code), 4401);
        assert_eq!(frame.reason.as_str(), "Incorrect API key provided.");
    }
    let (mut anonymous, _) = open(&h, "/v1/ws", &[]).await;
    assert_eq!(u16::from(closed(&mut anonymous).await.code), 4401);
    let plain = h.client.get(h.url("/v1/ws")).send().await.unwrap();
    assert_eq!(plain.status(), 400, "not an upgrade");
}

#[tokio::test]
async fn shutdown_lets_completions_finish_then_closes_with_1001() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.push(slow(60, 10));
    let mut ws = connect(&h).await;
    send(&mut ws, &create("long", &chat("fake-model", true))).await;
    let first = next(&mut ws).await;
    assert_eq!(first["type"], "chunk");
    let Harness { server, .. } = h;
    let shutdown = tokio::spawn(server.shutdown());
    let rest = until_ended(&mut ws, 1).await;
    let mut messages = vec![first];
    messages.extend(rest["long"].iter().cloned());
    assert_eq!(messages.last().unwrap()["type"], "done");
    assert_eq!(
        messages.last().unwrap()["usage"]["completion_tokens"],
        60,
        "the completion ran to its end within the grace period"
    );
    let frame = closed(&mut ws).await;
    support::assert_closed_for_shutdown(&frame, shutdown).await;
}
