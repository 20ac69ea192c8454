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

mod support;

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

/// Nothing was charged: the balance is whole and no request was recorded.
async fn assert_charged_nothing(client: &reqwest::Client, h: &Harness) {
    assert_eq!(settled_balance(client, h).await, CREDIT, "nothing charged");
    assert_eq!(usage_records(client, h).await, Vec::<Value>::new());
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

// ---------------------------------------------------------------- upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_storm_is_answered_429_and_charges_nothing() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(Script {
        status: Some(429),
        retry_after_secs: Some(1),
        ..Script::default()
    });
    let h = Harness::start(Some(&one_route(&upstream, "storm", "storm-model", ""))).await;
    let client = payer(&h, "storm@example.com").await;
    const N: usize = 24;
    let calls = (0..N).map(|i| {
        let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let body = chat("storm-model", i % 2 == 0);
            client.post(url).json(&body).send().await.unwrap()
        })
    });
    for call in futures_util::future::join_all(calls).await {
        let (headers, error) = error_of(call.unwrap(), 429).await;
        assert_eq!(error["code"], "rate_limited", "{error}");
        let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1, "{retry_after}");
    }
    // One same-route retry at most per request: the storm is not amplified.
    assert!(upstream.calls() <= 2 * N, "{} calls", upstream.calls());
    assert_charged_nothing(&client, &h).await;
    let labels = [("provider", "storm"), ("kind", "rate_limited")];
    assert!(metric(&h, "tokun_upstream_errors_total", &labels).await >= N as f64);
    let answered = [("model", "storm-model"), ("status", "429")];
    assert_eq!(
        metric(&h, "tokun_requests_total", &answered).await,
        N as f64
    );

    // The storm passes: the next request is served and billed once.
    upstream.set_default(Script::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = post(&client, &h, &chat("storm-model", false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let records = usage_records(&client, &h).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["cost"], body["usage"]["cost"]);
    assert_eq!(
        settled_balance(&client, &h).await,
        CREDIT - nanos(&body["usage"]["cost"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_5xx_charges_nothing_and_a_failover_charges_once() {
    let (a, b) = (
        FakeUpstream::start().await.unwrap(),
        FakeUpstream::start().await.unwrap(),
    );
    a.set_default(Script::status(500));
    let config = format!(
        r#"
[[providers]]
name = "five-a"
kind = "openai"
base_url = "{a}"

[[providers]]
name = "five-b"
kind = "openai"
base_url = "{b}"

[[models]]
id = "five-solo"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "five-a" }}]

[[models]]
id = "five-duo"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "five-a" }}, {{ provider = "five-b" }}]
"#,
        a = a.base_url(),
        b = b.base_url()
    );
    let h = Harness::start(Some(&config)).await;
    let client = payer(&h, "five@example.com").await;

    // The only route fails: 502 (a 503 upstream is passed on as 503), nothing billed.
    for stream in [true, false] {
        let (_, error) = error_of(post(&client, &h, &chat("five-solo", stream)).await, 502).await;
        assert_eq!(error["code"], "status", "{error}");
        assert!(!error.to_string().contains("sk-upstream-secret"));
    }
    a.push(Script::status(503));
    let (_, error) = error_of(post(&client, &h, &chat("five-solo", false)).await, 503).await;
    assert_eq!(error["type"], "upstream_error", "{error}");
    assert_charged_nothing(&client, &h).await;

    // With a second route the client never sees the 5xx, and pays once.
    let response = post(&client, &h, &streamed_with_usage("five-duo")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tokun-route"], "five-b");
    let text = response.text().await.unwrap();
    assert!(!text.contains("\"error\""), "{text}");
    let usage_line = text.lines().rfind(|l| l.contains("\"usage\":{")).unwrap();
    let usage: Value = serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
    let records = usage_records(&client, &h).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["provider"], "five-b");
    assert_eq!(records[0]["error"], Value::Null);
    assert_eq!(records[0]["cost"], usage["usage"]["cost"]);
    assert_eq!(
        settled_balance(&client, &h).await,
        CREDIT - nanos(&usage["usage"]["cost"])
    );
    assert_eq!((a.calls(), b.calls()), (4, 1));
    let failed = [("provider", "five-a"), ("kind", "status")];
    assert_eq!(
        metric(&h, "tokun_upstream_errors_total", &failed).await,
        4.0
    );
    let moved = [("provider", "five-a")];
    assert_eq!(metric(&h, "tokun_failovers_total", &moved).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_before_the_first_byte_is_504_and_charges_nothing() {
    let upstream = FakeUpstream::start().await.unwrap();
    // A stream waits `first_byte_timeout` for its first chunk; a whole answer
    // waits `total_timeout` for its body.
    let settings = "first_byte_timeout_ms = 300\ntotal_timeout_ms = 600";
    let h = Harness::start(Some(&one_route(
        &upstream,
        "silent",
        "silent-model",
        settings,
    )))
    .await;
    let client = payer(&h, "silent@example.com").await;
    upstream.push(Script {
        hang: true,
        ..Script::default()
    });
    let (_, error) = error_of(post(&client, &h, &chat("silent-model", true)).await, 504).await;
    assert_eq!(error["code"], "timeout_first_byte");
    upstream.push(Script {
        first_byte_delay: Duration::from_secs(5),
        ..Script::default()
    });
    let started = std::time::Instant::now();
    let (_, error) = error_of(post(&client, &h, &chat("silent-model", false)).await, 504).await;
    assert_eq!(error["code"], "timeout_first_byte");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not the upstream's 5 s"
    );
    assert_charged_nothing(&client, &h).await;
    let labels = [("provider", "silent"), ("kind", "timeout_first_byte")];
    assert_eq!(
        metric(&h, "tokun_upstream_errors_total", &labels).await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_failures_bill_the_relayed_tokens_and_record_why() {
    let upstream = FakeUpstream::start().await.unwrap();
    let settings = "idle_timeout_ms = 400";
    let h = Harness::start(Some(&one_route(
        &upstream,
        "midway",
        "midway-model",
        settings,
    )))
    .await;
    let client = payer(&h, "midway@example.com").await;
    let cases = [
        // The first (role) chunk, then nothing for longer than the idle timeout.
        (
            Script {
                delay: Duration::from_secs(3),
                ..Script::default()
            },
            "timeout_idle",
            0,
        ),
        (
            Script {
                drop_after: Some(2),
                ..Script::default()
            },
            "truncated",
            2,
        ),
        (
            Script {
                garbage_after: Some(2),
                ..Script::default()
            },
            "protocol",
            2,
        ),
        (
            Script {
                error_event_after: Some(2),
                ..Script::default()
            },
            "stream_error",
            2,
        ),
    ];
    let mut charged = 0;
    for (script, kind, relayed) in cases {
        upstream.push(script);
        let response = post(&client, &h, &streamed_with_usage("midway-model")).await;
        assert_eq!(
            response.status(),
            200,
            "{kind}: committed at the first chunk"
        );
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let text = response.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{kind}: {text}");
        let errors: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| d.starts_with("{\"error\""))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(errors.len(), 1, "{kind}: one error event: {text}");
        assert_eq!(errors[0]["error"]["code"], kind, "{text}");
        let usage_line = text.lines().rfind(|l| l.contains("\"usage\":{")).unwrap();
        let usage: Value = serde_json::from_str(usage_line.trim_start_matches("data: ")).unwrap();
        assert_eq!(
            usage["usage"]["completion_tokens"], relayed,
            "{kind}: {text}"
        );
        assert_eq!(
            usage["usage"]["estimated"], true,
            "{kind}: tokun's own count"
        );
        let record = usage_records(&client, &h)
            .await
            .into_iter()
            .find(|r| r["request_id"] == request_id.as_str())
            .unwrap_or_else(|| panic!("{kind}: no usage record"));
        assert_eq!(record["error"], kind);
        assert_eq!(record["estimated"], true);
        assert_eq!(record["completion_tokens"], relayed);
        assert_eq!(record["cost"], usage["usage"]["cost"]);
        assert!(nanos(&record["cost"]) > 0, "the prompt is billed");
        charged += nanos(&record["cost"]);
        let outcome = [("provider", "midway"), ("outcome", kind)];
        assert_eq!(
            metric(&h, "tokun_stream_outcomes_total", &outcome).await,
            1.0,
            "{kind}"
        );
    }
    assert_eq!(settled_balance(&client, &h).await, CREDIT - charged);
}

// ------------------------------------------------------------------ client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_reader_slows_the_upstream_read_and_is_billed_exactly() {
    let upstream = FakeUpstream::start().await.unwrap();
    // 2,000 chunks of ~8 KB: far more than the socket buffers hold.
    let words = " word".repeat(1600);
    upstream.push(Script {
        tokens: vec![words; 2000],
        ..Script::default()
    });
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let client = payer(&h, "slow@example.com").await;
    let response = post(&client, &h, &streamed_with_usage("fake-model")).await;
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let first: Value = serde_json::from_str(&events.next().await.unwrap().unwrap().data).unwrap();
    // The reader pauses: the stream waits for it instead of buffering the rest.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.server.streams().stats().live(), 1, "still relaying");
    assert_eq!(books(&client, &h).await.2, 1, "still held");
    let has_content = |chunk: &Value| {
        chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    };
    let mut content = usize::from(has_content(&first));
    let mut last = Value::Null;
    while let Some(event) = events.next().await {
        let data = event.unwrap().data;
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        content += usize::from(has_content(&chunk));
        last = chunk;
    }
    assert_eq!(content, 2000, "every chunk arrived");
    assert_eq!(last["usage"]["completion_tokens"], 2000);
    assert!(last["usage"].get("estimated").is_none(), "exact: {last}");
    let records = usage_records(&client, &h).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["error"], Value::Null);
    assert_eq!(records[0]["cost"], last["usage"]["cost"]);
    assert_eq!(
        settled_balance(&client, &h).await,
        CREDIT - nanos(&last["usage"]["cost"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_its_request_is_read_holds_and_charges_nothing() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let (_, key) = new_account(&h, "early@example.com", "5").await;
    let client = client_with_key(&key);
    let entries = verify_clean(&h).await["entries"].as_u64().unwrap();
    let mut socket = tokio::net::TcpStream::connect(h.server.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: tokun\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{{\"model\": \"fake-model\", "
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.server.streams().stats().live(), 0, "nothing started");
    assert_eq!(books(&client, &h).await.2, 0, "nothing held");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.calls(), 0);
    assert_eq!(h.server.streams().stats().total_started(), 0);
    assert_charged_nothing(&client, &h).await;
    assert_eq!(
        verify_clean(&h).await["entries"].as_u64().unwrap(),
        entries,
        "not one ledger entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_waiting_for_the_first_byte_pays_its_prompt_only() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(Script {
        hang: true,
        ..Script::default()
    });
    let settings = "first_byte_timeout_ms = 20000\ntotal_timeout_ms = 20000";
    let h = Harness::start(Some(&one_route(
        &upstream,
        "waiting",
        "waiting-model",
        settings,
    )))
    .await;
    let client = payer(&h, "impatient@example.com").await;
    let (mut charged, mut seen) = (0, Vec::new());
    for stream in [true, false] {
        let call = tokio::spawn({
            let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
            async move {
                client
                    .post(url)
                    .json(&chat("waiting-model", stream))
                    .send()
                    .await
            }
        });
        wait_for_holds(&client, &h, 1).await;
        call.abort();
        let balance = settled_balance(&client, &h).await;
        let records = usage_records(&client, &h).await;
        let record = records
            .iter()
            .find(|r| !seen.contains(&r["request_id"]))
            .expect("a usage record for the request")
            .clone();
        seen.push(record["request_id"].clone());
        assert_eq!(record["error"], "client_gone", "stream {stream}: {record}");
        assert_eq!(record["completion_tokens"], 0, "{record}");
        assert_eq!(record["estimated"], true, "{record}");
        assert!(record["prompt_tokens"].as_u64() > Some(0), "{record}");
        charged += nanos(&record["cost"]);
        assert_eq!(
            balance,
            CREDIT - charged,
            "stream {stream}: the prompt only"
        );
    }
    let gone = [("model", "waiting-model"), ("outcome", "client_gone")];
    assert_eq!(
        metric(&h, "tokun_stream_outcomes_total", &gone).await,
        1.0,
        "the streamed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_after_the_last_chunk_before_done_is_billed_once() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.push(Script {
        tokens: vec!["Hello".into(), " there".into()],
        // Also between the closing chunk and the usage chunk / [DONE].
        delay: Duration::from_millis(300),
        ..Script::default()
    });
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let client = payer(&h, "late@example.com").await;
    let response = post(&client, &h, &streamed_with_usage("fake-model")).await;
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let mut text = String::new();
    loop {
        let data = events.next().await.unwrap().unwrap().data;
        assert_ne!(data, "[DONE]");
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
        }
        if chunk["choices"][0]["finish_reason"] == "stop" {
            break;
        }
    }
    assert_eq!(text, "Hello there");
    drop(events);
    let balance = settled_balance(&client, &h).await;
    let records = usage_records(&client, &h).await;
    assert_eq!(records.len(), 1, "billed once: {records:?}");
    assert_eq!(records[0]["completion_tokens"], 2, "{records:?}");
    assert_eq!(balance, CREDIT - nanos(&records[0]["cost"]));
}

