//! No secret reaches a log (issue 20 item 8): one server with every kind of
//! secret configured or handed out — the admin token, an upstream API key,
//! Stripe's secret key and webhook secret, API keys (used, revoked, mistyped),
//! a console session, a sign-in code sent by SMTP, a WebSocket ticket — is
//! driven through each path that touches them, with every tokun crate
//! logging at `trace` and everything else at `debug`. Then the whole log and
//! every access-log file are scanned for each secret; any hit fails.
//! One test per binary: the log subscriber is process-wide.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use support::{Harness, chat, client_with_key, upstream_config};
use tokun_testkit::smtp::SmtpSink;
use tokun_testkit::upstream::FakeUpstream;
use tokun_testkit::{FakeStripe, upstream::Script};

const STRIPE_KEY: &str = "sk_test_SECRETstripekey0123456789";
const WEBHOOK_SECRET: &str = "whsec_SECRETwebhook0123456789";
const UPSTREAM_KEY: &str = "sk-upstream-secret";
const MISTYPED_KEY: &str = "sk-tokun-MISTYPEDkeyABCDEFGHIJKLMNOPQRSTUVWXYZ0123";

/// Everything the server logs, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,tokun=trace,tokun_actors=trace,tokun_storage=trace,tokun_providers=trace",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    captured
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path.display().to_string(), bytes));
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Signs in with an email code read from the SMTP sink: (code, session cookie value).
async fn sign_in(h: &Harness, sink: &SmtpSink, email: &str) -> (String, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let origin = h.base.clone();
    let sent = browser
        .post(h.url("/login"))
        .header("origin", &origin)
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    let message = sink
        .wait_for(email, Duration::from_secs(10))
        .await
        .expect("the code arrives by SMTP");
    let subject = message
        .data
        .lines()
        .find_map(|line| line.strip_prefix("Subject: "))
        .unwrap();
    let code: String = subject.chars().take_while(char::is_ascii_digit).collect();
    let signed = browser
        .post(h.url("/login/code"))
        .header("origin", &origin)
        .form(&[("email", email), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    let cookie = signed.headers()[SET_COOKIE].to_str().unwrap();
    let session = cookie
        .strip_prefix("tokun_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    let page = browser
        .get(h.url("/keys"))
        .header(COOKIE, format!("tokun_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    (code, session)
}

async fn start() -> (Harness, SmtpSink, FakeStripe, FakeUpstream) {
    let sink = SmtpSink::start().await.unwrap();
    let stripe = FakeStripe::start().await.unwrap();
    let upstream = FakeUpstream::start().await.unwrap();
    let extra = format!(
        "[auth.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"tokun <no-reply@tokun.test>\"\n\n\
         [stripe]\nsecret_key = \"{STRIPE_KEY}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\napi_base = \"{}\"\n",
        sink.port(),
        stripe.api_base()
    );
    let h = Harness::start(Some(&upstream_config(&upstream, &extra))).await;
    (h, sink, stripe, upstream)
}

#[tokio::test]
async fn no_secret_reaches_the_server_log_or_the_access_log() {
    let log = capture_logs();
    let (h, sink, stripe, upstream) = start().await;
    let mut secrets = vec![
        h.admin_token.trim().to_owned(),
        h.api_key.clone(),
        STRIPE_KEY.to_owned(),
        WEBHOOK_SECRET.to_owned(),
        UPSTREAM_KEY.to_owned(),
        MISTYPED_KEY.to_owned(),
    ];

    // Completions on every path: echo and upstream, streamed and not, one
    // upstream failure (its error is logged), with the demo key.
    for model in ["echo-mini", "fake-model"] {
        for stream in [false, true] {
            let response = h
                .post_json("/v1/chat/completions", &chat(model, stream))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let _ = response.bytes().await.unwrap();
        }
    }
    upstream.push(Script::status(401));
    let failed = h
        .post_json("/v1/chat/completions", &chat("fake-model", false))
        .await;
    assert!(!failed.status().is_success());

    // A new key: created, used, revoked, used again (refused).
    let created: Value = h
        .post_json("/v1/keys", &json!({"name": "scan"}))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    let client = client_with_key(&key);
    let used = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), StatusCode::OK);
    let revoked = h
        .client
        .delete(h.url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let refused = client.get(h.url("/v1/account")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let mistyped = client_with_key(MISTYPED_KEY)
        .get(h.url("/v1/account"))
        .send()
        .await
        .unwrap();
    assert_eq!(mistyped.status(), StatusCode::UNAUTHORIZED);

    // The admin token, right and wrong.
    let admin = support::admin_get(&h, "/admin/actors").await;
    assert!(admin.is_object());
    let wrong = h
        .anonymous
        .get(h.url("/admin/actors"))
        .bearer_auth(format!("{}x", h.admin_token.trim()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // A console session from an email code sent by SMTP.
    let (code, session) = sign_in(&h, &sink, "scan@example.com").await;
    secrets.push(code);
    secrets.push(session);

    // A WebSocket ticket, used in the query string of the upgrade.
    let ticket: Value = h
        .post_json("/v1/ws/ticket", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    secrets.push(ticket.clone());
    let url = format!(
        "{}/v1/ws?ticket={ticket}",
        h.base.replacen("http://", "ws://", 1)
    );
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    drop(socket);

    // Stripe: a top-up, its signed webhook, and one with a bad signature.
    let topup = h.post_json("/v1/topups", &json!({"amount_usd": 10})).await;
    assert!(topup.status().is_success(), "{}", topup.status());
    let created = stripe.sessions().pop().unwrap();
    let webhook = h.url("/stripe/webhook");
    let paid = stripe
        .deliver(&webhook, WEBHOOK_SECRET, &stripe.completed(&created))
        .await;
    assert_eq!(paid.status(), StatusCode::OK);
    let forged = stripe
        .deliver(&webhook, "whsec_wrong", &stripe.completed(&created))
        .await;
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);

    h.wait_streams_idle().await;
    h.server.shutdown().await.unwrap();

    let access = files_under(&h.data_dir.join("access"));
    assert!(!access.is_empty(), "the access log was written");
    let log = log.0.lock().unwrap().clone();
    assert!(
        log.len() > 10_000,
        "the log captured the run ({} bytes)",
        log.len()
    );
    let mut sources = vec![("server log".to_owned(), log)];
    sources.extend(access);
    for (name, bytes) in &sources {
        for secret in &secrets {
            assert!(secret.len() >= 6, "a real secret: {secret:?}");
            assert!(
                !contains(bytes, secret),
                "{name} contains a secret ({} characters starting {:?})",
                secret.len(),
                &secret[..4]
            );
        }
    }
}
