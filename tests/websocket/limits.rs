//! Socket limits: oversize frames, bad messages, per-socket caps, pings,
//! stalled readers, and metering equal to SSE.

use super::*;

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
