//! A fake Stripe (axum on 127.0.0.1:0) for tokun's payment tests.
//!
//! It accepts `POST /v1/checkout/sessions` the way Stripe does (a
//! form-encoded body, bearer key), records each call, and answers with a
//! minimal but complete Checkout Session (the fields async-stripe requires).
//! It can fail the next create call with a Stripe error. And it plays
//! Stripe's webhook side: it builds events for the sessions it created
//! (completed, async succeeded/failed, expired, refunded) and delivers them
//! to tokun signed like Stripe signs them (HMAC-SHA256 over
//! `"{t}.{body}"`), or with whatever signature a test wants to forge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinHandle;

/// One `POST /v1/checkout/sessions` the fake received.
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub id: String,
    /// The form parameters, flattened the way Stripe's API takes them
    /// (`line_items[0][price_data][unit_amount]`, `metadata[k]`, …).
    pub params: BTreeMap<String, String>,
    /// The `Authorization` header it came with.
    pub authorization: Option<String>,
}

impl CreatedSession {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.param(&format!("metadata[{key}]"))
    }

    /// `unit_amount × quantity` of the one line item, in cents.
    pub fn amount_cents(&self) -> i64 {
        let number = |name: &str| self.param(name).and_then(|v| v.parse::<i64>().ok());
        let unit = number("line_items[0][price_data][unit_amount]").unwrap_or(0);
        unit * number("line_items[0][quantity]").unwrap_or(1)
    }

    pub fn payment_intent(&self) -> String {
        format!("pi_{}", self.id.trim_start_matches("cs_test_"))
    }

    pub fn charge(&self) -> String {
        format!("ch_{}", self.id.trim_start_matches("cs_test_"))
    }
}

#[derive(Default)]
struct Shared {
    sessions: Mutex<Vec<CreatedSession>>,
    /// Answer the next create call with this status and a Stripe error.
    fail_next: Mutex<Option<u16>>,
    counter: AtomicU64,
}

/// The running fake; stops when dropped.
pub struct FakeStripe {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    client: reqwest::Client,
}

impl FakeStripe {
    pub async fn start() -> std::io::Result<FakeStripe> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/checkout/sessions", post(create_session))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeStripe {
            addr,
            shared,
            task,
            client: reqwest::Client::new(),
        })
    }

    /// `http://127.0.0.1:PORT`, the `stripe.api_base` to configure.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every Checkout Session created so far, in order.
    pub fn sessions(&self) -> Vec<CreatedSession> {
        lock(&self.shared.sessions).clone()
    }

    pub fn session(&self, id: &str) -> Option<CreatedSession> {
        self.sessions().into_iter().find(|s| s.id == id)
    }

    /// The next create call fails with `status` and a Stripe error body.
    pub fn fail_next(&self, status: u16) {
        *lock(&self.shared.fail_next) = Some(status);
    }

    /// A fresh event id.
    pub fn event_id(&self) -> String {
        format!(
            "evt_test_{}",
            self.shared.counter.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// An event of `kind` around `object`, as Stripe sends it.
    pub fn event(&self, kind: &str, object: Value) -> Value {
        json!({
            "id": self.event_id(),
            "object": "event",
            "api_version": "2025-03-31.basil",
            "created": now_secs(),
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": kind,
            "data": {"object": object},
        })
    }

    /// The session object of a `checkout.session.*` event for `session`.
    pub fn session_object(&self, session: &CreatedSession, payment_status: &str) -> Value {
        let metadata: BTreeMap<_, _> = session
            .params
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                Some((key.to_owned(), v.clone()))
            })
            .collect();
        json!({
            "id": session.id,
            "object": "checkout.session",
            "mode": "payment",
            "status": if payment_status == "paid" { "complete" } else { "open" },
            "payment_status": payment_status,
            "amount_subtotal": session.amount_cents(),
            "amount_total": session.amount_cents(),
            "currency": session.param("line_items[0][price_data][currency]").unwrap_or("usd"),
            "client_reference_id": session.param("client_reference_id"),
            "metadata": metadata,
            "payment_intent": session.payment_intent(),
            "livemode": false,
        })
    }

    /// `checkout.session.completed` for `session`, paid in full.
    pub fn completed(&self, session: &CreatedSession) -> Value {
        self.event(
            "checkout.session.completed",
            self.session_object(session, "paid"),
        )
    }

    /// `charge.refunded` for `session`'s charge, `refunded_cents` refunded
    /// so far (Stripe's `amount_refunded` is cumulative).
    pub fn refunded(&self, session: &CreatedSession, refunded_cents: i64) -> Value {
        let amount = session.amount_cents();
        self.event(
            "charge.refunded",
            json!({
                "id": session.charge(),
                "object": "charge",
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": refunded_cents,
                "currency": "usd",
                "paid": true,
                "refunded": refunded_cents >= amount,
                "payment_intent": session.payment_intent(),
            }),
        )
    }

    /// Delivers `event` to `url`, signed with `secret` now.
    pub async fn deliver(&self, url: &str, secret: &str, event: &Value) -> reqwest::Response {
        let body = event.to_string();
        let header = sign(body.as_bytes(), secret, now_secs());
        self.deliver_raw(url, body, Some(&header)).await
    }

    /// Delivers `body` with the given `Stripe-Signature` header (or none).
    pub async fn deliver_raw(
        &self,
        url: &str,
        body: impl Into<reqwest::Body>,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        match request.send().await {
            Ok(response) => response,
            Err(error) => delivery_failed(&error),
        }
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `Stripe-Signature` header Stripe sends for `payload` at `timestamp`.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return format!("t={timestamp}");
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A delivery that could not even be sent is a broken test setup.
#[expect(clippy::panic, reason = "a test fake fails the test loudly")]
fn delivery_failed(error: &reqwest::Error) -> ! {
    panic!("delivering a webhook to tokun failed: {error}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn create_session(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    if let Some(status) = lock(&shared.fail_next).take() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let error =
            json!({"error": {"type": "invalid_request_error", "message": "Scripted failure."}});
        return (status, axum::Json(error)).into_response();
    }
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    let created = CreatedSession {
        id: format!("cs_test_{n:06}"),
        params: pairs.into_iter().collect(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let body = session_response(&created);
    lock(&shared.sessions).push(created);
    axum::Json(body).into_response()
}

/// A Checkout Session with every field async-stripe requires.
fn session_response(session: &CreatedSession) -> Value {
    let now = now_secs();
    let metadata: BTreeMap<_, _> = session
        .params
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_owned(), v.clone()))
        })
        .collect();
    json!({
        "id": session.id,
        "object": "checkout.session",
        "automatic_tax": {"enabled": false, "liability": null, "status": null},
        "created": now,
        "expires_at": now + 24 * 3600,
        "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
            "terms_of_service_acceptance": null},
        "livemode": false,
        "mode": "payment",
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "shipping_options": [],
        "status": "open",
        "amount_subtotal": session.amount_cents(),
        "amount_total": session.amount_cents(),
        "currency": session.param("line_items[0][price_data][currency]"),
        "client_reference_id": session.param("client_reference_id"),
        "metadata": metadata,
        "success_url": session.param("success_url"),
        "cancel_url": session.param("cancel_url"),
        "url": format!("https://checkout.stripe.test/c/pay/{}", session.id),
    })
}
