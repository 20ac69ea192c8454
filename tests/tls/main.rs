//! TLS termination through real listeners and a real client (reqwest with
//! rustls, trusting a CA made in the test): HTTP/1.1 and HTTP/2 by ALPN, a
//! streamed completion, certificates reloaded for new connections while an
//! open stream keeps its own, the `Secure` session cookie, the 308 redirect
//! listener, and config errors that name the `[server.tls]` field. Who may
//! read `/metrics` is in `metrics.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "../support/mod.rs"]
mod support;

/// `/metrics` on the API and operator listeners, with and without the token.
mod metrics;
/// A CA and leaf certificates made with rcgen.
mod pki;
/// `kill -HUP` on a real `tokun serve`.
mod sighup;

use std::net::SocketAddr;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use pki::{Ca, Files, Leaf};
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Version};
use support::{Harness, chat, temp_dir};

/// `echo-mini` at once; `echo-slow` streams 100 tokens 100 ms apart.
const MODELS: &str = r#"
[[providers]]
name = "echo"
kind = "echo"

[[providers]]
name = "slow"
kind = "echo"
delay_ms = 100
reply_tokens = 100

[[models]]
id = "echo-mini"
price = { input = 1.0, output = 2.0 }
routes = [{ provider = "echo" }]

[[models]]
id = "echo-slow"
price = { input = 1.0, output = 2.0 }
routes = [{ provider = "slow" }]
"#;

/// A tokun serving TLS with a fresh CA's first leaf.
struct Tls {
    h: Harness,
    ca: Ca,
    files: Files,
    first: Leaf,
}

impl Tls {
    async fn start(extra: &str) -> Tls {
        let ca = Ca::new();
        let first = ca.leaf("first");
        let files = Files::new(&temp_dir("tls"));
        files.write(&first);
        let toml = format!("{extra}\n{}\n{MODELS}", files.toml());
        let h = Harness::start(Some(&toml)).await;
        assert!(h.server.serves_tls());
        Tls {
            h,
            ca,
            files,
            first,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.h.server.addr()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr().port())
    }

    /// A client trusting only the test CA, reaching `localhost` here, with
    /// the demo key; `tls_info` exposes the peer certificate.
    fn client(&self) -> reqwest::ClientBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = format!("Bearer {}", self.h.api_key).parse().unwrap();
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap())
            .resolve("localhost", self.addr())
            .tls_info(true)
            .default_headers(headers)
    }
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    info.peer_certificate()
        .expect("a peer certificate")
        .to_vec()
}

