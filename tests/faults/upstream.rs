//! Upstream faults: a 429 storm, 5xx with and without a route to fail over
//! to, a hang before the first byte, and failures in the middle of a stream.

use super::*;

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
    // The storm's requests are in the log as 429s that cost nothing.
    let refused = records.iter().filter(|r| r["status"] == 429).count();
    assert_eq!(refused, N, "{records:?}");
    let records = answered_only(records);
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
    let statuses: Vec<&Value> = records.iter().map(|r| &r["status"]).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{records:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        1,
        "{records:?}"
    );
    let records = answered_only(records);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["provider"], "five-b");
    assert_eq!(records[0]["route"], 1);
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
