//! A fake OpenAI-compatible upstream (axum on 127.0.0.1:0).
//!
//! Each call takes the next queued [`Script`] (or the default one): the
//! tokens to stream, delays, an error status, a drop after N chunks, garbage
//! SSE, a hang. It records every request body and counts calls, so tests can
//! assert what tokun sent upstream.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// What the fake upstream does for one call.
#[derive(Debug, Clone)]
pub struct Script {
    pub tokens: Vec<String>,
    /// Before the response headers.
    pub first_byte_delay: Duration,
    /// Between streamed chunks.
    pub delay: Duration,
    /// Answer with this status and an OpenAI error body instead.
    pub status: Option<u16>,
    pub retry_after_secs: Option<u64>,
    /// Close the connection after this many content chunks (no finish, no usage, no [DONE]).
    pub drop_after: Option<usize>,
    /// Send a line of invalid JSON after this many content chunks.
    pub garbage_after: Option<usize>,
    /// Send an SSE error event after this many content chunks.
    pub error_event_after: Option<usize>,
    /// Usage to report; `None` computes prompt = 10, completion = number of tokens.
    pub usage: Option<(u64, u64)>,
    /// Never send the usage chunk.
    pub omit_usage: bool,
    /// Of the prompt tokens, those served from the prompt cache, reported
    /// as `prompt_tokens_details.cached_tokens` (absent when `None`).
    pub cached_tokens: Option<u64>,
    /// Never answer at all.
    pub hang: bool,
    /// Extra response headers, e.g. `x-ratelimit-remaining-requests`.
    pub headers: Vec<(&'static str, String)>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            tokens: ["Hello", " from", " the", " fake", " upstream", "."]
                .map(String::from)
                .to_vec(),
            first_byte_delay: Duration::ZERO,
            delay: Duration::ZERO,
            status: None,
            retry_after_secs: None,
            drop_after: None,
            garbage_after: None,
            error_event_after: None,
            usage: None,
            omit_usage: false,
            cached_tokens: None,
            hang: false,
            headers: Vec::new(),
        }
    }
}

impl Script {
    pub fn tokens(n: usize) -> Self {
        Self {
            tokens: (0..n).map(|i| format!(" t{i}")).collect(),
            ..Self::default()
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<Script>>,
    default_script: Mutex<Option<Script>>,
    requests: Mutex<Vec<Value>>,
    calls: AtomicUsize,
}

/// The running fake; stops when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start() -> std::io::Result<FakeUpstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeUpstream { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT/v1`, the `base_url` to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a script for the next call.
    pub fn push(&self, script: Script) {
        lock(&self.shared.scripts).push_back(script);
    }

    /// The script used when the queue is empty.
    pub fn set_default(&self, script: Script) {
        *lock(&self.shared.default_script) = Some(script);
    }

    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts and records a call, takes its script, and waits as it says
/// (`hang` forever, else `first_byte_delay`).
async fn begin(shared: &Shared, body: &Bytes) -> (Value, Script) {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    lock(&shared.requests).push(request.clone());
    let script = lock(&shared.scripts)
        .pop_front()
        .or_else(|| lock(&shared.default_script).clone())
        .unwrap_or_default();
    if script.hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(script.first_byte_delay).await;
    (request, script)
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let (request, script) = begin(&shared, &body).await;
    let headers = script.headers.clone();
    let response = if let Some(status) = script.status {
        error_response(status, script.retry_after_secs)
    } else {
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("fake")
            .to_string();
        if request.get("stream").and_then(Value::as_bool) == Some(true) {
            stream_response(script, model)
        } else {
            completion_response(&script, &model)
        }
    };
    with_headers(response, &headers)
}

/// `POST /v1/embeddings` under the same script: `hang`, `first_byte_delay`
/// and `status` apply; otherwise one small vector per input, and usage from
/// `usage.0` (or 2 tokens per input).
async fn embeddings(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let (request, script) = begin(&shared, &body).await;
    if let Some(status) = script.status {
        return error_response(status, script.retry_after_secs);
    }
    let inputs = match request.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": [0.1, 0.2, 0.3]}))
        .collect();
    let prompt_tokens = script.usage.map_or(2 * inputs as u64, |(prompt, _)| prompt);
    let model = request.get("model").cloned().unwrap_or(Value::Null);
    let body = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}});
    with_headers(axum::Json(body).into_response(), &script.headers)
}

/// Adds a script's extra headers (invalid ones are skipped).
pub(crate) fn with_headers(mut response: Response, headers: &[(&'static str, String)]) -> Response {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    response
}

fn error_response(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": format!("fake upstream says {}", status.as_u16()), "type": "server_error", "param": null, "code": null}});
    let mut response = (status, body.to_string()).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn usage_of(script: &Script) -> Value {
    let (prompt, completion) = script.usage.unwrap_or((10, script.tokens.len() as u64));
    let mut usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    if let Some(cached) = script.cached_tokens {
        usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    usage
}

fn completion_response(script: &Script, model: &str) -> Response {
    let content: String = script.tokens.concat();
    let mut body = json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "system_fingerprint": "fp_fake",
    });
    if !script.omit_usage {
        body["usage"] = usage_of(script);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        "usage": null,
    });
    format!("data: {chunk}\n\n")
}

fn stream_response(script: Script, model: String) -> Response {
    let frames = futures_util::stream::unfold(
        (0usize, script, model),
        |(step, script, model)| async move {
            let n = script.tokens.len();
            if step > 0 && step <= n + 2 {
                tokio::time::sleep(script.delay).await;
            }
            let content_sent = step.saturating_sub(1);
            let frame = if step == 0 {
                chunk(
                    &model,
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    None,
                )
            } else if script.drop_after == Some(content_sent) {
                return Some((
                    Err(std::io::Error::other("dropped")),
                    (usize::MAX, script, model),
                ));
            } else if script.garbage_after == Some(content_sent) {
                "data: {\"id\": not json\n\n".to_string()
            } else if script.error_event_after == Some(content_sent) {
                "data: {\"error\":{\"message\":\"fake mid-stream failure\",\"type\":\"server_error\"}}\n\n".to_string()
            } else if step <= n {
                chunk(&model, json!({"content": script.tokens[step - 1]}), None)
            } else if step == n + 1 {
                chunk(&model, json!({}), Some("stop"))
            } else if step == n + 2 && !script.omit_usage {
                let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [], "usage": usage_of(&script)});
                format!(": keep-alive\n\ndata: {usage}\n\n")
            } else if step <= n + 3 {
                "data: [DONE]\n\n".to_string()
            } else {
                return None;
            };
            let next = if step == n + 1 && script.omit_usage {
                step + 2
            } else {
                step + 1
            };
            Some((Ok(Bytes::from(frame)), (next, script, model)))
        },
    );
    // An `Err` item makes hyper abort the connection mid-body: a real drop.
    let mut response = Response::new(Body::from_stream(frames));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}
