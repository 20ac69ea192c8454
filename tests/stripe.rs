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

mod support;

use serde_json::{Value, json};
use support::Harness;
use tokun_storage::{EntryKind, WriteOp};
use tokun_testkit::FakeStripe;
use tokun_testkit::stripe::{CreatedSession, now_secs, sign};

const SECRET_KEY: &str = "sk_test_fake_key_123";
const WEBHOOK_SECRET: &str = "whsec_test_fake_456";

async fn start() -> (Harness, FakeStripe) {
    let stripe = FakeStripe::start().await.unwrap();
    let toml = format!(
        "[server]\nmax_body_bytes = 65536\n\n[stripe]\nsecret_key = \"{SECRET_KEY}\"\n\
         webhook_secret = \"{WEBHOOK_SECRET}\"\napi_base = \"{}\"\nmax_topup_usd = 500.0\n",
        stripe.api_base()
    );
    (Harness::start(Some(&toml)).await, stripe)
}

async fn get(h: &Harness, path: &str) -> Value {
    let response = h.client.get(h.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn admin_get(h: &Harness, path: &str) -> Value {
    let request = h.anonymous.get(h.url(path)).bearer_auth(&h.admin_token);
    request.send().await.unwrap().json().await.unwrap()
}

async fn balance(h: &Harness) -> i64 {
    get(h, "/v1/account").await["balance_nanos"]
        .as_i64()
        .unwrap()
}

async fn verify_clean(h: &Harness) {
    let report = admin_get(h, "/admin/ledger/verify").await;
    assert_eq!(report["clean"], true, "{report}");
}

/// Opens a top-up of `amount` (JSON) and returns what the fake Stripe saw.
async fn topup(h: &Harness, stripe: &FakeStripe, amount: Value) -> CreatedSession {
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

async fn deliver(h: &Harness, stripe: &FakeStripe, event: &Value) -> (u16, Value) {
    let response = stripe
        .deliver(&h.url("/stripe/webhook"), WEBHOOK_SECRET, event)
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn payment(h: &Harness, id: &str) -> Value {
    let payments = get(h, "/v1/payments").await;
    let data = payments["data"].as_array().unwrap();
    data.iter().find(|p| p["id"] == id).cloned().unwrap()
}

/// The ledger entries of `kind` that name `reference`.
fn entries(h: &Harness, kind: EntryKind, reference: &str) -> Vec<i64> {
    let store = &h.server.services().store;
    store
        .entries(0)
        .map(Result::unwrap)
        .filter(|e| e.kind == kind && e.reference.as_deref() == Some(reference))
        .map(|e| e.amount.get())
        .collect()
}

#[tokio::test]
async fn a_topup_creates_a_checkout_session_stripe_sees_correctly() {
    let (h, stripe) = start().await;
    let account = get(&h, "/v1/account").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = topup(&h, &stripe, json!(10.5)).await;
    assert_eq!(session.amount_cents(), 1050);
    assert_eq!(session.param("mode"), Some("payment"));
    assert_eq!(
        session.param("line_items[0][price_data][currency]"),
        Some("usd")
    );
    assert_eq!(session.param("line_items[0][quantity]"), Some("1"));
    assert_eq!(session.param("client_reference_id"), Some(account.as_str()));
    assert_eq!(session.metadata("tokun_account"), Some(account.as_str()));
    assert_eq!(session.metadata("tokun_amount_usd"), Some("10.50"));
    assert_eq!(session.metadata("tokun_amount_cents"), Some("1050"));
    assert!(
        session
            .param("success_url")
            .unwrap()
            .contains("{CHECKOUT_SESSION_ID}")
    );
    assert!(session.param("cancel_url").is_some());
    assert_eq!(
        session.authorization.as_deref(),
        Some(&*format!("Bearer {SECRET_KEY}"))
    );
    let listed = payment(&h, &session.id).await;
    assert_eq!(
        (listed["status"].as_str(), listed["amount_usd"].as_str()),
        (Some("open"), Some("10.50"))
    );
    // A decimal string works as well as a number.
    assert_eq!(topup(&h, &stripe, json!("25")).await.amount_cents(), 2500);
    assert_eq!(
        get(&h, "/v1/payments").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn bad_topups_are_400_and_never_reach_stripe() {
    let (h, stripe) = start().await;
    let bodies = [
        r#"{"amount_usd": 10.005}"#,
        r#"{"amount_usd": "10.001"}"#,
        r#"{"amount_usd": 10.0000000000000001}"#,
        r#"{"amount_usd": 1}"#,
        r#"{"amount_usd": 500.01}"#,
        r#"{"amount_usd": -20}"#,
        r#"{"amount_usd": 1e2}"#,
        r#"{"amount_usd": "ten"}"#,
        r#"{"amount_usd": null}"#,
        r#"{}"#,
        r#"{"amount_usd": 10, "extra": 1}"#,
        r#"{"amount_usd": 10"#,
    ];
    for body in bodies {
        let request = h
            .client
            .post(h.url("/v1/topups"))
            .header("content-type", "application/json");
        let response = request.body(body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    assert!(stripe.sessions().is_empty());
    let anonymous = h
        .anonymous
        .post(h.url("/v1/topups"))
        .json(&json!({"amount_usd": 10}));
    assert_eq!(anonymous.send().await.unwrap().status(), 401);
    // Stripe refusing: no payment recorded, no secret in the answer.
    stripe.fail_next(401);
    let response = h.post_json("/v1/topups", &json!({"amount_usd": 10})).await;
    assert_eq!(response.status(), 503);
    assert!(!response.text().await.unwrap().contains(SECRET_KEY));
    assert!(
        get(&h, "/v1/payments").await["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn without_stripe_configured_topups_answer_501() {
    let h = Harness::start(None).await;
    let response = h.post_json("/v1/topups", &json!({"amount_usd": 10})).await;
    assert_eq!(response.status(), 501);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[stripe]"),
        "{error}"
    );
    let hook = h.anonymous.post(h.url("/stripe/webhook")).body("{}");
    assert_eq!(hook.send().await.unwrap().status(), 501);
}

#[tokio::test]
async fn a_signed_completed_event_credits_once_with_its_ledger_entry() {
    let (h, stripe) = start().await;
    let before = balance(&h).await;
    let session = topup(&h, &stripe, json!(20)).await;
    let event = stripe.completed(&session);
    let (status, body) = deliver(&h, &stripe, &event).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("credited")));
    assert_eq!(balance(&h).await, before + 20_000_000_000);
    assert_eq!(
        entries(&h, EntryKind::Topup, &session.id),
        vec![20_000_000_000]
    );
    let listed = payment(&h, &session.id).await;
    assert_eq!(
        (listed["status"].as_str(), listed["paid_usd"].as_str()),
        (Some("paid"), Some("20.00"))
    );
    // Redelivered, and the same session under a second event type: nothing more.
    assert_eq!(deliver(&h, &stripe, &event).await.1["outcome"], "duplicate");
    let again = stripe.event(
        "checkout.session.async_payment_succeeded",
        event["data"]["object"].clone(),
    );
    assert_eq!(deliver(&h, &stripe, &again).await.1["outcome"], "duplicate");
    let expired = stripe.event("checkout.session.expired", event["data"]["object"].clone());
    assert_eq!(deliver(&h, &stripe, &expired).await.1["outcome"], "ignored");
    assert_eq!(balance(&h).await, before + 20_000_000_000);
    assert_eq!(entries(&h, EntryKind::Topup, &session.id).len(), 1);
    verify_clean(&h).await;
}

#[tokio::test]
async fn the_same_event_delivered_five_times_at_once_credits_once() {
    let (h, stripe) = start().await;
    let before = balance(&h).await;
    let session = topup(&h, &stripe, json!(7.25)).await;
    let event = stripe.completed(&session);
    let deliveries = (0..5).map(|_| deliver(&h, &stripe, &event));
    let results = futures_util::future::join_all(deliveries).await;
    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    let credited = results
        .iter()
        .filter(|(_, b)| b["outcome"] == "credited")
        .count();
    assert_eq!(credited, 1, "{results:?}");
    // Different event ids for the same session, at once: still one credit.
    let object = event["data"]["object"].clone();
    let others: Vec<Value> = (0..5)
        .map(|_| stripe.event("checkout.session.async_payment_succeeded", object.clone()))
        .collect();
    let deliveries = others.iter().map(|event| deliver(&h, &stripe, event));
    let results = futures_util::future::join_all(deliveries).await;
    assert!(
        results.iter().all(|(_, b)| b["outcome"] == "duplicate"),
        "{results:?}"
    );
    assert_eq!(balance(&h).await, before + 7_250_000_000);
    assert_eq!(
        entries(&h, EntryKind::Topup, &session.id),
        vec![7_250_000_000]
    );
    verify_clean(&h).await;
}

#[tokio::test]
async fn forged_stale_altered_and_unsigned_events_change_nothing() {
    let (h, stripe) = start().await;
    let before = balance(&h).await;
    let session = topup(&h, &stripe, json!(50)).await;
    let event = stripe.completed(&session);
    let body = event.to_string();
    let now = now_secs();
    let altered = body.replace("\"amount_total\":5000", "\"amount_total\":500000");
    assert_ne!(altered, body);
    let forged = format!("t={now},v1={}", "0".repeat(64));
    let cases: Vec<(String, Option<String>)> = vec![
        (
            body.clone(),
            Some(sign(body.as_bytes(), "whsec_wrong", now)),
        ),
        (body.clone(), Some(forged)),
        (
            body.clone(),
            Some(sign(body.as_bytes(), WEBHOOK_SECRET, now - 600)),
        ),
        (
            altered.clone(),
            Some(sign(body.as_bytes(), WEBHOOK_SECRET, now)),
        ),
        (body.clone(), None),
        (body.clone(), Some("t=,v1=".into())),
    ];
    let url = h.url("/stripe/webhook");
    for (payload, signature) in cases {
        let response = stripe
            .deliver_raw(&url, payload, signature.as_deref())
            .await;
        assert_eq!(response.status(), 400, "{signature:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_signature", "{error}");
        assert!(!error.to_string().contains(WEBHOOK_SECRET));
    }
    assert_eq!(balance(&h).await, before);
    assert_eq!(payment(&h, &session.id).await["status"], "open");
    // Nothing was marked processed: the genuine event still credits.
    assert_eq!(deliver(&h, &stripe, &event).await.1["outcome"], "credited");
    assert_eq!(balance(&h).await, before + 50_000_000_000);
    verify_clean(&h).await;
}

#[tokio::test]
async fn refunds_debit_once_per_refund_down_to_the_floor() {
    let (h, stripe) = start().await;
    let start_balance = balance(&h).await;
    let session = topup(&h, &stripe, json!(10)).await;
    assert_eq!(
        deliver(&h, &stripe, &stripe.completed(&session)).await.1["outcome"],
        "credited"
    );
    let partial = stripe.refunded(&session, 400);
    assert_eq!(
        deliver(&h, &stripe, &partial).await.1["outcome"],
        "refunded"
    );
    assert_eq!(
        deliver(&h, &stripe, &partial).await.1["outcome"],
        "duplicate"
    );
    // Stripe's next event for the same refund state is no second refund.
    let restated = stripe.refunded(&session, 400);
    assert_eq!(
        deliver(&h, &stripe, &restated).await.1["outcome"],
        "duplicate"
    );
    assert_eq!(balance(&h).await, start_balance + 6_000_000_000);
    assert_eq!(
        payment(&h, &session.id).await["status"],
        "partially_refunded"
    );
    // The account spends most of it; the full refund then takes it to the floor.
    let debit = json!({"amount_usd": "9", "reason": "spent"});
    let account = get(&h, "/v1/account").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = h
        .anonymous
        .post(h.url(&format!("/admin/accounts/{account}/debit")));
    let response = request
        .bearer_auth(&h.admin_token)
        .json(&debit)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(balance(&h).await, start_balance - 3_000_000_000);
    let full = stripe.refunded(&session, 1000);
    assert_eq!(deliver(&h, &stripe, &full).await.1["outcome"], "refunded");
    assert_eq!(balance(&h).await, 0);
    let listed = payment(&h, &session.id).await;
    assert_eq!(listed["status"], "refunded");
    assert!(
        listed["note"].as_str().unwrap().contains("not recovered"),
        "{listed}"
    );
    let refunds: i64 = entries(&h, EntryKind::Refund, &session.id).iter().sum();
    assert_eq!(refunds, 4_000_000_000 + start_balance - 3_000_000_000);
    // At the floor: no new holds until topped up.
    let chat = h
        .post_json("/v1/chat/completions", &support::chat("echo-mini", false))
        .await;
    assert_eq!(chat.status(), 402);
    verify_clean(&h).await;
}

#[tokio::test]
async fn orphans_unknown_types_and_bad_bodies() {
    let (h, stripe) = start().await;
    let hook = h.url("/stripe/webhook");
    let orphan_session = |id: &str, params: &[(&str, &str)]| CreatedSession {
        id: id.into(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        authorization: None,
    };
    let priced = [
        ("line_items[0][price_data][unit_amount]", "1000"),
        ("line_items[0][price_data][currency]", "usd"),
    ];
    let unknown = orphan_session(
        "cs_test_unknown",
        &[priced[0], priced[1], ("client_reference_id", "acct_999")],
    );
    let anonymous = orphan_session("cs_test_nobody", &priced);
    for session in [&unknown, &anonymous] {
        let (status, body) = deliver(&h, &stripe, &stripe.completed(session)).await;
        assert_eq!(
            (status, body["outcome"].as_str()),
            (200, Some("orphaned")),
            "{}",
            session.id
        );
    }
    // A deleted account's payment is orphaned too, never credited.
    let services = h.server.services();
    let (record, _) = services
        .create_account("gone@example.com", Default::default(), "test")
        .await
        .unwrap();
    let deleted = tokun_storage::AccountRecord {
        deleted_ms: Some(1),
        ..record.clone()
    };
    services
        .ledger
        .append(vec![WriteOp::PutAccount(deleted)])
        .await
        .unwrap();
    let gone = orphan_session(
        "cs_test_gone",
        &[
            priced[0],
            priced[1],
            ("client_reference_id", &record.id.to_string()),
        ],
    );
    assert_eq!(
        deliver(&h, &stripe, &stripe.completed(&gone)).await.1["outcome"],
        "orphaned"
    );
    assert_eq!(services.store.books(record.id).unwrap().balance.get(), 0);
    // A refund of a charge tokun never credited.
    assert_eq!(
        deliver(&h, &stripe, &stripe.refunded(&anonymous, 1000))
            .await
            .1["outcome"],
        "orphaned"
    );
    let listed = admin_get(&h, "/admin/payments?status=orphaned").await;
    let ids: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    for id in [
        "cs_test_unknown",
        "cs_test_nobody",
        "cs_test_gone",
        "ch_nobody",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} not in {listed}");
    }
    assert_eq!(
        admin_get(&h, "/admin/payments?status=bogus").await["error"]["param"],
        "status"
    );
    let unauthorized = h
        .anonymous
        .get(h.url("/admin/payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    // Unknown types are acknowledged and ignored.
    let other = stripe.event(
        "customer.created",
        json!({"id": "cus_1", "object": "customer"}),
    );
    assert_eq!(
        deliver(&h, &stripe, &other).await,
        (200, json!({"received": true, "outcome": "ignored"}))
    );
    // Correctly signed garbage is a 400; a huge body a 413.
    for garbage in [
        "not json",
        "{\"id\": 1}",
        "{\"id\":\"evt_x\",\"type\":\"charge.refunded\",\"data\":{\"object\":{}}}",
    ] {
        let signature = sign(garbage.as_bytes(), WEBHOOK_SECRET, now_secs());
        let response = stripe.deliver_raw(&hook, garbage, Some(&signature)).await;
        assert_eq!(response.status(), 400, "{garbage}");
    }
    let huge = "x".repeat(200 * 1024);
    let signature = sign(huge.as_bytes(), WEBHOOK_SECRET, now_secs());
    assert_eq!(
        stripe
            .deliver_raw(&hook, huge, Some(&signature))
            .await
            .status(),
        413
    );
    verify_clean(&h).await;
}
