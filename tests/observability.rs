//! Metrics and the actor view after a known mix of requests. One server per
//! test binary (the metrics recorder is process-wide), so counters are exact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use serde_json::{Value, json};
use support::{Harness, chat};

/// The value of the sample `name{labels…}` in a Prometheus text scrape.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
}

async fn scrape(h: &Harness) -> String {
    let response = h
        .anonymous
        .get(h.url("/metrics"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

async fn actors(h: &Harness) -> Value {
    let response = h
        .anonymous
        .get(h.url("/admin/actors?all=true"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn kind<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or(&Value::Null)
}

const CONFIG: &str = r#"
[[providers]]
name = "echo"
kind = "echo"

[[providers]]
name = "echo-slow"
kind = "echo"
delay_ms = 20

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"

[[models]]
id = "echo-mini"
price = { input = 0.15, output = 0.60 }
routes = [{ provider = "echo" }]

[[models]]
id = "echo-slow"
price = { input = 0.15, output = 0.60 }
routes = [{ provider = "echo-slow" }]

[[models]]
id = "flaky"
price = { input = 0.15, output = 0.60 }
routes = [{ provider = "dead" }, { provider = "echo" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_actors_reflect_a_known_mix_of_requests() {
    let h = Harness::start(Some(CONFIG)).await;
    for _ in 0..3 {
        assert_eq!(
            h.post_json("/v1/chat/completions", &chat("echo-mini", false))
                .await
                .status(),
            200
        );
    }
    for _ in 0..2 {
        let text = h
            .post_json("/v1/chat/completions", &chat("echo-mini", true))
            .await
            .text()
            .await
            .unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(
        h.post_json("/v1/chat/completions", &chat("gpt-nope", false))
            .await
            .status(),
        404
    );
    let bad = h
        .client
        .post(h.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(h.wait_streams_idle().await, 0);

    // The dead route fails to connect; the request fails over to echo.
    let flaky = h
        .post_json("/v1/chat/completions", &chat("flaky", false))
        .await;
    assert_eq!(flaky.status(), 200);
    assert_eq!(flaky.headers()["x-tokun-route"], "echo");

    let text = scrape(&h).await;
    assert_eq!(
        sample(&text, "tokun_failovers_total", &[("provider", "dead")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_upstream_errors_total",
            &[("provider", "dead"), ("kind", "connect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "tokun_actor_restarts_total", &[("kind", "stream")]),
        Some(0.0)
    );
    let ok = [
        ("model", "echo-mini"),
        ("provider", "echo"),
        ("status", "200"),
        ("transport", "http"),
    ];
    assert_eq!(
        sample(&text, "tokun_requests_total", &ok),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tokun_requests_total",
            &[("model", "unknown"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_requests_total",
            &[("model", "unknown"), ("status", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_http_requests_total",
            &[("route", "/v1/chat/completions"), ("status", "200")]
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_time_to_first_token_seconds_count",
            &[("transport", "http")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_gateway_overhead_seconds_count",
            &[("until", "response")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_gateway_overhead_seconds_count",
            &[("until", "first_chunk")]
        ),
        Some(2.0)
    );
    // Echo replies are 16 one-token chunks.
    assert_eq!(
        sample(
            &text,
            "tokun_tokens_total",
            &[("model", "echo-mini"), ("direction", "completion")]
        ),
        Some(80.0)
    );
    assert_eq!(
        sample(
            &text,
            "tokun_stream_outcomes_total",
            &[("model", "echo-mini"), ("outcome", "completed")]
        ),
        Some(2.0),
        "{}",
        text.lines()
            .filter(|l| l.contains("outcome"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sample(&text, "tokun_actor_started_total", &[("kind", "stream")]),
        Some(6.0)
    );
    assert_eq!(
        sample(&text, "tokun_actor_stopped_total", &[("kind", "stream")]),
        Some(6.0)
    );
    assert_eq!(
        sample(&text, "tokun_actors_alive", &[("kind", "stream")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "tokun_actors_alive", &[("kind", "ledger")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "tokun_streams_active", &[("transport", "http")]),
        Some(0.0)
    );
    assert_eq!(sample(&text, "tokun_holds_open", &[]), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "tokun_actor_messages_total",
            &[("kind", "account"), ("message", "settle")]
        ),
        Some(6.0)
    );
    assert!(
        sample(
            &text,
            "tokun_actor_handler_seconds_count",
            &[("kind", "stream")]
        )
        .unwrap()
            >= 5.0
    );
    // Demo topup + 5 × (hold, settle, release) at least.
    assert!(sample(&text, "tokun_ledger_entries_total", &[]).unwrap() >= 16.0);
    assert!(sample(&text, "tokun_cost_nanos_total", &[("model", "echo-mini")]).unwrap() > 0.0);
    assert!(
        !text.contains("acct_") && !text.contains("demo@"),
        "no ids or emails as labels"
    );

    let view = actors(&h).await;
    assert_eq!(kind(&view, "stream")["alive"], 0);
    assert_eq!(kind(&view, "stream")["started"], 6);
    assert_eq!(kind(&view, "account")["alive"], 1);
    assert_eq!(kind(&view, "ledger")["alive"], 1);
    let account = view["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "account")
        .unwrap();
    assert_eq!(account["name"], "acct_1");
    assert!(
        account["parent"].is_string(),
        "an account actor has its supervisor as parent"
    );

    // A live stream shows up while it runs, and leaves when it ends.
    let slow = json!({"model": "echo-slow", "stream": true, "messages": [{"role": "user", "content": "slow"}]});
    let response = h.post_json("/v1/chat/completions", &slow).await;
    assert_eq!(response.status(), 200);
    assert_eq!(kind(&actors(&h).await, "stream")["alive"], 1);
    response.text().await.unwrap();
    assert_eq!(h.wait_streams_idle().await, 0);
    assert_eq!(kind(&actors(&h).await, "stream")["alive"], 0);

    let unauthorized = h
        .anonymous
        .get(h.url("/admin/actors"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    // Every metric the Grafana dashboard queries exists in a scrape.
    let text = scrape(&h).await;
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .fold(name.clone(), |n, s| {
                        n.strip_suffix(s).map_or(n.clone(), str::to_owned)
                    });
                assert!(
                    text.contains(&format!("\n{name}"))
                        || text.contains(&format!("\n{base}_bucket"))
                        || text.contains(&format!("# TYPE {base} ")),
                    "dashboard metric {name} not in the scrape"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 15,
        "the dashboard covers the metrics ({checked})"
    );
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tokun_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