// -------------------------------------------------------------------- disk

/// A tmpfs mounted over a fresh directory, unmounted on drop (also when the
/// test fails). Mounting needs root; without it the test fails, never skips.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = support::temp_dir("diskfull");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tokun-faults"])
            .arg(&dir)
            .output();
        let failure = match output {
            Ok(out) if out.status.success() => return Tmpfs { dir },
            Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(error) => error.to_string(),
        };
        let _ = std::fs::remove_dir(&dir);
        panic!(
            "the disk-full test mounts a small tmpfs as the data dir and needs root \
             (CAP_SYS_ADMIN) to do it; `mount -t tmpfs` failed: {failure}"
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command
                .arg(&self.dir)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Writes `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for block in [1 << 20, 4096, 1] {
        let bytes = vec![0u8; block];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
    }
}

async fn ready(h: &Harness) -> (u16, Value) {
    let response = h.anonymous.get(h.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn config_in(upstream: &FakeUpstream, data_dir: &Path) -> tokun::config::Config {
    let text = upstream_config(upstream, "");
    let mut config =
        tokun::config::Config::parse(&text, |name| std::env::var(name).ok()).expect("config");
    config.server.data_dir = data_dir.to_path_buf();
    config
}

/// Fills the tmpfs, then makes ledger writes (admin credits of $0.01 to
/// `ops`, each awaited until durable) until one fails for want of space: the
/// ledger is then not writable. Returns how many credits went through.
async fn exhaust_the_disk(h: &Harness, filler: &Path, ops: &str) -> u64 {
    let path = filler.to_path_buf();
    tokio::task::spawn_blocking(move || fill(&path))
        .await
        .unwrap();
    let url = format!("/admin/accounts/{ops}/credit");
    for credited in 0..2000 {
        let body = json!({"amount_usd": "0.01", "reason": "until the disk is full"});
        let response = support::admin_post(h, &url, body).await;
        if response.status() != 200 {
            let (_, error) = error_of(response, 503).await;
            assert_eq!(error["code"], "unavailable", "{error}");
            return credited;
        }
    }
    panic!("the ledger never noticed the full disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_refuses_with_503_charges_nothing_and_recovers_after_restart() {
    let tmpfs = Tmpfs::mount("64m");
    let data_dir = tmpfs.dir.join("data");
    let filler = tmpfs.dir.join("filler");
    let upstream = FakeUpstream::start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        let (_, key) = new_account(&h, "full@example.com", "5").await;
        let (ops, ops_key) = new_account(&h, "ops@example.com", "1").await;
        let client = client_with_key(&key);
        let response = post(&client, &h, &chat("fake-model", false)).await;
        assert_eq!(response.status(), 200);
        let charged = nanos(&response.json::<Value>().await.unwrap()["usage"]["cost"]);

        let credited = exhaust_the_disk(&h, &filler, &ops).await;
        let (status, body) = ready(&h).await;
        assert_eq!((status, &body["ledger_writable"]), (503, &json!(false)));
        let failed = metric(&h, "tokun_ledger_failed_batches_total", &[]).await;
        assert!(failed >= 1.0, "{failed}");
        // Requests are refused before any hold or upstream call.
        let calls = upstream.calls();
        for stream in [true, false] {
            let response = post(&client, &h, &chat("fake-model", stream)).await;
            let (_, error) = error_of(response, 503).await;
            assert_eq!(error["code"], "unavailable", "{error}");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains("nothing was charged"), "{error}");
        }
        assert_eq!(upstream.calls(), calls, "refused before the upstream");

        // Space comes back; the ledger stays refused until a restart.
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(ready(&h).await.0, 503);
        error_of(post(&client, &h, &chat("fake-model", false)).await, 503).await;
        let Harness { server, .. } = h;
        let _ = tokio::time::timeout(Duration::from_secs(30), server.shutdown())
            .await
            .expect("shutdown ends");

        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        assert_eq!(ready(&h).await.0, 200);
        let balance = settled_balance(&client, &h).await;
        assert_eq!(balance, CREDIT - charged, "only the answered request");
        assert_eq!(usage_records(&client, &h).await.len(), 1);
        let credits = i64::try_from(credited).unwrap() * 10_000_000;
        let ops_balance = books(&client_with_key(&ops_key), &h).await.0;
        assert_eq!(
            ops_balance,
            1_000_000_000 + credits,
            "credits answered 200 only"
        );
        let response = post(&client, &h, &chat("fake-model", false)).await;
        assert_eq!(response.status(), 200);
        let cost = nanos(&response.json::<Value>().await.unwrap()["usage"]["cost"]);
        assert_eq!(settled_balance(&client, &h).await, balance - cost);
        h.server.shutdown().await.unwrap();
    })
    .await
    .expect("the disk-full test took over 120 s");
    drop(tmpfs);
}

/// A non-streamed request whose hold is already durable when the ledger stops
/// being writable is answered 503 "nothing was charged", and that stays true:
/// its answer was withheld (it is only sent once settled), so the hold was
/// written with a zero checkpoint and crash recovery settles it at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_disk_fills_is_not_charged_after_restart() {
    let tmpfs = Tmpfs::mount("64m");
    let data_dir = tmpfs.dir.join("data");
    let filler = tmpfs.dir.join("filler");
    let upstream = FakeUpstream::start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        let (_, key) = new_account(&h, "inflight@example.com", "5").await;
        let (ops, _) = new_account(&h, "ops@example.com", "1").await;
        let client = client_with_key(&key);
        upstream.push(Script {
            first_byte_delay: Duration::from_secs(2),
            ..Script::default()
        });
        let call = tokio::spawn({
            let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
            async move {
                client
                    .post(url)
                    .json(&chat("fake-model", false))
                    .send()
                    .await
                    .unwrap()
            }
        });
        wait_for_holds(&client, &h, 1).await;
        // The hold goes to disk within `ledger.max_unflushed_us` (5 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.server.services().store.open_holds().unwrap().len(), 1);
        exhaust_the_disk(&h, &filler, &ops).await;
        let (_, error) = error_of(call.await.unwrap(), 503).await;
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("nothing was charged"),
            "{error}"
        );
        std::fs::remove_file(&filler).unwrap();
        let Harness { server, .. } = h;
        let _ = tokio::time::timeout(Duration::from_secs(30), server.shutdown())
            .await
            .expect("shutdown ends");

        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        let balance = settled_balance(&client, &h).await;
        let entries: Vec<String> = h
            .server
            .services()
            .store
            .entries(0)
            .map(|e| {
                let e = e.unwrap();
                format!("{:?} {} {:?}", e.kind, e.amount.get(), e.request_id)
            })
            .collect();
        assert_eq!(
            balance,
            CREDIT,
            "told 'nothing was charged', charged {} nanos at restart; ledger {entries:#?}",
            CREDIT - balance,
        );
        h.server.shutdown().await.unwrap();
    })
    .await
    .expect("the test took over 120 s");
    drop(tmpfs);
}
