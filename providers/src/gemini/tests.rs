//! Fixture-driven tests of the Gemini adapter: recorded event streams go
//! through one `check` helper (and a byte-split property test); `request`
//! covers the request translation, `response` non-streaming bodies, errors and
//! embeddings. The adapter over real sockets is tested against
//! `tokun_testkit::FakeGemini`.

mod request;
mod response;

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, stream};
use proptest::prelude::*;
use serde_json::Value;

use super::parse_chunk_stream;
use crate::error::ProviderError;
use crate::types::{ChatCompletionChunk, PromptTokensDetails, Usage};

const MODEL: &str = "gemini-test";

const SSE_FIXTURES: [&str; 9] = [
    "text.sse",
    "tool_call.sse",
    "thinking_unknown_finish.sse",
    "safety.sse",
    "blocked_prompt.sse",
    "error_midstream.sse",
    "truncated_json.sse",
    "eof_mid_stream.sse",
    "invalid_utf8.sse",
];

const TEXT: &str = "Hello, wörld 👋! 你好";

/// What a translated stream amounted to.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    chunks: usize,
    text: String,
    reasoning: String,
    /// `(id, name, arguments)` per tool call, assembled from the deltas.
    tools: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// `kind()` of the error that ended the stream, if one did.
    error: Option<&'static str>,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/gemini/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Translates `pieces` as one body; the fake body is always ready, so no runtime is needed.
fn parse(pieces: Vec<Bytes>) -> Vec<Result<ChatCompletionChunk, ProviderError>> {
    let body = stream::iter(pieces.into_iter().map(Ok::<_, ProviderError>));
    parse_chunk_stream(body, MODEL)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("a ready body parses without waiting")
}

fn outcome(items: Vec<Result<ChatCompletionChunk, ProviderError>>) -> Outcome {
    let mut out = Outcome::default();
    let count = items.len();
    let first_id = items
        .first()
        .and_then(|item| item.as_ref().ok())
        .map(|c| c.id.clone());
    for (index, item) in items.into_iter().enumerate() {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(err) => {
                assert_eq!(index + 1, count, "an error must end the stream");
                out.error = Some(err.kind());
                continue;
            }
        };
        assert_eq!(chunk.model, MODEL);
        assert_eq!(Some(&chunk.id), first_id.as_ref(), "one id per stream");
        if index == 0 {
            assert_eq!(chunk.choices[0].delta.role.as_deref(), Some("assistant"));
        }
        if chunk.usage.is_some() {
            assert!(
                chunk.choices.is_empty() && index + 1 == count,
                "usage comes last, alone"
            );
        }
        out.chunks += 1;
        for choice in &chunk.choices {
            let delta = &choice.delta;
            out.text.push_str(delta.content.as_deref().unwrap_or(""));
            let reasoning = delta.extra.get("reasoning_content").and_then(Value::as_str);
            out.reasoning.push_str(reasoning.unwrap_or(""));
            for call in delta
                .tool_calls
                .iter()
                .flat_map(|calls| calls.as_array().into_iter().flatten())
            {
                let text = |p: &str| {
                    call.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                assert_eq!(call["index"].as_u64(), Some(out.tools.len() as u64));
                out.tools.push((
                    text("/id"),
                    text("/function/name"),
                    text("/function/arguments"),
                ));
            }
        }
        out.finish = out.finish.or(chunk.finish_reason().map(str::to_owned));
        out.usage = out.usage.or(chunk.usage);
    }
    out
}

fn check(name: &str, expected: Outcome) {
    let actual = outcome(parse(vec![Bytes::from(fixture(name))]));
    assert_eq!(actual, expected, "fixture {name}");
}

fn failed(chunks: usize, text: &str, error: &'static str) -> Outcome {
    Outcome {
        chunks,
        text: text.to_owned(),
        error: Some(error),
        ..Outcome::default()
    }
}

#[test]
fn text_stream_with_usage_from_the_last_chunk() {
    // Thoughts count as completion tokens: 8 candidates + 28 thoughts.
    check(
        "text.sse",
        Outcome {
            chunks: 4,
            text: TEXT.to_owned(),
            finish: Some("stop".to_owned()),
            usage: Some(Usage::new(9, 8 + 28)),
            ..Outcome::default()
        },
    );
    let items = parse(vec![Bytes::from(fixture("text.sse"))]);
    assert_eq!(items[0].as_ref().unwrap().id, "v2Y1aPyxO5G6nvgP4N6WuQM");
}

