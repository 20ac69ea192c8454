//! Accounts through the public API: API keys (create, list, revoke — and a
//! revoked key never works again), per-key limits, the admin API's credits,
//! debits and disabling, and usage listings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use serde_json::{Value, json};
use support::{
    Harness, account, admin_get, admin_post, chat, client_with_key, get_json, new_account,
    verify_clean,
};

#[tokio::test]
async fn keys_are_created_listed_revoked_and_revoked_keys_never_work() {
    let h = Harness::start(None).await;
    let created: Value = h
        .client
        .post(h.url("/v1/keys"))
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-tokun-") && secret.len() >= 9 + 43);
    let listed: Value = get_json(&h.client, &h, "/v1/keys").await;
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert!(entry.get("key").is_none(), "the secret is shown once");
    assert_eq!(entry["prefix"], &secret[..12]);
    let new_key = client_with_key(&secret);
    assert_eq!(
        new_key
            .post(h.url("/v1/chat/completions"))
            .json(&chat("echo-mini", false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let entries = verify_clean(&h).await["entries"].clone();
    // verify waits for the ledger to flush, so the key's last-used stamp is on disk.
    let listed: Value = get_json(&h.client, &h, "/v1/keys").await;
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert!(entry["last_used"].as_u64().is_some(), "{entry}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        h.client
            .delete(h.url(&format!("/v1/keys/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = new_key
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        verify_clean(&h).await["entries"],
        entries,
        "a refused key changes no ledger entry"
    );
    for bad in ["", "Bearer", "Bearer sk-tokun-garbage", "Bearer nope"] {
        let response = h
            .anonymous
            .get(h.url("/v1/account"))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{bad:?}");
    }
}

async fn create_key(h: &Harness, body: Value) -> reqwest::Client {
    let created: Value = h
        .client
        .post(h.url("/v1/keys"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    client_with_key(created["key"].as_str().unwrap())
}

#[tokio::test]
async fn per_key_rpm_spend_limit_and_allowed_models() {
    let h = Harness::start(None).await;
    let limited = create_key(&h, json!({"rpm_limit": 2})).await;
    for _ in 0..2 {
        assert_eq!(
            limited
                .post(h.url("/v1/chat/completions"))
                .json(&chat("echo-mini", false))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let third = limited
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));

    let capped = create_key(&h, json!({"spend_limit_usd": "0.00002"})).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            capped
                .post(h.url("/v1/chat/completions"))
                .json(&chat("echo-mini", false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses[0], 200);
    assert!(statuses.contains(&403), "{statuses:?}");

    let only_large = create_key(&h, json!({"allowed_models": ["echo-large"]})).await;
    assert_eq!(
        only_large
            .post(h.url("/v1/chat/completions"))
            .json(&chat("echo-mini", false))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        only_large
            .post(h.url("/v1/chat/completions"))
            .json(&chat("echo-large", false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let bad = h
        .client
        .post(h.url("/v1/keys"))
        .json(&json!({"spend_limit_usd": "-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    verify_clean(&h).await;
}

/// `POST /admin/accounts/{id}/{op}` (credit or debit) with the admin token.
async fn adjust(
    h: &Harness,
    id: &str,
    op: &str,
    amount_usd: &str,
    reason: &str,
) -> reqwest::Response {
    let body = json!({"amount_usd": amount_usd, "reason": reason});
    admin_post(h, &format!("/admin/accounts/{id}/{op}"), body).await
}

#[tokio::test]
async fn admin_credits_debits_disables_and_guards_its_token() {
    let h = Harness::start(None).await;
    let (id, key) = new_account(&h, "ops-test@example.com", "1").await;
    let client = client_with_key(&key);
    let credit = adjust(&h, &id, "credit", "2.5", "goodwill").await;
    assert_eq!(credit.status(), 200);
    assert_eq!(account(&client, &h).await["balance"], "3.50");
    let debit = adjust(&h, &id, "debit", "0.5", "correction").await;
    assert_eq!(debit.status(), 200);
    assert_eq!(account(&client, &h).await["balance"], "3.00");
    let too_much = adjust(&h, &id, "debit", "10", "oops").await;
    assert_eq!(too_much.status(), 400);
    for amount in ["-1", "0", "abc", "0.0000000001", "99999999999"] {
        let response = adjust(&h, &id, "credit", amount, "x").await;
        assert_eq!(response.status(), 400, "{amount}");
    }
    assert_eq!(
        adjust(&h, "acct_999999", "credit", "1", "x").await.status(),
        404
    );
    let no_token = h
        .anonymous
        .post(h.url(&format!("/admin/accounts/{id}/credit")))
        .json(&json!({"amount_usd": "1", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let with_api_key = client.get(h.url("/admin/accounts")).send().await.unwrap();
    assert_eq!(with_api_key.status(), 401);
    let found = admin_get(&h, "/admin/accounts?search=ops-test").await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        admin_post(&h, &format!("/admin/accounts/{id}/disable"), json!({}))
            .await
            .status(),
        200
    );
    let refused = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    verify_clean(&h).await;
}

#[tokio::test]
async fn usage_is_listed_as_json_and_csv_with_filters() {
    let h = Harness::start(None).await;
    for model in ["echo-mini", "echo-mini", "echo-large"] {
        assert_eq!(
            h.post_json("/v1/chat/completions", &chat(model, false))
                .await
                .status(),
            200
        );
    }
    let all: Value = get_json(&h.client, &h, "/v1/usage").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    let large: Value = get_json(&h.client, &h, "/v1/usage?model=echo-large").await;
    assert_eq!(large["data"].as_array().unwrap().len(), 1);
    let csv = h
        .client
        .get(h.url("/v1/usage?format=csv"))
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    assert_eq!(text.lines().count(), 4);
    assert!(text.starts_with("request_id,created,key,model"));
    let future: Value = get_json(&h.client, &h, "/v1/usage?from=4000000000").await;
    assert!(future["data"].as_array().unwrap().is_empty());
}
