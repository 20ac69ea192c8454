//! The adapter over real sockets: a raw HTTP/1.1 fake upstream on 127.0.0.1:0
//! answers one request with recorded bytes and hands back what it received.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{NORMAL_TEXT, done, failed, fixture, normal_usage, outcome};
use crate::error::ProviderError;
use crate::http::http_client;
use crate::openai::OpenAiAdapter;
use crate::types::ChatRequest;

const KEY: &str = "sk-test-SECRET-0123456789";

/// A one-shot fake upstream.
struct Upstream {
    base_url: String,
    /// Resolves to the raw request the upstream received.
    request: JoinHandle<String>,
}

async fn upstream(response: Vec<u8>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1/", listener.local_addr().unwrap());
    let request = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let request = read_request(&mut socket).await;
        socket.write_all(&response).await.unwrap();
        socket.shutdown().await.ok();
        request
    });
    Upstream { base_url, request }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        let read = socket.read(&mut scratch).await.unwrap();
        if read == 0 {
            break;
        }
        buf.extend_from_slice(&scratch[..read]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8(buf).unwrap()
}

fn answer(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    [head.into_bytes(), body.to_vec()].concat()
}

/// An event stream delimited by closing the connection, as many servers send it.
fn event_stream(body: &[u8]) -> Vec<u8> {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    [head.as_bytes(), body].concat()
}

fn adapter(upstream: &Upstream) -> OpenAiAdapter {
    let client = http_client(Duration::from_secs(5)).unwrap();
    OpenAiAdapter::new(&upstream.base_url, Some(KEY.to_owned()), client)
}

fn hello() -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": true
    }))
    .unwrap()
}

#[tokio::test]
async fn complete_sends_credentials_and_parses_the_body() {
    let body = fixture("completion.json");
    let upstream = upstream(answer("200 OK", &["content-type: application/json"], &body)).await;
    let completion = adapter(&upstream).complete(&hello()).await.unwrap().body;
    assert_eq!(completion.choices[0].message["content"], "Hello, wörld 👋!");

    let request = upstream.request.await.unwrap();
    assert!(
        request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request
            .to_lowercase()
            .contains(&format!("authorization: bearer {}", KEY.to_lowercase()))
    );
    assert!(!request.contains("\"stream\""), "{request}");
}

#[tokio::test]
async fn stream_asks_for_usage_and_yields_chunks() {
    let upstream = upstream(event_stream(&fixture("normal.sse"))).await;
    let reply = adapter(&upstream).stream(&hello()).await.unwrap();
    assert!(reply.limits.is_empty(), "no x-ratelimit headers were sent");
    let items = reply.body.collect::<Vec<_>>().await;
    assert_eq!(outcome(items), done(8, NORMAL_TEXT, normal_usage()));

    let request = upstream.request.await.unwrap();
    assert!(
        request.contains(r#""stream":true,"stream_options":{"include_usage":true}"#),
        "{request}"
    );
    assert!(
        request.to_lowercase().contains("accept: text/event-stream"),
        "{request}"
    );
}

#[tokio::test]
async fn replies_carry_the_rate_limits_the_upstream_reported() {
    let headers = [
        "content-type: application/json",
        "x-ratelimit-limit-requests: 500",
        "x-ratelimit-remaining-requests: 0",
        "x-ratelimit-reset-requests: 1m30s",
        "x-ratelimit-remaining-tokens: 2000",
    ];
    let upstream = upstream(answer("200 OK", &headers, &fixture("completion.json"))).await;
    let limits = adapter(&upstream).complete(&hello()).await.unwrap().limits;
    let requests = limits.requests.expect("request window");
    assert_eq!(
        (requests.limit, requests.remaining, requests.reset),
        (Some(500), 0, Some(Duration::from_secs(90)))
    );
    let tokens = limits.tokens.expect("token window");
    assert_eq!(
        (tokens.limit, tokens.remaining, tokens.reset),
        (None, 2000, None)
    );
}

#[tokio::test]
async fn status_errors_carry_retry_after_and_never_the_key() {
    let body = br#"{"error":{"message":"Slow down, sk-test-SECRET-0123456789"}}"#;
    let upstream = upstream(answer("429 Too Many Requests", &["retry-after: 3"], body)).await;
    let err = adapter(&upstream).stream(&hello()).await.err().unwrap();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(
        err.to_string(),
        "the upstream answered HTTP 429: Slow down, [redacted]"
    );
}

#[tokio::test]
async fn html_error_pages_become_short_status_messages() {
    let upstream = upstream(answer(
        "502 Bad Gateway",
        &["content-type: text/html"],
        &fixture("html_502.html"),
    ))
    .await;
    let err = adapter(&upstream).complete(&hello()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Status { status: 502, message, retry_after: None }
        if message == "502 Bad Gateway 502 Bad Gateway cloudflare"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_json_error_answering_a_stream_request_is_a_stream_error() {
    let body = fixture("error_in_200.json");
    let upstream = upstream(answer("200 OK", &["content-type: application/json"], &body)).await;
    let err = adapter(&upstream).stream(&hello()).await.err().unwrap();
    assert_eq!(err.kind(), "stream_error");
}

#[tokio::test]
async fn a_body_cut_short_is_truncated() {
    let body = fixture("eof_mid_stream.sse");
    let mut response = answer("200 OK", &["content-type: text/event-stream"], &body);
    // Promise more bytes than are sent, then close: the body ends early.
    let promised = format!("content-length: {}", body.len());
    let response_text = String::from_utf8(response.clone()).unwrap().replacen(
        &promised,
        "content-length: 100000",
        1,
    );
    response = response_text.into_bytes();
    let upstream = upstream(response).await;
    let items = adapter(&upstream)
        .stream(&hello())
        .await
        .unwrap()
        .body
        .collect::<Vec<_>>()
        .await;
    assert_eq!(outcome(items), failed(4, "Hello, wörld 👋", "truncated"));
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let client = http_client(Duration::from_secs(5)).unwrap();
    let err = OpenAiAdapter::new(&base_url, None, client)
        .complete(&hello())
        .await
        .unwrap_err();
    assert_eq!((err.kind(), err.retryable()), ("connect", true), "{err:?}");
}

#[test]
fn debug_output_never_shows_the_key() {
    let client = http_client(Duration::from_secs(5)).unwrap();
    let adapter = OpenAiAdapter::new("https://api.openai.com/v1/", Some(KEY.to_owned()), client);
    let debug = format!("{adapter:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(
        debug.contains("https://api.openai.com/v1/chat/completions"),
        "{debug}"
    );
    assert_eq!(
        adapter.endpoint(),
        "https://api.openai.com/v1/chat/completions"
    );
}

#[tokio::test]
async fn a_key_that_cannot_be_a_header_fails_without_sending() {
    let client = http_client(Duration::from_secs(5)).unwrap();
    let adapter = OpenAiAdapter::new("http://127.0.0.1:9/v1", Some("bad\nkey".to_owned()), client);
    let err = adapter.complete(&hello()).await.unwrap_err();
    assert_eq!(err.kind(), "request");
    assert!(!format!("{adapter:?}{err}").contains("bad\nkey"));
}