#[test]
fn function_calls_get_stable_ids_and_keep_thought_signatures() {
    let usage = Usage {
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 32 }),
        ..Usage::new(71, 30 + 49)
    };
    check(
        "tool_call.sse",
        Outcome {
            chunks: 3,
            text: "Let me check both.".to_owned(),
            tools: vec![
                (
                    "call_0".into(),
                    "get_weather".into(),
                    r#"{"location":"Paris","unit":"celsius"}"#.into(),
                ),
                (
                    "call_1".into(),
                    "get_time".into(),
                    r#"{"timezone":"Europe/Paris"}"#.into(),
                ),
            ],
            finish: Some("tool_calls".to_owned()),
            usage: Some(usage),
            ..Outcome::default()
        },
    );
    let items = parse(vec![Bytes::from(fixture("tool_call.sse"))]);
    let calls = items[1].as_ref().unwrap().choices[0]
        .delta
        .tool_calls
        .clone()
        .unwrap();
    assert_eq!(
        calls[0]["extra_content"]["google"]["thought_signature"],
        "CiQB0e2Kb1TqgXxV1u4aKJr8n9mCqZ2Lx3n4Q=="
    );
    assert!(calls[1].get("extra_content").is_none());
}

#[test]
fn thoughts_unknown_parts_and_unknown_finish_reasons() {
    // The usage-only chunk after the finish is the one that counts.
    check(
        "thinking_unknown_finish.sse",
        Outcome {
            chunks: 3,
            text: "Hi there".to_owned(),
            reasoning: "**Considering the greeting**\n\nA short answer fits.".to_owned(),
            finish: Some("stop".to_owned()),
            usage: Some(Usage::new(6, 3 + 24)),
            ..Outcome::default()
        },
    );
}

#[test]
fn safety_stops_are_content_filter() {
    check(
        "safety.sse",
        Outcome {
            chunks: 3,
            text: "I can tell you".to_owned(),
            finish: Some("content_filter".to_owned()),
            usage: Some(Usage::new(12, 4)),
            ..Outcome::default()
        },
    );
    check(
        "blocked_prompt.sse",
        Outcome {
            chunks: 2,
            finish: Some("content_filter".to_owned()),
            usage: Some(Usage::new(15, 0)),
            ..Outcome::default()
        },
    );
}

#[test]
fn error_object_mid_stream_ends_with_its_message() {
    check("error_midstream.sse", failed(1, "Hello", "stream_error"));
    let items = parse(vec![Bytes::from(fixture("error_midstream.sse"))]);
    let Some(Err(ProviderError::Stream { message })) = items.last() else {
        panic!("{items:?}")
    };
    assert_eq!(message, "The model is overloaded. Please try again later.");
}

#[test]
fn truncated_json_is_a_protocol_error() {
    check("truncated_json.sse", failed(1, "Hello", "protocol"));
}

#[test]
fn eof_before_a_finish_reason_is_truncated() {
    check(
        "eof_mid_stream.sse",
        failed(2, "Hello, wörld 👋", "truncated"),
    );
}

#[test]
fn invalid_utf8_is_a_protocol_error() {
    check("invalid_utf8.sse", failed(1, "Hello", "protocol"));
}

#[test]
fn lf_line_endings_parse_like_crlf() {
    let body = String::from_utf8(fixture("text.sse"))
        .unwrap()
        .replace("\r\n", "\n");
    let lf = outcome(parse(vec![Bytes::from(body)]));
    assert_eq!(lf, outcome(parse(vec![Bytes::from(fixture("text.sse"))])));
}

#[test]
fn an_empty_body_is_truncated() {
    assert_eq!(
        outcome(parse(vec![Bytes::new()])),
        failed(0, "", "truncated")
    );
}

/// Cuts `body` into pieces of the given non-zero sizes (cycled), optionally
/// with an empty piece after each, as a network read may return.
fn split(body: &[u8], sizes: &[usize], with_empty: bool) -> Vec<Bytes> {
    let mut pieces = Vec::new();
    let mut rest = body;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
        pieces.push(Bytes::copy_from_slice(piece));
        if with_empty {
            pieces.push(Bytes::new());
        }
        rest = tail;
    }
    pieces
}

/// Items with `created` zeroed (it is the wall clock) and errors as text.
fn comparable(
    items: Vec<Result<ChatCompletionChunk, ProviderError>>,
) -> Vec<Result<ChatCompletionChunk, String>> {
    items
        .into_iter()
        .map(|item| {
            item.map(|chunk| ChatCompletionChunk {
                created: 0,
                ..chunk
            })
            .map_err(|err| format!("{}: {err}", err.kind()))
        })
        .collect()
}

proptest! {
    #[test]
    fn any_split_translates_like_the_whole_body(
        sizes in proptest::collection::vec(1usize..48, 1..64),
        with_empty in any::<bool>(),
        which in 0..SSE_FIXTURES.len(),
    ) {
        let body = fixture(SSE_FIXTURES[which]);
        let whole = comparable(parse(vec![Bytes::from(body.clone())]));
        let pieces = comparable(parse(split(&body, &sizes, with_empty)));
        prop_assert_eq!(pieces, whole);
    }
}
