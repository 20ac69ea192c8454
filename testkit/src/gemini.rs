//! A fake Google Gemini upstream (axum on 127.0.0.1:0) serving
//! `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent`
//! (`?alt=sse`) and `:batchEmbedContents`, scripted with the same [`Script`]
//! as the OpenAI fake: each token is one stream chunk repeating cumulative
//! `usageMetadata`, the last with `finishReason: STOP`; `status` answers
//! Google's error envelope (with `RetryInfo` when `retry_after_secs` is set);
//! `drop_after`, `garbage_after` and `error_event_after` break the stream after
//! N tokens. Every request is recorded with its headers (see
//! [`FakeServer::recorded`]).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::Script;
use crate::fake::{FakeServer, Harness, WireFormat, usage_of};

/// The fake Gemini upstream; `base_url()` is what a Gemini route configures
/// (`/v1beta/models/…` is appended by the adapter).
pub type FakeGemini = FakeServer<GeminiWire>;

/// Gemini's wire format, for [`FakeServer`].
pub struct GeminiWire;

impl WireFormat for GeminiWire {
    fn routes(harness: Arc<Harness>) -> Router {
        Router::new()
            .route("/v1beta/models/{call}", post(models))
            .with_state(harness)
    }
}

const RESPONSE_ID: &str = "fake-response-01";
/// Vector length of fake embeddings when the request names none.
const EMBEDDING_DIMENSIONS: u64 = 4;

/// `{model}:{method}`: one route for every method, as Google's URLs put both
/// in one path segment.
async fn models(
    State(harness): State<Arc<Harness>>,
    Path(call): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (request, script) = harness.begin(&uri, &headers, &body);
    if script.hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(script.first_byte_delay).await;
    if let Some(status) = script.status {
        return error_response(status, script.retry_after_secs);
    }
    let (model, method) = call.split_once(':').unwrap_or((call.as_str(), ""));
    match method {
        "generateContent" => json_response(&answer(&script, model)),
        "streamGenerateContent" if uri.query() == Some("alt=sse") => {
            stream_response(script, model.to_owned())
        }
        "batchEmbedContents" => json_response(&embeddings(&request)),
        _ => error_response(404, None),
    }
}

