//! What the upstream-response fuzz targets share: reading an input as a body
//! cut into pieces (as network reads return it), driving a chunk stream over
//! those pieces to its end, and the properties every parse must keep.
//!
//! Input layout: byte 0 holds flags, the next 1 to 4 bytes are piece sizes
//! (cycled, 1 to 48 bytes each, as the providers' proptests cut), the rest is
//! the body. Flags: `0x80` an empty piece after each piece, `0x40` a body
//! error after the last piece, `0x20` the `retry-after-ms` header instead of
//! `retry-after`, `0x03` how many size bytes follow, minus one.

use bytes::Bytes;
use futures_util::stream::{self, Iter};
use futures_util::{FutureExt, StreamExt};
use tokun_providers::{ChatCompletion, ChatCompletionChunk, ProviderError, fuzzing};

/// The body stream the parsers read in the targets.
pub type Body = Iter<std::vec::IntoIter<Result<Bytes, ProviderError>>>;

/// What a parse yielded, item by item.
pub type Items = Vec<Result<ChatCompletionChunk, ProviderError>>;

/// The API key the error classifier must scrub from every message.
pub const API_KEY: &str = "sk-fuzz-0123456789abcdef";

/// The model name passed to the Anthropic and Gemini translators.
pub const MODEL: &str = "fuzz-model";

/// One fuzz input read as a cut body.
pub struct Input<'a> {
    flags: u8,
    sizes: Vec<usize>,
    /// The whole body, after the flags and sizes.
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    /// `None` when the input is too short to hold its own header.
    pub fn read(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let count = usize::from(flags & 0x03) + 1;
        if rest.len() < count {
            return None;
        }
        let (sizes, body) = rest.split_at(count);
        Some(Input {
            flags,
            sizes: sizes.iter().map(|b| usize::from(b % 48) + 1).collect(),
            body,
        })
    }

    /// The body cut at the input's sizes, optionally with empty pieces.
    fn pieces(&self) -> Vec<Bytes> {
        let mut pieces = Vec::new();
        let mut rest = self.body;
        for size in self.sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            pieces.push(Bytes::copy_from_slice(piece));
            if self.flags & 0x80 != 0 {
                pieces.push(Bytes::new());
            }
            rest = tail;
        }
        pieces
    }

    fn body_error(&self) -> bool {
        self.flags & 0x40 != 0
    }

    /// The status of the error-body check: always a non-2xx.
    fn status(&self) -> u16 {
        400 + u16::from(self.flags & 0x7f) * 2
    }
}

/// Parses the input's body twice, whole and cut into pieces, and checks the
/// stream's promises: no panic, no waiting on a ready body, at most one `Err`
/// and only as the last item, every chunk serializable for the relay, and the
/// same items however the body was cut.
pub fn check_stream(
    input: &Input<'_>,
    parse: impl Fn(Body) -> tokun_providers::ChunkStream,
    normalize: impl Fn(&mut ChatCompletionChunk),
) {
    let whole = drive(
        &parse,
        vec![Bytes::copy_from_slice(input.body)],
        input.body_error(),
    );
    let cut = drive(&parse, input.pieces(), input.body_error());
    check_items(&whole);
    check_items(&cut);
    assert_eq!(
        comparable(cut, &normalize),
        comparable(whole, &normalize),
        "a cut body parsed differently from the whole body"
    );
}

/// A non-streaming parse: no panic, and a completion the edge can serialize.
pub fn check_completion(result: Result<ChatCompletion, ProviderError>) {
    match result {
        Ok(completion) => {
            serde_json::to_vec(&completion).expect("a parsed completion serializes");
        }
        Err(err) => check_error(&err),
    }
}

/// The input's body as a non-2xx answer: no panic, and the API key never
/// shows in the message, even where the body echoes it.
pub fn check_status_error(input: &Input<'_>, gemini: bool) {
    let retry_after = input.body.split(|b| *b == b'\n').next().unwrap_or_default();
    let err = fuzzing::status_error(
        gemini,
        input.status(),
        retry_after,
        input.flags & 0x20 != 0,
        input.body,
        API_KEY,
    );
    check_error(&err);
    let message = err.to_string();
    assert!(!message.contains(API_KEY), "the API key leaked: {message}");
}

/// Every error's classification and message must be computable. (Only the
/// non-2xx classifier knows the key and promises to scrub it; see
/// `check_status_error`.)
pub fn check_error(err: &ProviderError) {
    let _ = (err.to_string(), err.kind(), err.retryable(), err.source());
}

fn drive(
    parse: impl Fn(Body) -> tokun_providers::ChunkStream,
    pieces: Vec<Bytes>,
    fail: bool,
) -> Items {
    let mut items: Vec<Result<Bytes, ProviderError>> = pieces.into_iter().map(Ok).collect();
    if fail {
        items.push(Err(ProviderError::Connect {
            detail: "reset".to_owned(),
        }));
    }
    parse(stream::iter(items))
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("a ready body parses without waiting")
}

fn check_items(items: &Items) {
    for (index, item) in items.iter().enumerate() {
        match item {
            Ok(chunk) => {
                serde_json::to_vec(chunk).expect("a parsed chunk serializes");
            }
            Err(err) => {
                assert_eq!(index + 1, items.len(), "an error did not end the stream");
                check_error(err);
            }
        }
    }
}

fn comparable(
    items: Items,
    normalize: &impl Fn(&mut ChatCompletionChunk),
) -> Vec<Result<ChatCompletionChunk, String>> {
    items
        .into_iter()
        .map(|item| {
            item.map(|mut chunk| {
                // The wall clock may tick between the two parses.
                chunk.created = 0;
                normalize(&mut chunk);
                chunk
            })
            .map_err(|err| format!("{}: {err}", err.kind()))
        })
        .collect()
}
