//! A fake OpenAI Realtime upstream (tokio-tungstenite on 127.0.0.1:0).
//!
//! It greets each connection with `session.created` and answers every
//! `response.create` with the next queued [`RealtimeScript`] (or the
//! default): `response.created`, text deltas, then `response.done` with
//! usage — or it drops the connection mid-response, or keeps the response
//! open. It records each handshake (URI, `Authorization`) and every text
//! frame a client sent, byte for byte.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the fake does for one `response.create`.
#[derive(Debug, Clone)]
pub struct RealtimeScript {
    pub deltas: Vec<String>,
    /// `(input_tokens, output_tokens)` in `response.done`; `None` omits `usage`.
    pub usage: Option<(u64, u64)>,
    /// Drop the TCP connection (no close frame) after this many deltas.
    pub drop_after: Option<usize>,
    /// Never send `response.done`: the response stays open.
    pub hold_open: bool,
    /// Answer nothing at all: the response is never started.
    pub silent: bool,
    /// `input_token_details.cached_tokens` in `response.done`'s usage.
    pub cached_tokens: u64,
}

impl Default for RealtimeScript {
    fn default() -> Self {
        Self {
            deltas: ["Hello", " from", " realtime"].map(String::from).to_vec(),
            usage: Some((12, 3)),
            drop_after: None,
            hold_open: false,
            silent: false,
            cached_tokens: 0,
        }
    }
}

/// One upgrade request the fake accepted.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub uri: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<RealtimeScript>>,
    handshakes: Mutex<Vec<Handshake>>,
    received: Mutex<Vec<String>>,
    closed: AtomicU64,
    responses: AtomicU64,
}

/// The running fake; stops accepting when dropped.
pub struct FakeRealtime {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeRealtime {
    pub async fn start() -> std::io::Result<FakeRealtime> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, accepting.clone()));
            }
        });
        Ok(FakeRealtime { addr, shared, task })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime`, the `realtime_url` to configure.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    pub fn push(&self, script: RealtimeScript) {
        lock(&self.shared.scripts).push_back(script);
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.shared.handshakes).clone()
    }

    /// Every text frame clients sent, in order.
    pub fn received(&self) -> Vec<String> {
        lock(&self.shared.received).clone()
    }

    /// Connections that ended (closed by the client or dropped).
    pub fn closed(&self) -> u64 {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

impl Drop for FakeRealtime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(tcp: TcpStream, shared: Arc<Shared>) {
    let record = shared.clone();
    #[expect(
        clippy::result_large_err,
        reason = "the signature is tungstenite's handshake callback"
    )]
    let callback = move |request: &Request, response: Response| {
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        lock(&record.handshakes).push(Handshake {
            uri: request.uri().to_string(),
            authorization,
        });
        Ok(response)
    };
    if let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
        let hello = json!({"type": "session.created", "event_id": "event_0", "session": {"id": "sess_fake", "object": "realtime.session"}});
        if socket.send(Message::text(hello.to_string())).await.is_ok() {
            converse(&mut socket, &shared).await;
        }
    }
    shared.closed.fetch_add(1, Ordering::SeqCst);
}

async fn converse<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, shared: &Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        lock(&shared.received).push(text.to_string());
        let event: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if event["type"] != "response.create" {
            continue;
        }
        let script = lock(&shared.scripts).pop_front().unwrap_or_default();
        let n = shared.responses.fetch_add(1, Ordering::SeqCst);
        for event in response_events(&format!("resp_{n}"), &script) {
            match event {
                Some(event) => {
                    if socket.send(Message::text(event.to_string())).await.is_err() {
                        return;
                    }
                }
                // Dropping the socket without a close frame: a network drop.
                None => return,
            }
        }
    }
}

/// The events answering one `response.create`; `None` means "drop now".
fn response_events(id: &str, script: &RealtimeScript) -> Vec<Option<Value>> {
    if script.silent {
        return Vec::new();
    }
    let mut events = vec![Some(json!({
        "type": "response.created", "event_id": format!("event_{id}_created"),
        "response": {"id": id, "object": "realtime.response", "status": "in_progress", "output": [], "usage": null},
    }))];
    for (i, delta) in script.deltas.iter().enumerate() {
        if script.drop_after == Some(i) {
            events.push(None);
            return events;
        }
        events.push(Some(json!({
            "type": "response.text.delta", "event_id": format!("event_{id}_{i}"),
            "response_id": id, "item_id": format!("item_{id}"), "output_index": 0, "content_index": 0,
            "delta": delta,
        })));
    }
    if script.drop_after.is_some() {
        events.push(None);
    } else if !script.hold_open {
        let mut response = json!({
            "id": id, "object": "realtime.response", "status": "completed",
            "output": [{"type": "message", "content": [{"type": "text", "text": script.deltas.concat()}]}],
        });
        if let Some((input, output)) = script.usage {
            response["usage"] = json!({
                "total_tokens": input + output, "input_tokens": input, "output_tokens": output,
                "input_token_details": {"cached_tokens": script.cached_tokens, "text_tokens": input, "audio_tokens": 0},
                "output_token_details": {"text_tokens": output, "audio_tokens": 0},
            });
        }
        events.push(Some(json!({"type": "response.done", "event_id": format!("event_{id}_done"), "response": response})));
    }
    events
}