fn error_response(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    let mut error = json!({
        "code": status.as_u16(),
        "message": format!("fake gemini says {}", status.as_u16()),
        "status": name,
    });
    if let Some(secs) = retry_after {
        // Google sends its back-off hint in the body, not as a header.
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s"),
        }]);
    }
    let body = json!({ "error": error }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_response(body: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A `GenerateContentResponse` with `text`, optionally finished, with usage
/// `(prompt, completion so far)` unless the script omits it.
fn response(script: &Script, model: &str, text: &str, finish: bool, completion: u64) -> Value {
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if finish {
        candidate["finishReason"] = json!("STOP");
    }
    let mut out =
        json!({"candidates": [candidate], "modelVersion": model, "responseId": RESPONSE_ID});
    if !script.omit_usage {
        let prompt = usage_of(script).0;
        out["usageMetadata"] = json!({
            "promptTokenCount": prompt, "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion,
        });
    }
    out
}

fn answer(script: &Script, model: &str) -> Value {
    response(
        script,
        model,
        &script.tokens.concat(),
        true,
        usage_of(script).1,
    )
}

/// One vector per request in `requests`, `outputDimensionality` long (default 4).
fn embeddings(request: &Value) -> Value {
    let requests = request.get("requests").and_then(Value::as_array);
    let vectors: Vec<Value> = requests
        .into_iter()
        .flatten()
        .map(|one| {
            let text = one.pointer("/content/parts/0/text").and_then(Value::as_str);
            let seed = text.map_or(0, str::len) as u64;
            let dimensions = one
                .get("outputDimensionality")
                .and_then(Value::as_u64)
                .unwrap_or(EMBEDDING_DIMENSIONS);
            let values: Vec<f64> = (0..dimensions)
                .map(|i| ((seed + i) % 7) as f64 / 8.0)
                .collect();
            json!({ "values": values })
        })
        .collect();
    json!({ "embeddings": vectors })
}

/// The frame at `step` ≥ 1 (one chunk per token, at least one chunk), `None`
/// when done. A failure replaces the chunk due after that many tokens.
fn frame(step: usize, script: &Script, model: &str) -> Option<Result<String, std::io::Error>> {
    let chunks = script.tokens.len().max(1);
    let sent = step.checked_sub(1)?;
    let data = if script.drop_after == Some(sent) {
        return Some(Err(std::io::Error::other("dropped")));
    } else if script.garbage_after == Some(sent) {
        "{\"candidates\": [ not json".to_owned()
    } else if script.error_event_after == Some(sent) {
        json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
            .to_string()
    } else if step <= chunks {
        let last = step == chunks;
        let text = script.tokens.get(sent).map_or("", String::as_str);
        let completion = usage_of(script).1;
        let so_far = if last {
            completion
        } else {
            (step as u64).min(completion)
        };
        response(script, model, text, last, so_far).to_string()
    } else {
        return None;
    };
    Some(Ok(format!("data: {data}\r\n\r\n")))
}

/// Whether the frame at `step` ends the stream early (a drop, garbage or an error).
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
    let frames = futures_util::stream::unfold(
        (1usize, script, model),
        |(step, script, model)| async move {
            if step == usize::MAX {
                return None;
            }
            tokio::time::sleep(script.delay).await;
            let frame = frame(step, &script, &model)?;
            let next = if breaks_at(step, &script) {
                usize::MAX
            } else {
                step + 1
            };
            Some((frame.map(Bytes::from), (next, script, model)))
        },
    );
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
    use tokun_providers::{Adapter, ChatRequest, EmbeddingRequest, GeminiAdapter, Usage};

    use super::*;

    const KEY: &str = "AIza-fake-SECRET-42";

    fn adapter(fake: &FakeGemini) -> GeminiAdapter {
        let client = http_client(Duration::from_secs(5)).unwrap();
        GeminiAdapter::new(&fake.base_url(), Some(KEY.to_owned()), client)
    }

    fn hello() -> ChatRequest {
        serde_json::from_value(json!({"model": "gemini-fake", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ], "max_tokens": 50}))
        .unwrap()
    }

    /// Text, finish reason, usage and error kind of a whole stream.
    async fn drain(
        fake: &FakeGemini,
    ) -> (String, Option<String>, Option<Usage>, Option<&'static str>) {
        let mut chunks = adapter(fake).stream(&hello()).await.unwrap();
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
    async fn streams_with_the_last_usage_and_the_key_only_in_its_header() {
        let fake = FakeGemini::start().await.unwrap();
        fake.push(Script {
            usage: Some((12, 9)),
            ..Script::default()
        });
        let (text, finish, usage, error) = drain(&fake).await;
        assert_eq!(text, "Hello from the fake upstream.");
        assert_eq!(
            (finish.as_deref(), usage, error),
            (Some("stop"), Some(Usage::new(12, 9)), None)
        );

        let [request] = fake.recorded().try_into().unwrap();
        assert_eq!(
            request.path_and_query,
            "/v1beta/models/gemini-fake:streamGenerateContent?alt=sse"
        );
        assert_eq!(request.header("x-goog-api-key"), Some(KEY));
        assert!(!request.contains_outside(KEY, "x-goog-api-key"));
        assert_eq!(
            request.body["systemInstruction"]["parts"][0]["text"],
            "Be brief."
        );
        assert_eq!(request.body["generationConfig"]["maxOutputTokens"], 50);
    }

    #[tokio::test]
    async fn completes_without_streaming() {
        let fake = FakeGemini::start().await.unwrap();
        let completion = adapter(&fake).complete(&hello()).await.unwrap();
        assert_eq!(completion.id, RESPONSE_ID);
        assert_eq!(
            completion.choices[0].message["content"],
            "Hello from the fake upstream."
        );
        assert_eq!(completion.usage, Some(Usage::new(10, 6)));
        assert_eq!(
            fake.recorded()[0].path_and_query,
            "/v1beta/models/gemini-fake:generateContent"
        );
    }

    #[tokio::test]
    async fn quota_errors_carry_the_retry_info_delay() {
        let fake = FakeGemini::start().await.unwrap();
        fake.push(Script {
            retry_after_secs: Some(34),
            ..Script::status(429)
        });
        let err = adapter(&fake).stream(&hello()).await.err().unwrap();
        assert_eq!((err.kind(), err.retryable()), ("rate_limited", true));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(34)));
        assert!(!err.to_string().contains(KEY), "{err}");
    }

    #[tokio::test]
    async fn broken_streams_end_with_the_right_error() {
        let fake = FakeGemini::start().await.unwrap();
        for script in [
            Script {
                error_event_after: Some(2),
                ..Script::default()
            },
            Script {
                drop_after: Some(1),
                ..Script::default()
            },
            Script {
                garbage_after: Some(0),
                ..Script::default()
            },
            Script {
                omit_usage: true,
                ..Script::default()
            },
        ] {
            fake.push(script);
        }
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
    }

    #[tokio::test]
    async fn embeds_through_batch_embed_contents() {
        let fake = FakeGemini::start().await.unwrap();
        let request: EmbeddingRequest = serde_json::from_value(
            json!({"model": "text-embedding-004", "input": ["hello world", "bye"], "dimensions": 3}),
        )
        .unwrap();
        let out = Adapter::Gemini(adapter(&fake))
            .embed(&request)
            .await
            .unwrap();
        assert_eq!(out.data.len(), 2);
        assert_eq!(out.data[1].embedding.len(), 3);
        assert_eq!(out.usage.prompt_tokens, 3);
        let recorded = &fake.recorded()[0];
        assert_eq!(
            recorded.path_and_query,
            "/v1beta/models/text-embedding-004:batchEmbedContents"
        );
        assert!(!recorded.contains_outside(KEY, "x-goog-api-key"));
    }
}
