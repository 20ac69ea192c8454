//! A fake Anthropic Messages upstream (`POST /v1/messages`, axum on
//! 127.0.0.1:0) scripted with the same [`Script`] as the OpenAI fake: tokens
//! become `text_delta` events between `message_start` (input usage, partial
//! output) and `message_delta` (stop reason, final output usage) and
//! `message_stop`; `status` answers Anthropic's error envelope; `drop_after`,
//! `garbage_after` and `error_event_after` break the stream after N tokens.
//! Every request is recorded with its headers (see [`FakeServer::recorded`]).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::Script;
use crate::fake::{FakeServer, Harness, WireFormat, usage_of};
use crate::upstream::with_headers;

/// The fake Anthropic upstream; `base_url()` is what an Anthropic route
/// configures (`/v1/messages` is appended by the adapter).
pub type FakeAnthropic = FakeServer<AnthropicWire>;

/// Anthropic's wire format, for [`FakeServer`].
pub struct AnthropicWire;

impl WireFormat for AnthropicWire {
    fn routes(harness: Arc<Harness>) -> Router {
        Router::new()
            .route("/v1/messages", post(messages))
            .with_state(harness)
    }
}

const MESSAGE_ID: &str = "msg_fake01";

async fn messages(
    State(harness): State<Arc<Harness>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (request, script) = harness.begin(&uri, &headers, &body);
    if script.hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(script.first_byte_delay).await;
    let headers = script.headers.clone();
    let response = if let Some(status) = script.status {
        error_response(status, script.retry_after_secs)
    } else {
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("claude-fake")
            .to_owned();
        if request.get("stream").and_then(Value::as_bool) == Some(true) {
            stream_response(script, model)
        } else {
            message_response(&script, &model)
        }
    };
    with_headers(response, &headers)
}

fn error_response(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let message = format!("fake anthropic says {}", status.as_u16());
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn message_response(script: &Script, model: &str) -> Response {
    let mut body = json!({
        "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": script.tokens.concat()}],
        "stop_reason": "end_turn", "stop_sequence": null,
    });
    if !script.omit_usage {
        let (input, output) = usage_of(script);
        body["usage"] = json!({"input_tokens": input, "output_tokens": output});
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn event(data: &Value) -> String {
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    format!("event: {kind}\ndata: {data}\n\n")
}

/// `message_start`, the text block's start and a `ping`.
fn opening(script: &Script, model: &str) -> String {
    let mut message = json!({
        "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null,
    });
    if !script.omit_usage {
        // Like Anthropic: the input count, and a partial output count.
        message["usage"] = json!({"input_tokens": usage_of(script).0, "output_tokens": 1});
    }
    [
        event(&json!({"type": "message_start", "message": message})),
        event(
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(&json!({"type": "ping"})),
    ]
    .concat()
}

/// The block's end and `message_delta` with the stop reason and final output count.
fn closing(script: &Script) -> String {
    let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}});
    if !script.omit_usage {
        delta["usage"] = json!({"output_tokens": usage_of(script).1});
    }
    [
        event(&json!({"type": "content_block_stop", "index": 0})),
        event(&delta),
    ]
    .concat()
}

/// What to send at `step` ≥ 1 (one frame per token, then closing, then
/// `message_stop`), `None` when done. A failure replaces the frame due after
/// that many tokens, and the stream ends after it.
fn frame(step: usize, script: &Script) -> Option<Result<String, std::io::Error>> {
    let tokens = script.tokens.len();
    let sent = step.checked_sub(1)?;
    let frame = if script.drop_after == Some(sent) {
        return Some(Err(std::io::Error::other("dropped")));
    } else if script.garbage_after == Some(sent) {
        "event: content_block_delta\ndata: {\"type\": not json\n\n".to_owned()
    } else if script.error_event_after == Some(sent) {
        event(
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
    } else if step <= tokens {
        let text = &script.tokens[step - 1];
        event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}))
    } else if step == tokens + 1 {
        closing(script)
    } else if step == tokens + 2 {
        event(&json!({"type": "message_stop"}))
    } else {
        return None;
    };
    Some(Ok(frame))
}

/// Whether the frame at `step` ends the stream early (a drop, garbage or an error event).
fn breaks_at(step: usize, script: &Script) -> bool {
    let sent = Some(step.saturating_sub(1));
    [
        script.drop_after,
        script.garbage_after,
        script.error_event_after,
    ]
    .contains(&sent)
}

