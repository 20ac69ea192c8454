//! Fixture-driven tests of the OpenAI adapter's parsing: recorded SSE and JSON
//! bodies go through one `check` helper. `classify` covers status and body
//! classification and the request body; `http` covers the wire end to end.

mod classify;
mod http;

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, stream};
use proptest::prelude::*;

use super::parse_chunk_stream;
use crate::error::ProviderError;
use crate::types::{ChatCompletionChunk, PromptTokensDetails, Usage};

const SSE_FIXTURES: [&str; 11] = [
    "normal.sse",
    "usage_choices_null.sse",
    "keepalive.sse",
    "crlf.sse",
    "error_midstream.sse",
    "error_event.sse",
    "garbage.sse",
    "eof_after_finish.sse",
    "eof_mid_stream.sse",
    "invalid_utf8.sse",
    "long_64.sse",
];

const NORMAL_TEXT: &str = "Hello, wörld 👋! 你好";

/// What a parsed stream amounted to.
#[derive(Debug, PartialEq)]
struct Outcome {
    chunks: usize,
    text: String,
    finish: Option<String>,
    usage: Option<Usage>,
    /// `kind()` of the error that ended the stream, if one did.
    error: Option<&'static str>,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/openai/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Parses `pieces` as one body; the fake body is always ready, so no runtime is needed.
fn parse(pieces: Vec<Bytes>) -> Vec<Result<ChatCompletionChunk, ProviderError>> {
    let body = stream::iter(pieces.into_iter().map(Ok::<_, ProviderError>));
    parse_chunk_stream(body)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("a ready body parses without waiting")
}

fn outcome(items: Vec<Result<ChatCompletionChunk, ProviderError>>) -> Outcome {
    let mut out = Outcome {
        chunks: 0,
        text: String::new(),
        finish: None,
        usage: None,
        error: None,
    };
    let count = items.len();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(chunk) => {
                out.chunks += 1;
                for choice in &chunk.choices {
                    out.text
                        .push_str(choice.delta.content.as_deref().unwrap_or(""));
                }
                out.finish = out.finish.or(chunk.finish_reason().map(str::to_owned));
                out.usage = out.usage.or(chunk.usage);
            }
            Err(err) => {
                assert_eq!(index + 1, count, "an error must end the stream");
                out.error = Some(err.kind());
            }
        }
    }
    out
}

fn check(name: &str, expected: Outcome) {
    let actual = outcome(parse(vec![Bytes::from(fixture(name))]));
    assert_eq!(actual, expected, "fixture {name}");
}

fn normal_usage() -> Option<Usage> {
    Some(Usage {
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 0 }),
        ..Usage::new(19, 7)
    })
}

fn done(chunks: usize, text: &str, usage: Option<Usage>) -> Outcome {
    Outcome {
        chunks,
        text: text.to_owned(),
        finish: Some("stop".to_owned()),
        usage,
        error: None,
    }
}

fn failed(chunks: usize, text: &str, error: &'static str) -> Outcome {
    Outcome {
        chunks,
        text: text.to_owned(),
        finish: None,
        usage: None,
        error: Some(error),
    }
}

#[test]
fn normal_stream_with_usage_chunk() {
    check("normal.sse", done(8, NORMAL_TEXT, normal_usage()));
}

#[test]
fn usage_chunk_with_null_choices() {
    check(
        "usage_choices_null.sse",
        done(5, "Hello, wörld", Some(Usage::new(10, 2))),
    );
}

#[test]
fn keep_alive_comments_and_empty_data_are_skipped() {
    check("keepalive.sse", done(5, "Hello, wörld", normal_usage()));
}

#[test]
fn crlf_line_endings() {
    check("crlf.sse", done(8, NORMAL_TEXT, normal_usage()));
}

#[test]
fn eof_after_finish_reason_ends_cleanly() {
    check("eof_after_finish.sse", done(8, NORMAL_TEXT, normal_usage()));
}

