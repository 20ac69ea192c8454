//! The access log through the real server: every HTTP request and WebSocket
//! upgrade on both listeners is a JSON line in `<data_dir>/access/`, with
//! the right fields, and no API key, session cookie, ticket, sign-in code,
//! OIDC code or state appears anywhere in the files; `X-Forwarded-For`
//! counts only from a trusted proxy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::path::Path;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE, USER_AGENT};
use serde_json::Value;
use support::{Harness, chat};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const AGENT: &str = "access-log-test/1.0";

/// Every line of every day file, and the files' whole text.
fn read_log(data_dir: &Path) -> (Vec<Value>, String) {
    let mut text = String::new();
    for entry in std::fs::read_dir(data_dir.join("access")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("access-") && name.ends_with(".log"),
            "{name}"
        );
        text.push_str(&std::fs::read_to_string(&path).unwrap());
    }
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    (lines, text)
}

/// The line of the request answered with `x-request-id: id`.
fn line_of<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let mut found = lines.iter().filter(|line| line["request_id"] == id);
    let line = found.next().unwrap_or_else(|| panic!("no line for {id}"));
    assert!(found.next().is_none(), "one line per request");
    line
}

fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers["x-request-id"].to_str().unwrap().to_owned()
}

/// Signs in by email code; the session cookie (`tokun_session=…`) and the code.
async fn sign_in(h: &Harness, email: &str) -> (String, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut codes = h.server.watch_sign_in_codes();
    let sent = browser
        .post(h.url("/login"))
        .header("accept", "text/html")
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let code = tokio::time::timeout(Duration::from_secs(5), codes.recv())
        .await
        .expect("a code is sent")
        .unwrap()
        .code;
    let signed = browser
        .post(h.url("/login/code"))
        .header("accept", "text/html")
        .form(&[("email", email), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let set = signed.headers()[SET_COOKIE].to_str().unwrap();
    (set.split(';').next().unwrap().to_owned(), code)
}

/// Opens a WebSocket at `path` (query included); the 101's `x-request-id`.
async fn upgrade(h: &Harness, path: &str) -> String {
    let url = format!("{}{path}", h.base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("user-agent", AGENT.parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = socket.close(None).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_upgrades_are_logged_without_a_secret() {
    let h = Harness::start(Some("[server]\nadmin_listen = \"127.0.0.1:0\"\n")).await;
    // A completion with the API key in `Authorization`.
    let chat_response = h
        .client
        .post(h.url("/v1/chat/completions"))
        .header(USER_AGENT, AGENT)
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat_response.status(), 200);
    let chat_id = request_id(chat_response.headers());
    // The counting body keeps the size known: still `Content-Length`, not chunked.
    assert!(chat_response.headers().contains_key("content-length"));
    let chat_bytes = chat_response.bytes().await.unwrap().len();
    // A stream: its bytes are counted to the end.
    let stream_response = h
        .post_json("/v1/chat/completions", &chat("echo-mini", true))
        .await;
    let stream_id = request_id(stream_response.headers());
    let stream_bytes = stream_response.bytes().await.unwrap().len();
    // A console page with the session cookie.
    let (cookie, code) = sign_in(&h, "access.log@example.com").await;
    let page = h
        .anonymous
        .get(h.url("/account"))
        .header("accept", "text/html")
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page_id = request_id(page.headers());
    // Secrets in query strings, on the API and the OIDC callback.
    let oidc = h
        .anonymous
        .get(h.url("/login/oidc/callback?code=oidc-code-5ecret&state=oidc-state-5ecret"))
        .send()
        .await
        .unwrap();
    let oidc_id = request_id(oidc.headers());
    let models = h
        .anonymous
        .get(h.url("/v1/models?ticket=query-ticket-5ecret&key=sk-query-5ecret&model=echo-mini"))
        .send()
        .await
        .unwrap();
    let models_id = request_id(models.headers());
    // WebSocket upgrades with a real ticket, and a made-up one for Realtime.
    let ticket: Value = h
        .client
        .post(h.url("/v1/ws/ticket"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let ws_id = upgrade(&h, &format!("/v1/ws?ticket={ticket}")).await;
    let realtime_id = upgrade(&h, "/v1/realtime?model=echo-mini&ticket=rt-ticket-5ecret").await;
    // The operator listener logs to the same files.
    let operator = format!("http://{}/metrics", h.server.operator_addr().unwrap());
    let admin = h.anonymous.get(operator).send().await.unwrap();
    let admin_id = request_id(admin.headers());

    h.server.flush_access_log().await;
    let (lines, text) = read_log(&h.data_dir);

    let line = line_of(&lines, &chat_id);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], chat_bytes);
    assert_eq!(line["user_agent"], AGENT);
    assert_eq!(line["ip"], "127.0.0.1");
    assert_eq!(line["kind"], "http");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    let ts = line["ts"].as_str().unwrap();
    // RFC 3339, UTC, milliseconds: 2025-03-01T12:34:56.789Z.
    assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "{ts}"
    );
    assert_eq!(line_of(&lines, &stream_id)["bytes"], stream_bytes);
    assert!(stream_bytes > 100, "a whole stream, {stream_bytes} bytes");
    assert_eq!(line_of(&lines, &page_id)["path"], "/account");
    assert_eq!(line_of(&lines, &page_id)["status"], 200);
    assert_eq!(line_of(&lines, &oidc_id)["path"], "/login/oidc/callback");
    assert_eq!(
        line_of(&lines, &models_id)["path"],
        "/v1/models?model=echo-mini"
    );
    for (id, path) in [
        (&ws_id, "/v1/ws"),
        (&realtime_id, "/v1/realtime?model=echo-mini"),
    ] {
        let line = line_of(&lines, id);
        assert_eq!(line["path"], path);
        assert_eq!(line["status"], 101);
        assert_eq!(line["kind"], "websocket");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["user_agent"], AGENT);
    }
    assert_eq!(line_of(&lines, &admin_id)["path"], "/metrics");

    let session = cookie.split_once('=').unwrap().1;
    for secret in [
        h.api_key.as_str(),
        h.admin_token.trim(),
        session,
        &code,
        &ticket,
        "oidc-code-5ecret",
        "oidc-state-5ecret",
        "query-ticket-5ecret",
        "sk-query-5ecret",
        "rt-ticket-5ecret",
    ] {
        assert!(secret.len() >= 6, "a real secret: {secret:?}");
        assert!(!text.contains(secret), "{secret} is in the access log");
    }
    for word in [
        "authorization",
        "Bearer",
        "tokun_session",
        "ticket=",
        "code=",
        "state=",
        "key=",
    ] {
        assert!(!text.contains(word), "{word} is in the access log");
    }
}

/// One request with `X-Forwarded-For` to a fresh server configured with
/// `toml`; after a clean shutdown, the `ip` its line recorded.
async fn logged_ip(toml: &str, forwarded: &str) -> Value {
    let h = Harness::start(Some(toml)).await;
    let response = h
        .anonymous
        .get(h.url("/healthz"))
        .header("x-forwarded-for", forwarded)
        .send()
        .await
        .unwrap();
    let id = request_id(response.headers());
    let Harness {
        server, data_dir, ..
    } = h;
    server.shutdown().await.unwrap();
    let (lines, _) = read_log(&data_dir);
    line_of(&lines, &id)["ip"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let chain = "198.51.100.7, 10.0.0.1";
    // No trusted proxies (the default): the socket's peer, whatever the header says.
    assert_eq!(logged_ip("", chain).await, "127.0.0.1");
    // A trusted peer that is not this one: still the peer.
    let other = "[server]\ntrusted_proxies = [\"192.0.2.0/24\"]\n";
    assert_eq!(logged_ip(other, chain).await, "127.0.0.1");
    // Trusted peer: the nearest hop it names that is not trusted itself.
    let local = "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n";
    assert_eq!(logged_ip(local, chain).await, "10.0.0.1");
    let both = "[server]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n";
    assert_eq!(logged_ip(both, chain).await, "198.51.100.7");
}

#[tokio::test]
async fn a_disabled_access_log_writes_nothing() {
    let h = Harness::start(Some("[access_log]\nenabled = false\n")).await;
    let response = h.anonymous.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let Harness {
        server, data_dir, ..
    } = h;
    server.shutdown().await.unwrap();
    assert!(!data_dir.join("access").exists());
}
