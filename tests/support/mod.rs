//! Test harness: a real tokun server on 127.0.0.1:0 with its own data dir,
//! optionally in front of a fake upstream, and a real HTTP client.

#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

use std::path::PathBuf;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;
use tokun::config::Config;
use tokun::server::RunningServer;
use tokun_testkit::FakeUpstream;

pub struct Harness {
    pub server: RunningServer,
    /// Sends the demo account's API key on every request.
    pub client: reqwest::Client,
    /// Sends no credentials.
    pub anonymous: reqwest::Client,
    pub api_key: String,
    pub admin_token: String,
    pub base: String,
    pub data_dir: PathBuf,
}

/// A config serving `fake-model` from the fake upstream (plus the echo defaults' shape).
pub fn upstream_config(upstream: &FakeUpstream, extra: &str) -> String {
    format!(
        r#"
[server]
max_body_bytes = 65536

[[providers]]
name = "fake"
kind = "openai"
base_url = "{base}"
api_key = "sk-upstream-secret"
first_byte_timeout_ms = 2000
idle_timeout_ms = 2000

[[providers]]
name = "echo"
kind = "echo"

[[models]]
id = "fake-model"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "fake", model = "upstream-model" }}]

[[models]]
id = "echo-mini"
price = {{ input = 0.15, output = 0.60 }}
routes = [{{ provider = "echo" }}]
{extra}
"#,
        base = upstream.base_url()
    )
}

/// One model, `two-routes`, served by two OpenAI-compatible providers tried
/// in order, `first` and `second`; `first_extra` adds lines to the first.
pub fn two_routes(first: &FakeUpstream, second: &FakeUpstream, first_extra: &str) -> String {
    format!(
        r#"
[[providers]]
name = "first"
kind = "openai"
base_url = "{}"
{first_extra}

[[providers]]
name = "second"
kind = "openai"
base_url = "{}"

[[models]]
id = "two-routes"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "first" }}, {{ provider = "second" }}]
"#,
        first.base_url(),
        second.base_url()
    )
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokun-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) ^ (std::ptr::addr_of!(nanos) as u64)
}

impl Harness {
    pub async fn start(toml: Option<&str>) -> Harness {
        let mut config = match toml {
            Some(text) => {
                Config::parse(text, |name| std::env::var(name).ok()).expect("test config")
            }
            None => Config::default(),
        };
        let data_dir = temp_dir("srv");
        config.server.data_dir = data_dir.clone();
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Harness {
        let data_dir = config.server.data_dir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = RunningServer::start(config, listener)
            .await
            .expect("server starts");
        let base = format!("http://{}", server.addr());
        let api_key = server.first_start().demo_key.clone().unwrap_or_default();
        let admin_token = std::fs::read_to_string(data_dir.join("admin_token")).unwrap_or_default();
        let client = client_with_key(&api_key);
        Harness {
            server,
            client,
            anonymous: reqwest::Client::new(),
            api_key,
            admin_token,
            base,
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Streams a completion and returns every SSE `data` payload, parsed the
    /// way OpenAI's SDKs do (an SSE parser, stopping at `[DONE]`).
    pub async fn stream_events(&self, body: &Value) -> (reqwest::header::HeaderMap, Vec<String>) {
        let response = self.post_json("/v1/chat/completions", body).await;
        assert_eq!(response.status(), 200, "stream status");
        let headers = response.headers().clone();
        let mut events = response.bytes_stream().eventsource();
        let mut data = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.expect("valid SSE");
            data.push(event.data);
        }
        (headers, data)
    }

    /// Waits (bounded) until no stream actor is alive.
    pub async fn wait_streams_idle(&self) -> u64 {
        for _ in 0..500 {
            let live = self.server.streams().stats().live();
            if live == 0 {
                return 0;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.server.streams().stats().live()
    }
}

pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = format!("Bearer {key}").parse() {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A `/v1/ws` socket authenticated with `Authorization: Bearer <key>`.
pub async fn ws_with_key(
    h: &Harness,
    key: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/v1/ws", h.base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("a ws request");
    let bearer = format!("Bearer {key}").parse().expect("a header value");
    request.headers_mut().insert("authorization", bearer);
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the socket opens")
        .0
}

pub fn chat(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to tokun"}],
    })
}

pub fn json(data: &str) -> Value {
    serde_json::from_str(data).expect("JSON event")
}

pub async fn admin_post(h: &Harness, path: &str, body: Value) -> reqwest::Response {
    h.anonymous
        .post(h.url(path))
        .bearer_auth(&h.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Creates an account with `credit` USD; returns (id, api key).
pub async fn new_account(h: &Harness, email: &str, credit: &str) -> (String, String) {
    let response = admin_post(
        h,
        "/admin/accounts",
        serde_json::json!({"email": email, "credit_usd": credit}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["api_key"].as_str().unwrap().to_owned(),
    )
}

pub async fn account(client: &reqwest::Client, h: &Harness) -> Value {
    get_json(client, h, "/v1/account").await
}

/// `GET path` with `client`'s credentials; the JSON body.
pub async fn get_json(client: &reqwest::Client, h: &Harness, path: &str) -> Value {
    client
        .get(h.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET path` with the admin token; the JSON body.
pub async fn admin_get(h: &Harness, path: &str) -> Value {
    h.anonymous
        .get(h.url(path))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn verify_clean(h: &Harness) -> Value {
    let report = admin_get(h, "/admin/ledger/verify").await;
    assert_eq!(report["clean"], true, "{report}");
    report
}

/// A WebSocket closed by a server shutdown: code 1001 with tokun's reason,
/// and the shutdown itself finishing.
pub async fn assert_closed_for_shutdown(
    frame: &tokio_tungstenite::tungstenite::protocol::CloseFrame,
    shutdown: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
    assert_eq!(frame.reason.as_str(), "tokun is shutting down");
    tokio::time::timeout(std::time::Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown ends")
        .unwrap()
        .unwrap();
}

/// The playground's tests: `echo-mini`, and `echo-long`, which streams
/// 4,000 tokens 20 ms apart (long enough to press Stop), with $5 for a new
/// email.
pub const PLAYGROUND_CONFIG: &str = r#"
[billing]
signup_credit_usd = 5

[[providers]]
name = "echo"
kind = "echo"

[[providers]]
name = "echo-long"
kind = "echo"
delay_ms = 20
reply_tokens = 4000

[[models]]
id = "echo-mini"
price = { input = 0.15, output = 0.60 }
routes = [{ provider = "echo" }]

[[models]]
id = "echo-long"
price = { input = 1.0, output = 4.0 }
routes = [{ provider = "echo-long" }]
"#;
