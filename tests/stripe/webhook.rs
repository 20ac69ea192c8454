//! Signed events credit once (also delivered at once), forged ones change
//! nothing, refunds debit once per refund down to the floor.

use serde_json::{Value, json};

use crate::*;
use tokun_storage::EntryKind;
use tokun_testkit::stripe::{now_secs, sign};

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