#[tokio::test]
async fn http1_and_http2_are_served_over_tls_chosen_by_alpn() {
    let tls = Tls::start("").await;
    let h1 = tls.client().http1_only().build().unwrap();
    let response = h1.get(tls.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(peer_certificate(&response), tls.first.der);

    let h2 = tls.client().build().unwrap();
    let response = h2.get(tls.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2, "h2 offered by ALPN");
    assert!(response.headers().contains_key("x-request-id"));

    // A streamed completion, over each protocol, to its [DONE].
    for client in [&h1, &h2] {
        let response = client
            .post(tls.url("/v1/chat/completions"))
            .json(&chat("echo-mini", true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let events: Vec<String> = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.unwrap().data)
            .collect()
            .await;
        assert!(events.len() > 2, "{events:?}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }

    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::get(format!("http://{}/v1/models", tls.addr())).await;
    assert!(plain.is_err(), "{plain:?}");
    // Nor is a client that does not trust the CA.
    let stranger = reqwest::Client::builder()
        .resolve("localhost", tls.addr())
        .build()
        .unwrap();
    assert!(stranger.get(tls.url("/v1/models")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_get_a_replaced_certificate_while_an_open_stream_finishes() {
    let tls = Tls::start("").await;
    // An open stream (100 tokens, 100 ms apart) on its own connection.
    let streaming = tls.client().build().unwrap();
    let response = streaming
        .post(tls.url("/v1/chat/completions"))
        .json(&chat("echo-slow", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(peer_certificate(&response), tls.first.der);
    let mut events = response.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_ne!(first.data, "[DONE]");
    let reader = tokio::spawn(async move {
        let mut data = Vec::new();
        while let Some(event) = events.next().await {
            data.push(event.unwrap().data);
        }
        data
    });

    let second = tls.ca.leaf("second");
    assert_ne!(second.der, tls.first.der);
    tls.files.write(&second);
    // New connections (no pooling) see the new certificate once the files
    // have been noticed (polled every 2 s).
    let fresh = || tls.client().pool_max_idle_per_host(0).build().unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        let response = fresh().get(tls.url("/healthz")).send().await.unwrap();
        seen = peer_certificate(&response);
        if seen == second.der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen, second.der,
        "a new connection gets the new certificate"
    );
    assert!(
        !reader.is_finished(),
        "the stream was still open when the certificate changed"
    );
    // The open connection keeps the certificate it was made with: a new
    // request multiplexed on it (HTTP/2) still sees the first one.
    let again = streaming.get(tls.url("/healthz")).send().await.unwrap();
    assert_eq!(peer_certificate(&again), tls.first.der);
    let data = reader.await.unwrap();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
}

#[tokio::test]
async fn a_console_sign_in_over_tls_sets_a_secure_cookie() {
    let tls = Tls::start("").await;
    let client = tls.client().redirect(reqwest::redirect::Policy::none());
    let browser = client.build().unwrap();
    // A browser's form post: HTTP/2 (no Host header, only :authority) with
    // an Origin naming this site.
    let origin = format!("https://localhost:{}", tls.addr().port());
    let email = "secure@example.com";
    let mut codes = tls.h.server.watch_sign_in_codes();
    let response = browser
        .post(tls.url("/login"))
        .header("origin", &origin)
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let code = tokio::time::timeout(Duration::from_secs(5), codes.recv())
        .await
        .expect("a code is sent")
        .unwrap()
        .code;
    let response = browser
        .post(tls.url("/login/code"))
        .header("origin", &origin)
        .form(&[("email", email), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("tokun_session="), "{cookie}");
    assert!(cookie.contains("; Secure"), "over TLS: {cookie}");
}

#[tokio::test]
async fn plain_http_on_redirect_http_is_sent_to_https_with_308() {
    let tls = Tls::start("[server]\nredirect_http = \"127.0.0.1:0\"\n").await;
    let redirect = tls.h.server.redirect_addr().expect("a redirect listener");
    let manual = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = manual
        .get(format!("http://{redirect}/v1/models?limit=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    let https = format!("https://127.0.0.1:{}/v1/models?limit=1", tls.addr().port());
    assert_eq!(response.headers()[LOCATION], https.as_str());
    // A 308 keeps the method and body: a POST is redirected too.
    let post = manual
        .post(format!("http://{redirect}/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::PERMANENT_REDIRECT);
    // A client following it lands on the TLS listener.
    let follows = tls.client().build().unwrap();
    let landed = follows
        .get(format!("http://{redirect}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(landed.status(), StatusCode::OK);
    assert_eq!(landed.url().scheme(), "https");

    // With an https public_url, redirects go to its host.
    let public = Tls::start(
        "[server]\nredirect_http = \"127.0.0.1:0\"\npublic_url = \"https://gateway.example.com/\"\n",
    )
    .await;
    let redirect = public.h.server.redirect_addr().unwrap();
    let response = manual
        .get(format!("http://{redirect}/login?next=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()[LOCATION],
        "https://gateway.example.com/login?next=%2F"
    );
}

/// The first line of the error `Config::parse` gives for `toml`.
fn config_error(toml: &str) -> String {
    match tokun::config::Config::parse(toml, |_| None) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn tls_config_errors_name_the_field() {
    let ca = Ca::new();
    let dir = temp_dir("tls-config");
    let files = Files::new(&dir);
    let missing = config_error(&files.toml());
    assert!(
        missing.starts_with("server.tls.cert_file: cannot read"),
        "{missing}"
    );

    files.write(&ca.leaf("one"));
    std::fs::write(&files.cert, "not a certificate\n").unwrap();
    let bad_pem = config_error(&files.toml());
    assert!(bad_pem.starts_with("server.tls.cert_file:"), "{bad_pem}");

    files.write(&ca.leaf("one"));
    std::fs::write(&files.key, ca.leaf("two").chain).unwrap();
    let no_key = config_error(&files.toml());
    assert!(no_key.starts_with("server.tls.key_file:"), "{no_key}");

    let other = ca.leaf("other");
    files.write(&ca.leaf("one"));
    std::fs::write(&files.key, &other.key).unwrap();
    let mismatch = config_error(&files.toml());
    assert!(
        mismatch.starts_with("server.tls.key_file:") && mismatch.contains("does not match"),
        "{mismatch}"
    );
    assert!(
        !mismatch.contains("PRIVATE KEY"),
        "no key material: {mismatch}"
    );

    files.write(&other);
    let fine = format!("[server]\nredirect_http = \"0.0.0.0:80\"\n{}", files.toml());
    let config = tokun::config::Config::parse(&fine, |_| None).unwrap();
    assert!(config.server.https() && config.server.redirect_http.is_some());

    let without_tls = config_error("[server]\nredirect_http = \"0.0.0.0:80\"\n");
    assert!(
        without_tls.starts_with("server.redirect_http:"),
        "{without_tls}"
    );
    let zero = config_error("[server]\nheader_read_timeout_secs = 0\n");
    assert!(
        zero.starts_with("server.header_read_timeout_secs:"),
        "{zero}"
    );
    let defaults = tokun::config::Config::default();
    assert_eq!(defaults.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(defaults.server.idle_timeout, Duration::from_secs(60));
    assert!(!defaults.server.https() && !defaults.metrics.public);
}
