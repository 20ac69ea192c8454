//! Fixture-driven tests of the Anthropic adapter: recorded event streams go
//! through one `check` helper (and a byte-split property test); `request`
//! covers the request translation, `response` non-streaming bodies and errors.
//! The adapter over real sockets is tested against `tokun_testkit::FakeAnthropic`.

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

const MODEL: &str = "claude-test";

const SSE_FIXTURES: [&str; 9] = [
    "text.sse",
    "tool_use.sse",
    "thinking.sse",
    "error_event.sse",
    "unknown_stop.sse",
    "truncated_json.sse",
    "eof_mid_stream.sse",
    "eof_after_delta.sse",
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
        .join("src/anthropic/fixtures")
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
    for (index, item) in items.into_iter().enumerate() {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(err) => {
                assert_eq!(index + 1, count, "an error must end the stream");
                out.error = Some(err.kind());
                continue;
            }
        };
        assert_eq!(
            (chunk.model.as_str(), chunk.object.as_str()),
            (MODEL, "chat.completion.chunk")
        );
        assert!(chunk.id.starts_with("msg_"), "{}", chunk.id);
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
                add_tool_delta(&mut out.tools, call);
            }
        }
        out.finish = out.finish.or(chunk.finish_reason().map(str::to_owned));
        out.usage = out.usage.or(chunk.usage);
    }
    out
}

/// Applies one OpenAI tool-call delta: a new index opens a call, later ones append arguments.
fn add_tool_delta(tools: &mut Vec<(String, String, String)>, call: &Value) {
    let index = call["index"].as_u64().unwrap() as usize;
    let text = |pointer: &str| {
        call.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if index == tools.len() {
        assert_eq!(call["type"], "function");
        tools.push((text("/id"), text("/function/name"), String::new()));
    }
    tools[index].2.push_str(&text("/function/arguments"));
}

fn check(name: &str, expected: Outcome) {
    let actual = outcome(parse(vec![Bytes::from(fixture(name))]));
    assert_eq!(actual, expected, "fixture {name}");
}

fn text_outcome(chunks: usize, finish: Option<&str>, usage: Option<Usage>) -> Outcome {
    Outcome {
        chunks,
        text: TEXT.to_owned(),
        finish: finish.map(str::to_owned),
        usage,
        ..Outcome::default()
    }
}

#[test]
fn text_stream_with_exact_usage() {
    // role, 4 text deltas, finish, usage: input from message_start, output from message_delta.
    check(
        "text.sse",
        text_outcome(7, Some("stop"), Some(Usage::new(25, 12))),
    );
}

#[test]
fn crlf_line_endings() {
    let body = String::from_utf8(fixture("text.sse"))
        .unwrap()
        .replace('\n', "\r\n");
    let out = outcome(parse(vec![Bytes::from(body)]));
    assert_eq!(out, text_outcome(7, Some("stop"), Some(Usage::new(25, 12))));
}

#[test]
fn tool_use_stream_assembles_calls_and_counts_cache_tokens() {
    let usage = Usage {
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: 1024,
        }),
        ..Usage::new(472 + 200 + 1024, 89)
    };
    check(
        "tool_use.sse",
        Outcome {
            chunks: 11,
            text: "Okay, let me check the weather.".to_owned(),
            tools: vec![
                (
                    "toolu_01T1x1fJ34qAmk2tNTrN7Up6".to_owned(),
                    "get_weather".to_owned(),
                    r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#.to_owned(),
                ),
                (
                    "toolu_01VTt5t8CnBpCmYc3rJzYQm5".to_owned(),
                    "get_time".to_owned(),
                    r#"{"timezone": "America/Los_Angeles"}"#.to_owned(),
                ),
            ],
            finish: Some("tool_calls".to_owned()),
            usage: Some(usage),
            ..Outcome::default()
        },
    );
}

#[test]
fn thinking_is_reasoning_content_and_the_last_message_delta_counts() {
    let usage = Usage {
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 8 }),
        ..Usage::new(42 + 8, 17)
    };
    check(
        "thinking.sse",
        Outcome {
            chunks: 6,
            text: "Hi!".to_owned(),
            reasoning: "The user greets me. Answer briefly.".to_owned(),
            finish: Some("length".to_owned()),
            usage: Some(usage),
            ..Outcome::default()
        },
    );
}

#[test]
fn error_event_ends_with_its_message() {
    check(
        "error_event.sse",
        Outcome {
            chunks: 2,
            text: "Hello".to_owned(),
            error: Some("stream_error"),
            ..Outcome::default()
        },
    );
    let items = parse(vec![Bytes::from(fixture("error_event.sse"))]);
    let Some(Err(ProviderError::Stream { message })) = items.last() else {
        panic!("{items:?}")
    };
    assert_eq!(message, "Overloaded");
}

#[test]
fn unknown_stop_reasons_and_events_are_tolerated() {
    check(
        "unknown_stop.sse",
        Outcome {
            chunks: 5,
            text: "Hi there".to_owned(),
            finish: Some("stop".to_owned()),
            usage: Some(Usage::new(9, 3)),
            ..Outcome::default()
        },
    );
}

#[test]
fn truncated_json_is_a_protocol_error() {
    let expected = Outcome {
        chunks: 2,
        text: "Hello".to_owned(),
        error: Some("protocol"),
        ..Outcome::default()
    };
    check("truncated_json.sse", expected);
}

#[test]
fn eof_before_a_stop_reason_is_truncated() {
    let expected = Outcome {
        error: Some("truncated"),
        ..text_outcome(5, None, None)
    };
    check("eof_mid_stream.sse", expected);
}

#[test]
fn eof_after_a_stop_reason_still_reports_usage() {
    check(
        "eof_after_delta.sse",
        text_outcome(7, Some("stop"), Some(Usage::new(25, 12))),
    );
}

#[test]
fn invalid_utf8_is_a_protocol_error() {
    let expected = Outcome {
        chunks: 2,
        text: "Hello".to_owned(),
        error: Some("protocol"),
        ..Outcome::default()
    };
    check("invalid_utf8.sse", expected);
}

#[test]
fn a_utf8_sequence_split_across_reads_is_joined() {
    let body = fixture("text.sse");
    let emoji = body.windows(4).position(|w| w == "👋".as_bytes()).unwrap();
    let pieces = vec![
        Bytes::copy_from_slice(&body[..emoji + 2]),
        Bytes::copy_from_slice(&body[emoji + 2..]),
    ];
    assert_eq!(
        outcome(parse(pieces)),
        text_outcome(7, Some("stop"), Some(Usage::new(25, 12)))
    );
}

#[test]
fn nothing_after_message_stop_is_read() {
    let mut body = fixture("text.sse");
    body.extend_from_slice(b"event: content_block_delta\ndata: {not json}\n\n");
    let out = outcome(parse(vec![Bytes::from(body)]));
    assert_eq!(out, text_outcome(7, Some("stop"), Some(Usage::new(25, 12))));
}

#[test]
fn an_empty_body_is_truncated() {
    let out = outcome(parse(vec![Bytes::new()]));
    assert_eq!((out.chunks, out.error), (0, Some("truncated")));
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
