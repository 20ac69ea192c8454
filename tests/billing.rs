//! Money through the public API: holds never overdraw under concurrency,
//! usage is billed exactly (or flagged estimated), idempotent retries and
//! cancel, and the ledger verifies clean after all of it.

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
use support::{
    Harness, account, chat, client_with_key, get_json, new_account, upstream_config, verify_clean,
};
use tokun_testkit::{FakeUpstream, Script};

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

    let usage: Value = get_json(&h.client, &h, "/v1/usage").await;
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
async fn an_idempotent_result_is_replayed_after_a_restart() {
    let upstream = FakeUpstream::start().await.unwrap();
    let toml = upstream_config(&upstream, "");
    let h = Harness::start(Some(&toml)).await;
    let (client, data_dir) = (h.client.clone(), h.data_dir.clone());
    let send = |h: &Harness, key: &'static str| {
        client
            .post(h.url("/v1/chat/completions"))
            .header("idempotency-key", key)
            .json(&chat("fake-model", false))
            .send()
    };
    let first = send(&h, "across-restarts").await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.text().await.unwrap();
    // A streamed request's key is remembered too.
    let streamed = client
        .post(h.url("/v1/chat/completions"))
        .header("idempotency-key", "streamed-once")
        .json(&chat("fake-model", true))
        .send()
        .await
        .unwrap();
    assert!(streamed.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let balance = account(&client, &h).await["balance_nanos"].clone();
    let Harness { server, .. } = h;
    server.shutdown().await.unwrap();

    let mut config = tokun::config::Config::parse(&toml, |_| None).unwrap();
    config.server.data_dir = data_dir;
    let h = Harness::start_with(config).await;
    let second = send(&h, "across-restarts").await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.text().await.unwrap(), first_body);
    let again = client
        .post(h.url("/v1/chat/completions"))
        .header("idempotency-key", "streamed-once")
        .json(&chat("fake-model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "a finished stream is not run again");
    assert_eq!(upstream.calls(), 2, "no retry reached the upstream");
    assert_eq!(
        account(&client, &h).await["balance_nanos"],
        balance,
        "no second charge"
    );
    // A new key still runs.
    assert_eq!(send(&h, "fresh").await.unwrap().status(), 200);
    assert_eq!(upstream.calls(), 3);
    verify_clean(&h).await;
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
