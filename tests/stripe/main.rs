//! Stripe top-ups through real listeners: tokun on 127.0.0.1:0 in front of
//! the fake Stripe, which records the Checkout Sessions tokun creates and
//! delivers signed webhooks back. Money moves exactly once, forged events
//! change nothing, refunds debit, orphans reach the operator, and the
//! ledger verifies clean after all of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod checkout;
mod webhook;

use serde_json::{Value, json};
use support::Harness;
use tokun_storage::EntryKind;
use tokun_testkit::FakeStripe;
use tokun_testkit::stripe::CreatedSession;

pub const SECRET_KEY: &str = "sk_test_fake_key_123";
pub const WEBHOOK_SECRET: &str = "whsec_test_fake_456";

pub async fn start() -> (Harness, FakeStripe) {
    let stripe = FakeStripe::start().await.unwrap();
    let toml = format!(
        "[server]\nmax_body_bytes = 65536\n\n[stripe]\nsecret_key = \"{SECRET_KEY}\"\n\
         webhook_secret = \"{WEBHOOK_SECRET}\"\napi_base = \"{}\"\nmax_topup_usd = 500.0\n",
        stripe.api_base()
    );
    (Harness::start(Some(&toml)).await, stripe)
}

pub async fn get(h: &Harness, path: &str) -> Value {
    let response = h.client.get(h.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

pub async fn admin_get(h: &Harness, path: &str) -> Value {
    let request = h.anonymous.get(h.url(path)).bearer_auth(&h.admin_token);
    request.send().await.unwrap().json().await.unwrap()
}

pub async fn balance(h: &Harness) -> i64 {
    get(h, "/v1/account").await["balance_nanos"]
        .as_i64()
        .unwrap()
}

pub async fn verify_clean(h: &Harness) {
    let report = admin_get(h, "/admin/ledger/verify").await;
    assert_eq!(report["clean"], true, "{report}");
}

/// Opens a top-up of `amount` (JSON) and returns what the fake Stripe saw.
pub async fn topup(h: &Harness, stripe: &FakeStripe, amount: Value) -> CreatedSession {
    let response = h
        .post_json("/v1/topups", &json!({"amount_usd": amount}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.test/")
    );
    stripe.session(id).unwrap()
}

pub async fn deliver(h: &Harness, stripe: &FakeStripe, event: &Value) -> (u16, Value) {
    let response = stripe
        .deliver(&h.url("/stripe/webhook"), WEBHOOK_SECRET, event)
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn payment(h: &Harness, id: &str) -> Value {
    let payments = get(h, "/v1/payments").await;
    let data = payments["data"].as_array().unwrap();
    data.iter().find(|p| p["id"] == id).cloned().unwrap()
}

/// The ledger entries of `kind` that name `reference`.
pub fn entries(h: &Harness, kind: EntryKind, reference: &str) -> Vec<i64> {
    let store = &h.server.services().store;
    store
        .entries(0)
        .map(Result::unwrap)
        .filter(|e| e.kind == kind && e.reference.as_deref() == Some(reference))
        .map(|e| e.amount.get())
        .collect()
}
