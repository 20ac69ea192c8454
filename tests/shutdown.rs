//! Graceful shutdown: streams in flight finish (or, past the grace period,
//! are stopped and settle what they relayed), the ledger is flushed, and the
//! store verifies clean with no hold left open.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use futures_util::StreamExt;
use serde_json::json;
use support::Harness;

fn verify(data: &std::path::Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(["ledger", "verify", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn slow_stream(h: &Harness) -> reqwest::Response {
    let body = json!({"model": "echo-slow", "stream": true, "messages": [{"role": "user", "content": "drain me"}]});
    let response = h.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_flight_finish_before_the_server_stops() {
    let h = Harness::start(None).await;
    let response = slow_stream(&h).await;
    let mut body = response.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    let Harness {
        server, data_dir, ..
    } = h;
    let reader = tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        text
    });
    server.shutdown().await.unwrap();
    let text = reader.await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream finished: {text}"
    );
    let report = verify(&data_dir);
    assert!(report.contains("open holds 0"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_streams_are_stopped_and_settled() {
    let config = r#"
[server]
shutdown_grace_secs = 0

[[providers]]
name = "slow"
kind = "echo"
delay_ms = 50
reply_tokens = 400

[[models]]
id = "echo-slow"
price = { input = 1.0, output = 1.0 }
routes = [{ provider = "slow" }]
"#;
    let h = Harness::start(Some(config)).await;
    let response = slow_stream(&h).await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    let Harness {
        server, data_dir, ..
    } = h;
    server.shutdown().await.unwrap();
    drop(body);
    let report = verify(&data_dir);
    assert!(
        report.contains("open holds 0"),
        "the stopped stream settled its hold: {report}"
    );
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(["ledger", "export", "--data"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let export = String::from_utf8(export.stdout).unwrap();
    assert!(
        export
            .lines()
            .any(|l| l.contains("\"kind\":\"settle\"") && l.contains("\"estimated\":true")),
        "{export}"
    );
}
