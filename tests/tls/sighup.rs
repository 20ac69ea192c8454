//! `kill -HUP` reloads the certificate at once, even when the files look
//! unchanged to the 2-second poll (same lengths, same modification times):
//! a real `tokun serve` process, a real signal.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::pki::{Ca, Files};
use crate::support::temp_dir;

/// Starts `tokun serve` on `config`; the child and its https address.
async fn serve(config: &Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tokun");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("tokun printed its address");
        if let Some(rest) = line.strip_prefix("tokun listening on https://") {
            break rest.trim().parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_the_poll_cannot_see_change() {
    let ca = Ca::new();
    let dir = temp_dir("sighup");
    let files = Files::new(&dir);
    let (first, second) = (ca.leaf("first"), ca.leaf("second"));
    files.write_unnoticeably(&first);
    let config = dir.join("tokun.toml");
    let data = format!("{:?}", dir.join("data").display().to_string());
    std::fs::write(
        &config,
        format!("[server]\ndata_dir = {data}\n{}", files.toml()),
    )
    .unwrap();
    let (child, addr) = serve(&config).await;
    let peer = || async {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .resolve("localhost", addr)
            .tls_info(true)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/healthz", addr.port());
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        crate::peer_certificate(&response)
    };
    assert_eq!(peer().await, first.der);

    files.write_unnoticeably(&second);
    assert_eq!(peer().await, first.der, "nothing reloaded it yet");
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = peer().await;
        if seen == second.der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, second.der, "SIGHUP reloaded the certificate");
    drop(child);
}
