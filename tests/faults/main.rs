//! The fault matrix of `docs/reliability.md`, for the rows no other test
//! file checks whole: for each fault, what the client sees, what is billed
//! (the account's balance and holds, the `/v1/usage` records) and what is
//! counted (`/metrics`, the usage record's `error`). Upstream 429 storms,
//! 5xx, hangs before the first byte and mid-stream, drops, garbage SSE and
//! error events, a slow SSE reader, a client leaving before its request is
//! read, while it waits for the first byte and after the last chunk, and a
//! full disk under the data dir (a tmpfs, so this file needs root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

#[path = "../support/mod.rs"]
mod support;

/// Client faults: a slow reader, and leaving at every phase.
mod client;
/// A full disk under the data dir.
mod disk;
/// Upstream faults: 429 storms, 5xx and failover, hangs, mid-stream failures.
mod upstream;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{
    Harness, account, chat, client_with_key, get_json, new_account, upstream_config, verify_clean,
};
use tokio::io::AsyncWriteExt;
use tokun_storage::Nanos;
use tokun_testkit::{FakeUpstream, Script};

const WAIT: Duration = Duration::from_secs(20);
const CREDIT: i64 = 5_000_000_000;

/// One OpenAI upstream as provider `provider`, serving model `model` alone
/// (names unique to a test, so its metric series are its own).
fn one_route(upstream: &FakeUpstream, provider: &str, model: &str, settings: &str) -> String {
    format!(
        r#"
[[providers]]
name = "{provider}"
kind = "openai"
base_url = "{base}"
api_key = "sk-upstream-secret"
{settings}

[[models]]
id = "{model}"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "{provider}" }}]
"#,
        base = upstream.base_url()
    )
}

/// A fresh account with $5 and a client sending its key.
async fn payer(h: &Harness, email: &str) -> reqwest::Client {
    let (_, key) = new_account(h, email, "5").await;
    client_with_key(&key)
}

/// `(balance_nanos, held_nanos, open_holds)` of the client's account.
async fn books(client: &reqwest::Client, h: &Harness) -> (i64, i64, u64) {
    let view = account(client, h).await;
    (
        view["balance_nanos"].as_i64().unwrap(),
        view["held_nanos"].as_i64().unwrap(),
        view["open_holds"].as_u64().unwrap(),
    )
}

async fn usage_records(client: &reqwest::Client, h: &Harness) -> Vec<Value> {
    get_json(client, h, "/v1/usage").await["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn nanos(usd: &Value) -> i64 {
    Nanos::parse_usd(usd.as_str().unwrap()).unwrap().get()
}

/// Polls until the account has `holds` open holds (bounded by `WAIT`).
async fn wait_for_holds(client: &reqwest::Client, h: &Harness, holds: u64) {
    tokio::time::timeout(WAIT, async {
        while books(client, h).await.2 != holds {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the account never had {holds} open holds"));
}

/// Nothing held or open, no stream actor alive, the ledger clean; the balance.
async fn settled_balance(client: &reqwest::Client, h: &Harness) -> i64 {
    wait_for_holds(client, h, 0).await;
    let (balance, held, _) = books(client, h).await;
    assert_eq!(held, 0);
    assert_eq!(h.wait_streams_idle().await, 0, "every stream actor ended");
    verify_clean(h).await;
    balance
}

/// Nothing was charged: the balance is whole, and every request in the
/// log is one that failed before any output (an error status, no cost).
async fn assert_charged_nothing(client: &reqwest::Client, h: &Harness) {
    assert_eq!(settled_balance(client, h).await, CREDIT, "nothing charged");
    for record in usage_records(client, h).await {
        assert!(record["status"].as_u64().unwrap() >= 400, "{record}");
        assert_eq!(record["cost"], "0.00", "{record}");
        assert!(record["error"].is_string(), "{record}");
    }
}

/// The records of requests that were answered (status 200).
fn answered_only(records: Vec<Value>) -> Vec<Value> {
    records.into_iter().filter(|r| r["status"] == 200).collect()
}

/// An OpenAI-shaped error with `status`; its `error` object.
async fn error_of(response: reqwest::Response, status: u16) -> (reqwest::header::HeaderMap, Value) {
    let headers = response.headers().clone();
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));
    let error = body["error"].clone();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["type"].is_string(), "{body}");
    assert!(error.as_object().unwrap().contains_key("code"), "{body}");
    (headers, error)
}

async fn post(client: &reqwest::Client, h: &Harness, body: &Value) -> reqwest::Response {
    client
        .post(h.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn streamed_with_usage(model: &str) -> Value {
    let mut body = chat(model, true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// The value of `name{labels…}` in this process's metrics (0 when absent).
async fn metric(h: &Harness, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = h
        .anonymous
        .get(h.url("/metrics"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
