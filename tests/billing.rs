//! Money through the public API: holds never overdraw under concurrency,
//! usage is billed exactly (or flagged estimated), keys and limits, admin
//! adjustments, and the ledger verifies clean after all of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Harness, chat, client_with_key, upstream_config};
use tokun_testkit::{FakeUpstream, Script};

async fn admin_post(h: &Harness, path: &str, body: Value) -> reqwest::Response {
    h.anonymous
        .post(h.url(path))
        .bearer_auth(&h.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Creates an account with `credit` USD; returns (id, api key).
async fn new_account(h: &Harness, email: &str, credit: &str) -> (String, String) {
    let response = admin_post(
        h,
        "/admin/accounts",
        json!({"email": email, "credit_usd": credit}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["api_key"].as_str().unwrap().to_owned(),
    )
}

async fn account(client: &reqwest::Client, h: &Harness) -> Value {
    client
        .get(h.url("/v1/account"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn verify_clean(h: &Harness) -> Value {
    let response = h
        .anonymous
        .get(h.url("/admin/ledger/verify"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["clean"], true, "{report}");
    report
}

fn pricey(extra: &str) -> String {
    format!(
        r#"
[billing]
hold_increment_tokens = 4

[[providers]]
name = "echo"
kind = "echo"
reply_tokens = 16

[[models]]
id = "pricey"
price = {{ input = 1000.0, output = 2000.0 }}
routes = [{{ provider = "echo" }}]
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_never_overdraw_the_account() {
    let h = Harness::start(Some(&pricey(""))).await;
    // One request: ~10 prompt tokens × $0.001 + 16 × $0.002 ≈ $0.042; $5 covers only part of 1,000.
    let (_, key) = new_account(&h, "crowd@example.com", "5").await;
    let client = client_with_key(&key);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let client = client.clone();
        let url = h.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "pricey", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": format!("hello {i}")}]});
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }));
    }
    let (mut served, mut refused, mut billed) = (0, 0, 0i64);
    for task in tasks {
        let (status, text) = task.await.unwrap();
        match status {
            200 => {
                served += 1;
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                let usage_line = text
                    .lines()
                    .rfind(|l| l.contains("\"usage\":{"))
                    .expect("usage chunk");
                let usage: Value =
                    serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
                let cost =
                    tokun_storage::Nanos::parse_usd(usage["usage"]["cost"].as_str().unwrap())
                        .unwrap();
                assert!(cost.get() > 0);
                billed += cost.get();
            }
            402 => {
                refused += 1;
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error["error"]["code"], "insufficient_credits");
            }
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    let after = account(&client, &h).await;
    assert_eq!(after["held_nanos"], 0);
    let balance = after["balance_nanos"].as_i64().unwrap();
    assert!(balance >= 0, "never below the floor");
    assert_eq!(
        5_000_000_000 - balance,
        billed,
        "every served request billed exactly once"
    );
    verify_clean(&h).await;
}

#[tokio::test]
async fn refused_extension_ends_the_stream_cleanly_with_length() {
    let h = Harness::start(Some(&pricey(""))).await;
    // Enough for the prompt and a few output tokens, not for all 16.
    let (_, key) = new_account(&h, "small@example.com", "0.03").await;
    let client = client_with_key(&key);
    let body = json!({"model": "pricey", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let text = client
        .post(h.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"error\""),
        "a clean end, not an error: {text}"
    );
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let after = account(&client, &h).await;
    assert_eq!(after["held_nanos"], 0);
    assert!(after["balance_nanos"].as_i64().unwrap() >= 0);
    verify_clean(&h).await;
}

#[tokio::test]
async fn insufficient_credits_is_402_with_balance_and_estimate_and_changes_nothing() {
    let h = Harness::start(Some(&pricey(""))).await;
    let (_, key) = new_account(&h, "broke@example.com", "0.000001").await;
    let client = client_with_key(&key);
    let before = verify_clean(&h).await["entries"].as_u64().unwrap();
    let response = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("pricey", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("balance") && message.contains("0.000001"),
        "{message}"
    );
    assert_eq!(verify_clean(&h).await["entries"].as_u64().unwrap(), before);
}

#[tokio::test]
async fn disconnect_bills_relayed_tokens_as_estimated_and_zero_usage_bills_zero() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.push(Script {
        tokens: (0..200).map(|i| format!(" w{i}")).collect(),
        delay: Duration::from_millis(10),
        ..Script::default()
    });
    let response = h
        .post_json("/v1/chat/completions", &chat("fake-model", true))
        .await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut events = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    for _ in 0..4 {
        events.next().await.unwrap().unwrap();
    }
    drop(events);
    assert_eq!(h.wait_streams_idle().await, 0);

    upstream.push(Script {
        usage: Some((0, 0)),
        ..Script::default()
    });
    let zero: Value = h
        .post_json("/v1/chat/completions", &chat("fake-model", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        zero["usage"]["cost"], "0.00",
        "an explicit zero from upstream is a real zero"
    );

    let usage: Value = h
        .client
        .get(h.url("/v1/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let records = usage["data"].as_array().unwrap();
    let dropped = records
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .expect("usage of the dropped stream");
    assert_eq!(dropped["estimated"], true);
    let completion = dropped["completion_tokens"].as_u64().unwrap();
    assert!(
        (3..200).contains(&completion),
        "billed what was relayed: {completion}"
    );
    assert_ne!(dropped["cost"], "0.00");
    let zero_record = records
        .iter()
        .find(|r| r["request_id"] != request_id.as_str())
        .unwrap();
    assert_eq!(zero_record["cost"], "0.00");
    assert_eq!(zero_record["estimated"], false);
    verify_clean(&h).await;
}

#[tokio::test]
async fn idempotent_retries_replay_and_never_charge_twice() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let send = |key: &'static str| {
        h.client
            .post(h.url("/v1/chat/completions"))
            .header("idempotency-key", key)
            .json(&chat("fake-model", false))
            .send()
    };
    let first = send("retry-1").await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.text().await.unwrap();
    let balance = account(&h.client, &h).await["balance_nanos"].clone();
    let second = send("retry-1").await.unwrap();
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.text().await.unwrap(), first_body);
    assert_eq!(
        account(&h.client, &h).await["balance_nanos"],
        balance,
        "no second charge"
    );
    assert_eq!(upstream.calls(), 1);

    upstream.push(Script {
        first_byte_delay: Duration::from_millis(500),
        ..Script::default()
    });
    let slow = tokio::spawn(send("retry-2"));
    // The first attempt is in flight once the upstream saw it.
    while upstream.calls() < 2 {
        tokio::task::yield_now().await;
    }
    let conflict = send("retry-2").await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn cancel_finishes_the_stream_and_bills_what_was_generated() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    upstream.push(Script {
        tokens: (0..300).map(|i| format!(" c{i}")).collect(),
        delay: Duration::from_millis(5),
        ..Script::default()
    });
    let mut body = chat("fake-model", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = h.post_json("/v1/chat/completions", &body).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    while !text.contains(" c2") {
        text.push_str(std::str::from_utf8(&bytes.next().await.unwrap().unwrap()).unwrap());
    }
    let other = client_with_key("sk-tokun-not-the-owner");
    assert_eq!(
        other
            .post(h.url(&format!("/v1/requests/{id}/cancel")))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let cancel = h
        .client
        .post(h.url(&format!("/v1/requests/chatcmpl-{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    while let Some(chunk) = bytes.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"finish_reason\":\"stop\""));
    let usage_line = text
        .lines()
        .rfind(|l| l.contains("\"usage\":{"))
        .expect("usage chunk");
    let usage: Value = serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
    let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..300).contains(&completion), "{completion}");
    assert_eq!(
        h.client
            .post(h.url(&format!("/v1/requests/{id}/cancel")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    verify_clean(&h).await;
}

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
    let listed: Value = h
        .client
        .get(h.url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let listed: Value = h
        .client
        .get(h.url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

#[tokio::test]
async fn admin_credits_debits_disables_and_guards_its_token() {
    let h = Harness::start(None).await;
    let (id, key) = new_account(&h, "ops-test@example.com", "1").await;
    let client = client_with_key(&key);
    let credit = admin_post(
        &h,
        &format!("/admin/accounts/{id}/credit"),
        json!({"amount_usd": "2.5", "reason": "goodwill"}),
    )
    .await;
    assert_eq!(credit.status(), 200);
    assert_eq!(account(&client, &h).await["balance"], "3.50");
    let debit = admin_post(
        &h,
        &format!("/admin/accounts/{id}/debit"),
        json!({"amount_usd": "0.5", "reason": "correction"}),
    )
    .await;
    assert_eq!(debit.status(), 200);
    assert_eq!(account(&client, &h).await["balance"], "3.00");
    let too_much = admin_post(
        &h,
        &format!("/admin/accounts/{id}/debit"),
        json!({"amount_usd": "10", "reason": "oops"}),
    )
    .await;
    assert_eq!(too_much.status(), 400);
    for amount in ["-1", "0", "abc", "0.0000000001", "99999999999"] {
        let response = admin_post(
            &h,
            &format!("/admin/accounts/{id}/credit"),
            json!({"amount_usd": amount, "reason": "x"}),
        )
        .await;
        assert_eq!(response.status(), 400, "{amount}");
    }
    assert_eq!(
        admin_post(
            &h,
            "/admin/accounts/acct_999999/credit",
            json!({"amount_usd": "1", "reason": "x"})
        )
        .await
        .status(),
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
    let found: Value = h
        .anonymous
        .get(h.url("/admin/accounts?search=ops-test"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let all: Value = h
        .client
        .get(h.url("/v1/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    let large: Value = h
        .client
        .get(h.url("/v1/usage?model=echo-large"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let future: Value = h
        .client
        .get(h.url("/v1/usage?from=4000000000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(future["data"].as_array().unwrap().is_empty());
}
