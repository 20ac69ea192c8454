//! `POST /v1/topups` and `GET /v1/payments`: what reaches Stripe, and what never does.

use serde_json::{Value, json};

use crate::support::Harness;
use crate::*;

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