#[test]
fn eof_before_finish_reason_is_truncated() {
    check(
        "eof_mid_stream.sse",
        failed(4, "Hello, wörld 👋", "truncated"),
    );
}

#[test]
fn error_object_mid_stream_ends_with_its_message() {
    check(
        "error_midstream.sse",
        failed(3, "Hello, wörld", "stream_error"),
    );
    let items = parse(vec![Bytes::from(fixture("error_midstream.sse"))]);
    let Some(Err(ProviderError::Stream { message })) = items.last() else {
        panic!("{items:?}")
    };
    assert!(
        message.starts_with("The server had an error while processing"),
        "{message}"
    );
}

#[test]
fn error_event_ends_with_its_message() {
    check("error_event.sse", failed(2, "Hello", "stream_error"));
    let items = parse(vec![Bytes::from(fixture("error_event.sse"))]);
    let Some(Err(ProviderError::Stream { message })) = items.last() else {
        panic!("{items:?}")
    };
    assert_eq!(message, "Overloaded");
}

#[test]
fn unparsable_json_is_a_protocol_error() {
    check("garbage.sse", failed(2, "Hello", "protocol"));
}

#[test]
fn invalid_utf8_is_a_protocol_error() {
    check("invalid_utf8.sse", failed(2, "Hello", "protocol"));
}

#[test]
fn long_recorded_stream() {
    let out = outcome(parse(vec![Bytes::from(fixture("long_64.sse"))]));
    assert_eq!(
        (out.chunks, out.error, out.usage),
        (64, None, Some(Usage::new(19, 61)))
    );
}

#[test]
fn invalid_utf8_fails_without_waiting_for_more_bytes() {
    // eventsource-stream alone would buffer everything after the bad byte until EOF.
    let body = stream::iter([Ok::<_, ProviderError>(Bytes::from(fixture(
        "invalid_utf8.sse",
    )))])
    .chain(stream::pending());
    let items = parse_chunk_stream(body)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("ends at the bad byte");
    assert_eq!(outcome(items).error, Some("protocol"));
}

#[test]
fn a_utf8_sequence_cut_by_eof_is_a_protocol_error() {
    let mut body = fixture("eof_mid_stream.sse");
    body.extend_from_slice("data: 👋".as_bytes().get(..8).unwrap());
    assert_eq!(
        outcome(parse(vec![Bytes::from(body)])).error,
        Some("protocol")
    );
}

#[test]
fn nothing_after_done_is_read() {
    let mut body = fixture("normal.sse");
    body.extend_from_slice(b"data: {not json}\n\n");
    check_bytes(body, done(8, NORMAL_TEXT, normal_usage()));
}

#[test]
fn a_body_error_ends_the_stream_with_that_error() {
    let body = fixture("eof_mid_stream.sse");
    let pieces = vec![
        Ok(Bytes::from(body)),
        Err(ProviderError::Connect {
            detail: "reset".into(),
        }),
    ];
    let items = parse_chunk_stream(stream::iter(pieces))
        .collect::<Vec<_>>()
        .now_or_never()
        .unwrap();
    assert_eq!(outcome(items), failed(4, "Hello, wörld 👋", "connect"));
}

#[test]
fn an_empty_body_is_truncated() {
    check_bytes(Vec::new(), failed(0, "", "truncated"));
}

fn check_bytes(body: Vec<u8>, expected: Outcome) {
    assert_eq!(outcome(parse(vec![Bytes::from(body)])), expected);
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

fn comparable(
    items: Vec<Result<ChatCompletionChunk, ProviderError>>,
) -> Vec<Result<ChatCompletionChunk, String>> {
    items
        .into_iter()
        .map(|item| item.map_err(|err| format!("{}: {err}", err.kind())))
        .collect()
}

proptest! {
    #[test]
    fn any_split_parses_like_the_whole_body(
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
