//! The shell the provider-shaped fakes ([`crate::FakeAnthropic`],
//! [`crate::FakeGemini`]) share: an axum server on 127.0.0.1:0, the queue of
//! [`Script`]s, and a record of every request (path and query, headers, body)
//! so tests can assert what tokun sent and where its credentials went. The
//! wire formats themselves live in each fake's module.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::Script;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path and query, like `/v1beta/models/m:streamGenerateContent?alt=sse`.
    pub path_and_query: String,
    /// Every header, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

impl Recorded {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    /// Whether `needle` appears anywhere except in header `allowed` — the
    /// check that a credential went only where it belongs.
    pub fn contains_outside(&self, needle: &str, allowed: &str) -> bool {
        self.path_and_query.contains(needle)
            || self.body.to_string().contains(needle)
            || self
                .headers
                .iter()
                .any(|(name, value)| name != allowed && value.contains(needle))
    }
}

/// A wire format a fake can speak: the routes it serves over the shared harness.
pub trait WireFormat {
    fn routes(harness: Arc<Harness>) -> Router;
}

/// The scripts and records of one fake, shared with its handlers.
#[derive(Default)]
pub struct Harness {
    scripts: Mutex<VecDeque<Script>>,
    default_script: Mutex<Option<Script>>,
    requests: Mutex<Vec<Recorded>>,
    calls: AtomicUsize,
}

impl Harness {
    /// Counts and records one call, and returns its body and the script to play.
    pub fn begin(&self, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> (Value, Script) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        lock(&self.requests).push(Recorded {
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), ToString::to_string),
            headers,
            body: json.clone(),
        });
        let script = lock(&self.scripts)
            .pop_front()
            .or_else(|| lock(&self.default_script).clone())
            .unwrap_or_default();
        (json, script)
    }
}

/// A running fake speaking `W`; stops when dropped.
pub struct FakeServer<W> {
    addr: SocketAddr,
    harness: Arc<Harness>,
    task: JoinHandle<()>,
    wire: PhantomData<W>,
}

impl<W: WireFormat> FakeServer<W> {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let harness = Arc::new(Harness::default());
        let app = W::routes(harness.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            harness,
            task,
            wire: PhantomData,
        })
    }
}

impl<W> FakeServer<W> {
    /// `http://127.0.0.1:PORT`, the `base_url` to configure (no version path).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a script for the next call.
    pub fn push(&self, script: Script) {
        lock(&self.harness.scripts).push_back(script);
    }

    /// The script used when the queue is empty.
    pub fn set_default(&self, script: Script) {
        *lock(&self.harness.default_script) = Some(script);
    }

    pub fn calls(&self) -> usize {
        self.harness.calls.load(Ordering::SeqCst)
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.harness.requests)
            .iter()
            .map(|recorded| recorded.body.clone())
            .collect()
    }

    /// Every request received (path, headers, body), in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.harness.requests).clone()
    }
}

impl<W> Drop for FakeServer<W> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `(prompt, completion)` tokens a script reports: its `usage`, else 10 and
/// one per token (as the OpenAI fake does).
pub(crate) fn usage_of(script: &Script) -> (u64, u64) {
    script.usage.unwrap_or((10, script.tokens.len() as u64))
}
