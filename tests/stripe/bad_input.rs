//! Money tokun cannot match (unknown or deleted accounts, no account,
//! another currency, a refund of a charge it never credited) is recorded for
//! an operator and answered 200; unknown types and unpaid sessions are
//! ignored; signed garbage and huge bodies are refused.

use serde_json::json;
use tokun_storage::{AccountRecord, Nanos, WriteOp};
use tokun_testkit::stripe::{CreatedSession, now_secs, sign};

use crate::*;

/// A session tokun never created, with these form parameters.
fn foreign(id: &str, params: &[(&str, &str)]) -> CreatedSession {
    let priced = [
        ("line_items[0][price_data][unit_amount]", "1000"),
        ("line_items[0][price_data][currency]", "usd"),
    ];
    CreatedSession {
        id: id.into(),
        params: priced
            .iter()
            .chain(params)
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        authorization: None,
    }
}

async fn outcome(h: &support::Harness, stripe: &FakeStripe, event: &Value) -> String {
    let (status, body) = deliver(h, stripe, event).await;
    assert_eq!(status, 200, "{body}");
    body["outcome"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn unmatched_money_is_recorded_for_an_operator() {
    let (h, stripe) = start().await;
    let services = h.server.services();
    let (record, _) = services
        .create_account("gone@example.com", Nanos::ZERO, "test")
        .await
        .unwrap();
    let deleted = AccountRecord {
        deleted_ms: Some(1),
        ..record.clone()
    };
    let put = vec![WriteOp::PutAccount(deleted)];
    services.ledger.append(put).await.unwrap();
    let gone_id = record.id.to_string();
    let sessions = [
        foreign("cs_test_unknown", &[("client_reference_id", "acct_999")]),
        foreign("cs_test_meta", &[("metadata[tokun_account]", "acct_998")]),
        foreign("cs_test_nobody", &[]),
        foreign("cs_test_garbled", &[("client_reference_id", "bob")]),
        foreign("cs_test_gone", &[("client_reference_id", &gone_id)]),
    ];
    for session in &sessions {
        let event = stripe.completed(session);
        assert_eq!(
            outcome(&h, &stripe, &event).await,
            "orphaned",
            "{}",
            session.id
        );
    }
    // Paid in another currency, by a live account: not credited either.
    let mut euros = foreign("cs_test_eur", &[("client_reference_id", "acct_1")]);
    euros
        .params
        .insert("line_items[0][price_data][currency]".into(), "eur".into());
    assert_eq!(
        outcome(&h, &stripe, &stripe.completed(&euros)).await,
        "orphaned"
    );
    // A refund of a charge tokun never credited.
    let refund = stripe.refunded(&sessions[2], 1000);
    assert_eq!(outcome(&h, &stripe, &refund).await, "orphaned");
    assert_eq!(services.store.books(record.id).unwrap().balance.get(), 0);
    let listed = admin_get(&h, "/admin/payments?status=orphaned").await;
    let data = listed["data"].as_array().unwrap();
    for id in sessions
        .iter()
        .map(|s| s.id.as_str())
        .chain(["cs_test_eur", "ch_nobody"])
    {
        let found = data.iter().find(|p| p["id"] == id);
        let note = found.and_then(|p| p["note"].as_str());
        assert!(note.is_some_and(|n| !n.is_empty()), "{id} not in {listed}");
    }
    let bogus = admin_get(&h, "/admin/payments?status=bogus").await;
    assert_eq!(bogus["error"]["param"], "status");
    let unauthorized = h.anonymous.get(h.url("/admin/payments")).send().await;
    assert_eq!(unauthorized.unwrap().status(), 401);
    verify_clean(&h).await;
}

#[tokio::test]
async fn unknown_types_and_unpaid_sessions_are_acknowledged_and_ignored() {
    let (h, stripe) = start().await;
    let before = balance(&h).await;
    let other = stripe.event("customer.created", json!({"id": "cus_1"}));
    let expected = (200, json!({"received": true, "outcome": "ignored"}));
    assert_eq!(deliver(&h, &stripe, &other).await, expected);
    let session = topup(&h, &stripe, json!(10)).await;
    let unpaid = stripe.session_object(&session, "unpaid");
    let completed = stripe.event("checkout.session.completed", unpaid.clone());
    assert_eq!(outcome(&h, &stripe, &completed).await, "ignored");
    let failed = stripe.event("checkout.session.async_payment_failed", unpaid);
    assert_eq!(outcome(&h, &stripe, &failed).await, "failed");
    assert_eq!(payment(&h, &session.id).await["status"], "failed");
    assert_eq!(balance(&h).await, before);
    verify_clean(&h).await;
}

#[tokio::test]
async fn signed_garbage_and_huge_bodies_are_refused() {
    let (h, stripe) = start().await;
    let hook = h.url("/stripe/webhook");
    for garbage in [
        "not json",
        "{\"id\": 1}",
        "{\"id\":\"evt_x\",\"type\":\"charge.refunded\",\"data\":{\"object\":{}}}",
        "{\"id\":\"evt_y\",\"type\":\"checkout.session.completed\",\"data\":{\"object\":[]}}",
    ] {
        let signature = sign(garbage.as_bytes(), WEBHOOK_SECRET, now_secs());
        let response = stripe.deliver_raw(&hook, garbage, Some(&signature)).await;
        assert_eq!(response.status(), 400, "{garbage}");
    }
    let huge = "x".repeat(200 * 1024);
    let signature = sign(huge.as_bytes(), WEBHOOK_SECRET, now_secs());
    let response = stripe.deliver_raw(&hook, huge, Some(&signature)).await;
    assert_eq!(response.status(), 413);
    verify_clean(&h).await;
}