fn stream_response(script: Script, model: String) -> Response {
    let first = opening(&script, &model);
    let frames = futures_util::stream::unfold((0usize, script), move |(step, script)| {
        let first = (step == 0).then(|| first.clone());
        async move {
            if let Some(first) = first {
                return Some((Ok(Bytes::from(first)), (1, script)));
            }
            if step == usize::MAX {
                return None;
            }
            tokio::time::sleep(script.delay).await;
            let frame = frame(step, &script)?;
            let next = if breaks_at(step, &script) {
                usize::MAX
            } else {
                step + 1
            };
            Some((frame.map(Bytes::from), (next, script)))
        }
    });
    // An `Err` item makes hyper abort the connection mid-body: a real drop.
    let mut response = Response::new(Body::from_stream(frames));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use serde_json::json;
    use tokun_providers::http::http_client;
    use tokun_providers::{AnthropicAdapter, ChatRequest, ProviderError, Usage};

    use super::*;

    const KEY: &str = "sk-ant-fake-SECRET-42";

    fn adapter(fake: &FakeAnthropic) -> AnthropicAdapter {
        let client = http_client(Duration::from_secs(5)).unwrap();
        AnthropicAdapter::new(&fake.base_url(), Some(KEY.to_owned()), client)
    }

    fn hello() -> ChatRequest {
        serde_json::from_value(json!({"model": "claude-fake", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ]}))
        .unwrap()
    }

    /// Text, finish reason, usage and error kind of a whole stream.
    async fn drain(
        fake: &FakeAnthropic,
    ) -> (String, Option<String>, Option<Usage>, Option<&'static str>) {
        let mut chunks = adapter(fake).stream(&hello()).await.unwrap().body;
        let (mut text, mut finish, mut usage, mut error) = (String::new(), None, None, None);
        while let Some(item) = chunks.next().await {
            match item {
                Ok(chunk) => {
                    for choice in &chunk.choices {
                        text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                    }
                    finish = finish.or(chunk.finish_reason().map(str::to_owned));
                    usage = usage.or(chunk.usage);
                }
                Err(err) => error = Some(err.kind()),
            }
        }
        (text, finish, usage, error)
    }

    #[tokio::test]
    async fn streams_with_exact_usage_and_the_key_only_in_its_header() {
        let fake = FakeAnthropic::start().await.unwrap();
        fake.push(Script {
            usage: Some((31, 7)),
            ..Script::default()
        });
        let (text, finish, usage, error) = drain(&fake).await;
        assert_eq!(text, "Hello from the fake upstream.");
        assert_eq!(
            (finish.as_deref(), usage, error),
            (Some("stop"), Some(Usage::new(31, 7)), None)
        );

        let [request] = fake.recorded().try_into().unwrap();
        assert_eq!(request.path_and_query, "/v1/messages");
        assert_eq!(request.header("x-api-key"), Some(KEY));
        assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
        assert!(!request.contains_outside(KEY, "x-api-key"));
        assert_eq!(request.body["system"], "Be brief.");
        assert_eq!(request.body["stream"], true);
    }

    #[tokio::test]
    async fn reports_anthropic_rate_limit_headers() {
        let fake = FakeAnthropic::start().await.unwrap();
        fake.push(Script {
            headers: vec![
                ("anthropic-ratelimit-requests-limit", "50".into()),
                ("anthropic-ratelimit-requests-remaining", "49".into()),
                (
                    "anthropic-ratelimit-requests-reset",
                    "2000-01-01T00:00:00Z".into(),
                ),
            ],
            ..Script::default()
        });
        let limits = adapter(&fake).stream(&hello()).await.unwrap().limits;
        let requests = limits.requests.expect("request window");
        // A reset in the past means the window is already full again.
        assert_eq!(
            (requests.limit, requests.remaining, requests.reset),
            (Some(50), 49, Some(Duration::ZERO))
        );
        assert_eq!(limits.tokens, None);
    }

    #[tokio::test]
    async fn completes_without_streaming() {
        let fake = FakeAnthropic::start().await.unwrap();
        let completion = adapter(&fake).complete(&hello()).await.unwrap().body;
        assert_eq!(
            completion.choices[0].message["content"],
            "Hello from the fake upstream."
        );
        assert_eq!(completion.usage, Some(Usage::new(10, 6)));
        assert!(fake.requests()[0].get("stream").is_none());
    }

    #[tokio::test]
    async fn overloaded_is_retryable_with_its_hint() {
        let fake = FakeAnthropic::start().await.unwrap();
        fake.push(Script {
            retry_after_secs: Some(3),
            ..Script::status(529)
        });
        let err = adapter(&fake).stream(&hello()).await.err().unwrap();
        assert_eq!((err.kind(), err.retryable()), ("status", true));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(
            err.to_string(),
            "the upstream answered HTTP 529: fake anthropic says 529"
        );
    }

    #[tokio::test]
    async fn broken_streams_end_with_the_right_error() {
        let fake = FakeAnthropic::start().await.unwrap();
        fake.push(Script {
            error_event_after: Some(2),
            ..Script::default()
        });
        fake.push(Script {
            drop_after: Some(1),
            ..Script::default()
        });
        fake.push(Script {
            garbage_after: Some(0),
            ..Script::default()
        });
        fake.push(Script {
            omit_usage: true,
            ..Script::default()
        });
        let (text, _, _, error) = drain(&fake).await;
        assert_eq!((text.as_str(), error), ("Hello from", Some("stream_error")));
        let (text, _, _, error) = drain(&fake).await;
        assert_eq!((text.as_str(), error), ("Hello", Some("truncated")));
        let (text, _, _, error) = drain(&fake).await;
        assert_eq!((text.as_str(), error), ("", Some("protocol")));
        let (_, finish, usage, error) = drain(&fake).await;
        assert_eq!(
            (finish.as_deref(), usage, error),
            (Some("stop"), None, None)
        );
        assert_eq!(fake.calls(), 4);
    }

    #[tokio::test]
    async fn has_no_embeddings() {
        let fake = FakeAnthropic::start().await.unwrap();
        let request = serde_json::from_value(json!({"model": "m", "input": "x"})).unwrap();
        let err = tokun_providers::Adapter::Anthropic(adapter(&fake))
            .embed(&request)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Request { .. }), "{err:?}");
        assert_eq!(fake.calls(), 0);
    }
}
