//! SIGKILL under streaming load, then restart: no entry duplicated, every
//! request whose client saw `[DONE]` settled exactly once, every hold left
//! open settled as `recovered`, and `tokun ledger verify` clean.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::client_with_key;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CONFIG: &str = r#"
[[providers]]
name = "slow"
kind = "echo"
delay_ms = 15
reply_tokens = 400

[[providers]]
name = "fast"
kind = "echo"

[[models]]
id = "slow"
price = { input = 1.0, output = 3.0 }
routes = [{ provider = "slow" }]

[[models]]
id = "fast"
price = { input = 1.0, output = 3.0 }
routes = [{ provider = "fast" }]
"#;

/// Starts `tokun serve`; returns the child, its base URL and the demo key (first start).
async fn serve(config: &Path, data: &Path) -> (Child, String, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tokun");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut key, mut base) = (None, None);
    while base.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("tokun printed its address");
        if let Some(at) = line.find("sk-tokun-") {
            key.get_or_insert_with(|| line[at..].split_whitespace().next().unwrap().to_owned());
        }
        if let Some(rest) = line.strip_prefix("tokun listening on ") {
            base = Some(rest.trim().to_owned());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base.unwrap(), key)
}

fn cli(args: &[&str], data: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run tokun")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_streaming_load_loses_and_duplicates_nothing() {
    let dir = support::temp_dir("crash");
    let config = dir.join("tokun.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.join("data");
    let (mut child, base, key) = serve(&config, &data).await;
    let client = client_with_key(&key.expect("demo key printed"));

    // Slow streams that will be cut by the kill, and fast requests that finish before it.
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(64);
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    for i in 0..40 {
        let (client, url, started) = (
            client.clone(),
            format!("{base}/v1/chat/completions"),
            started_tx.clone(),
        );
        let model = if i % 2 == 0 { "slow" } else { "fast" };
        let task = tokio::spawn(async move {
            let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": format!("crash test {i}")}]});
            let Ok(response) = client.post(url).json(&body).send().await else {
                return (None, false);
            };
            let id = response
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let mut body = response.bytes_stream();
            let mut text = Vec::new();
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
                if text.is_empty() {
                    let _ = started.send(()).await;
                }
                text.extend_from_slice(&chunk);
            }
            (id, text.ends_with(b"data: [DONE]\n\n"))
        });
        if model == "slow" {
            slow.push(task)
        } else {
            fast.push(task)
        }
    }
    let mut done_ids = Vec::new();
    for task in fast {
        if let (Some(id), true) = task.await.unwrap() {
            done_ids.push(id);
        }
    }
    // Every stream has started (the slow ones are mid-stream: 400 tokens × 15 ms).
    for _ in 0..40 {
        started_rx.recv().await.unwrap();
    }
    child.kill().await.unwrap();
    for task in slow {
        if let (Some(id), true) = task.await.unwrap() {
            done_ids.push(id);
        }
    }
    assert_eq!(
        done_ids.len(),
        20,
        "exactly the fast requests completed before the kill"
    );

    // Reading the crashed data dir writes nothing: its open holds stay open
    // until `serve` recovers them.
    let before = cli(&["ledger", "export"], &data);
    let verify = cli(&["ledger", "verify"], &data);
    let after = cli(&["ledger", "export"], &data);
    assert!(before.status.success() && after.status.success());
    assert_eq!(
        before.stdout, after.stdout,
        "verify and export wrote nothing"
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(!report.contains("open holds 0"), "{report}");
    assert!(
        !String::from_utf8_lossy(&before.stdout).contains("\"recovered\""),
        "nothing recovered by a read"
    );

    // Restart: recovery settles what was left open; then it serves again.
    let (mut child, base, second_key) = serve(&config, &data).await;
    assert!(second_key.is_none(), "no second demo account on restart");
    let account: Value = client
        .get(format!("{base}/v1/account"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["held_nanos"], 0, "no hold left open after recovery");
    let ok = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "after"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    let export = cli(&["ledger", "export"], &data);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let entries: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous, no duplicated entry"
    );
    let mut closes: HashMap<String, usize> = HashMap::new();
    let mut holds = 0;
    let mut recovered = 0;
    for entry in &entries {
        let hold = entry["hold"].to_string();
        match entry["kind"].as_str().unwrap() {
            "hold" => holds += 1,
            "settle" => *closes.entry(hold).or_default() += 1,
            "recovered" => {
                recovered += 1;
                *closes.entry(hold).or_default() += 1;
            }
            _ => {}
        }
    }
    assert!(recovered > 0, "holds open at the kill were recovered");
    assert_eq!(closes.len(), holds, "every hold closed");
    assert!(
        closes.values().all(|n| *n == 1),
        "each hold settled exactly once"
    );
    for id in &done_ids {
        let settles = entries
            .iter()
            .filter(|e| e["kind"] == "settle" && e["request_id"] == id.as_str())
            .count();
        assert_eq!(settles, 1, "request {id} saw [DONE] and settled once");
    }
    let verify = cli(&["ledger", "verify"], &data);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("clean"));
}
