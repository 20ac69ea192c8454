//! Chat completions over `GET /v1/ws` through a real listener, with
//! tokio-tungstenite clients (and a hand-rolled one where a test needs a
//! client that never answers pings or never reads): multiplexing, cancel,
//! abrupt closes, tickets and subprotocol auth, limits, keep-alive,
//! backpressure, and metering equal to SSE.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Harness, chat, upstream_config};
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
    let report: Value = h
        .anonymous
        .get(h.url("/admin/ledger/verify"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert!(
        h.server.services().store.open_holds().unwrap().is_empty(),
        "every hold closed"
    );
}

async fn usage_records(h: &Harness) -> Vec<Value> {
    let usage: Value = h
        .client
        .get(h.url("/v1/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
async fn an_oversize_frame_closes_the_socket_with_1009() {
    let h = Harness::start(Some("[websocket]\nmax_frame_bytes = 4096\n")).await;
    let mut ws = connect(&h).await;
    let mut body = chat("echo-mini", true);
    body["messages"][0]["content"] = json!("x".repeat(8000));
    send(&mut ws, &create("big", &body)).await;
    let frame = closed(&mut ws).await;
    assert_eq!(u16::from(frame.code), 1009);
    assert!(frame.reason.contains("4096"), "{}", frame.reason);
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_stays_usable() {
    let h = Harness::start(None).await;
    let mut ws = connect(&h).await;
    ws.send(Message::text("{not json")).await.unwrap();
    let error = next(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error["error"]["code"], "invalid_json");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next(&mut ws).await["error"]["code"], "unsupported_frame");
    send(&mut ws, &json!({"type": "dance", "id": "d"})).await;
    let error = next(&mut ws).await;
    assert_eq!(
        (error["id"].as_str(), error["error"]["code"].as_str()),
        (Some("d"), Some("unknown_message_type"))
    );
    send(
        &mut ws,
        &create(
            "m",
            &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        ),
    )
    .await;
    let error = next(&mut ws).await;
    assert_eq!(
        (error["id"].as_str(), error["error"]["code"].as_str()),
        (Some("m"), Some("model_not_found"))
    );
    send(
        &mut ws,
        &create("v", &json!({"model": "echo-mini", "messages": "no"})),
    )
    .await;
    assert_eq!(next(&mut ws).await["error"]["param"], "request.messages");
    send(&mut ws, &create("ok", &chat("echo-mini", true))).await;
    assert_eq!(
        until_ended(&mut ws, 1).await["ok"].last().unwrap()["type"],
        "done"
    );
}

#[tokio::test]
async fn per_socket_limits_give_clear_errors_for_that_id_only() {
    let upstream = FakeUpstream::start().await.unwrap();
    let extra = "[websocket]\nmax_completions = 2\nmax_messages_per_sec = 6\n";
    let h = Harness::start(Some(&upstream_config(&upstream, extra))).await;
    upstream.set_default(slow(40, 5));
    let mut ws = connect(&h).await;
    let mut batch = vec![
        create("one", &chat("fake-model", true)),
        create("one", &chat("fake-model", true)),
        create("two", &chat("fake-model", true)),
        create("three", &chat("fake-model", true)),
    ];
    batch.extend((0..4).map(|i| json!({"type": "cancel", "id": format!("flood{i}")})));
    // One write: the eight messages arrive together, well inside one second.
    for message in &batch {
        ws.feed(Message::text(message.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    let done = |by_id: &HashMap<String, Vec<Value>>, id: &str| {
        by_id
            .get(id)
            .is_some_and(|m| m.iter().any(|m| m["type"] == "done"))
    };
    while !(done(&by_id, "one") && done(&by_id, "two")) {
        let message = next(&mut ws).await;
        by_id
            .entry(message["id"].as_str().unwrap().into())
            .or_default()
            .push(message);
    }
    let one = &by_id["one"];
    let duplicate = one
        .iter()
        .find(|m| m["type"] == "error")
        .expect("duplicate refused");
    assert_eq!(duplicate["error"]["code"], "conflict");
    assert_eq!(
        one.last().unwrap()["type"],
        "done",
        "the first `one` went on"
    );
    assert_eq!(by_id["three"][0]["error"]["type"], "rate_limit_error");
    assert!(
        by_id["three"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 completions")
    );
    let flooded: Vec<&str> = (0..4)
        .filter_map(|i| by_id.get(&format!("flood{i}")))
        .map(|m| m[0]["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        flooded,
        [
            "completion_not_found",
            "completion_not_found",
            "rate_limit_exceeded",
            "rate_limit_exceeded"
        ]
    );
    assert_eq!(h.wait_streams_idle().await, 0);
}

/// A WebSocket client by hand, for what tungstenite's client would not do:
/// never answer a ping, never read.
struct RawClient {
    tcp: TcpStream,
}

impl RawClient {
    async fn connect(h: &Harness) -> RawClient {
        // A small receive window, so a client that stops reading stalls tokun's writes soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8192).unwrap();
        let mut tcp = socket.connect(h.server.addr()).await.unwrap();
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
            h.server.addr(),
            h.api_key
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawClient { tcp }
    }

    /// A masked text frame (with a zero mask: clients must mask, any key will do).
    async fn send_text(&mut self, text: &str) {
        let mut frame = vec![0x81];
        let len = text.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(text.as_bytes());
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// The next frame's opcode and payload; `None` once the server is gone.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.tcp.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7f {
            126 => u64::from(self.tcp.read_u16().await.ok()?),
            127 => self.tcp.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        self.tcp.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_4408() {
    let h = Harness::start(Some(
        "[websocket]\nping_interval_ms = 100\npong_timeout_ms = 200\n",
    ))
    .await;
    let mut raw = RawClient::connect(&h).await;
    let mut opcodes = Vec::new();
    let close = tokio::time::timeout(WAIT, async {
        loop {
            let (opcode, payload) = raw.next_frame().await.expect("a close frame first");
            opcodes.push(opcode);
            if opcode == 0x8 {
                return payload;
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(opcodes.first(), Some(&0x9), "pinged first");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4408);
    assert!(String::from_utf8_lossy(&close[2..]).contains("pong"));
}

#[tokio::test]
async fn a_reader_that_stalls_pauses_its_completion_and_is_dropped() {
    let upstream = FakeUpstream::start().await.unwrap();
    let extra = "[websocket]\nstall_timeout_ms = 300\n";
    let h = Harness::start(Some(&upstream_config(&upstream, extra))).await;
    // 2,000 chunks of ~8 KB: far more than the socket buffers hold (4 MiB at most).
    let words = " word".repeat(1600);
    upstream.push(Script {
        tokens: vec![words; 2000],
        ..Script::default()
    });
    let mut raw = RawClient::connect(&h).await;
    let request = create("big", &chat("fake-model", true)).to_string();
    raw.send_text(&request).await;
    let stats = h.server.streams().stats().clone();
    wait_until(|| stats.total_started() == 1).await;
    wait_until(|| stats.live() == 0).await;
    let records = usage_records(&h).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["estimated"], true);
    let relayed = records[0]["completion_tokens"].as_u64().unwrap();
    assert!(relayed < 2000 * 1600, "stopped early: {relayed} tokens");
    // The server dropped the connection: what it had written, then the end.
    tokio::time::timeout(WAIT, async { while raw.next_frame().await.is_some() {} })
        .await
        .expect("the connection ends");
    verify_clean(&h).await;
}

#[tokio::test]
async fn metering_is_identical_over_sse_and_websocket() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let mut body = chat("fake-model", true);
    body["max_tokens"] = json!(300);
    let (headers, _) = h.stream_events(&body).await;
    let sse_id = headers["x-request-id"].to_str().unwrap().to_owned();
    let mut ws = connect(&h).await;
    send(&mut ws, &create("same", &body)).await;
    let ws_id = request_id(&until_ended(&mut ws, 1).await["same"]);
    let entries = |id: &str| -> Vec<(String, i64, bool)> {
        h.server
            .services()
            .store
            .entries(0)
            .map(Result::unwrap)
            .filter(|e| e.request_id.as_deref() == Some(id))
            .map(|e| (format!("{:?}", e.kind), e.amount.get(), e.estimated))
            .collect()
    };
    let (sse, ws) = (entries(&sse_id), entries(&ws_id));
    assert!(sse.len() >= 3, "hold, settle, release: {sse:?}");
    assert_eq!(sse, ws);
    let records = usage_records(&h).await;
    let cost = |id: &str| records.iter().find(|r| r["request_id"] == id).unwrap()["cost"].clone();
    assert_eq!(cost(&sse_id), cost(&ws_id));
    verify_clean(&h).await;
}
