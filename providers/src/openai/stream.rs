//! OpenAI server-sent events → [`ChatCompletionChunk`]s: SSE framing (via
//! `eventsource-stream`), `[DONE]`, in-band error events, malformed data and
//! truncation. It does not know HTTP status codes or timeouts; those are decided
//! before the body (see `mod.rs`) or around the stream (by callers' watchdogs).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use eventsource_stream::{Event, EventStream, EventStreamError, Eventsource};
use futures_util::Stream;

use super::response::{truncate, upstream_error_message};
use crate::ChunkStream;
use crate::error::ProviderError;
use crate::types::ChatCompletionChunk;

/// After `[DONE]`, how many already-buffered events to read before dropping the
/// body. Reading the body to its end lets the connection go back to the pool;
/// the bound keeps a chatty upstream from holding the stream open.
const DRAIN_AFTER_DONE: usize = 4;

/// Parses an OpenAI-style SSE byte stream into chunks.
///
/// Comments (keep-alives) and empty events are skipped. The stream ends after
/// `data: [DONE]`, or with exactly one `Err` on the first problem: an error event
/// (`Stream`), unparsable JSON or invalid UTF-8 (`Protocol`), a body error (the
/// body's own error), or EOF before any chunk carried a `finish_reason`
/// (`Truncated`). EOF after a `finish_reason` but without `[DONE]` ends cleanly.
pub fn parse_chunk_stream<S, E>(bytes: S) -> ChunkStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<ProviderError> + 'static,
{
    Box::pin(ChunkParser {
        events: Some(Utf8Guard::new(bytes).eventsource()),
        seen_finish: false,
    })
}

/// The state of one parse: the event source until the stream ended, and whether
/// a chunk already finished a choice (which makes a missing `[DONE]` harmless).
struct ChunkParser<S> {
    /// `None` once the stream ended, so the body (and its connection) is dropped
    /// as soon as tokun is done with it rather than when the caller drops us.
    events: Option<EventStream<Utf8Guard<S>>>,
    seen_finish: bool,
}

/// What one SSE event means for the chunk stream.
enum Step {
    Skip,
    Chunk(ChatCompletionChunk),
    Done,
    Fail(ProviderError),
}

impl<S, E> Stream for ChunkParser<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<ProviderError>,
{
    type Item = Result<ChatCompletionChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(events) = this.events.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match ready!(Pin::new(events).poll_next(cx)) {
                Some(Ok(event)) => classify(&event),
                Some(Err(err)) => Step::Fail(event_error(err)),
                None if this.seen_finish => Step::Done,
                None => Step::Fail(ProviderError::Truncated),
            };
            match step {
                Step::Skip => continue,
                Step::Chunk(chunk) => {
                    this.seen_finish |= chunk.finish_reason().is_some();
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Step::Done => {
                    this.drain_buffered(cx);
                    return Poll::Ready(None);
                }
                Step::Fail(err) => {
                    this.events = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }
}

impl<S, E> ChunkParser<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<ProviderError>,
{
    /// Reads what already arrived after `[DONE]` (usually just the end of the
    /// body), then drops the body.
    fn drain_buffered(&mut self, cx: &mut Context<'_>) {
        if let Some(events) = self.events.as_mut() {
            for _ in 0..DRAIN_AFTER_DONE {
                match Pin::new(&mut *events).poll_next(cx) {
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
        }
        self.events = None;
    }
}

fn classify(event: &Event) -> Step {
    let data = event.data.trim();
    if event.event == "error" {
        let message = upstream_error_message(data).unwrap_or_else(|| error_event_text(data));
        return Step::Fail(ProviderError::Stream { message });
    }
    if data.is_empty() {
        return Step::Skip;
    }
    if data == "[DONE]" {
        return Step::Done;
    }
    // A chunk's own strings escape their quotes, so a bare `"error"` can only be
    // a key; the envelope is parsed only then, keeping the common path to one parse.
    if data.contains("\"error\"") {
        if let Some(message) = upstream_error_message(data) {
            return Step::Fail(ProviderError::Stream { message });
        }
    }
    match serde_json::from_str::<ChatCompletionChunk>(data) {
        Ok(chunk) => Step::Chunk(chunk),
        Err(err) => Step::Fail(ProviderError::Protocol {
            detail: format!("unparsable chunk ({err}): {}", truncate(data, 120)),
        }),
    }
}

fn error_event_text(data: &str) -> String {
    if data.is_empty() {
        "the upstream sent an error event".to_owned()
    } else {
        truncate(data, 200)
    }
}

pub(crate) fn event_error(err: EventStreamError<ProviderError>) -> ProviderError {
    match err {
        EventStreamError::Transport(err) => err,
        EventStreamError::Utf8(err) => ProviderError::Protocol {
            detail: format!("the event stream is not valid UTF-8: {err}"),
        },
        EventStreamError::Parser(err) => ProviderError::Protocol {
            detail: format!("the event stream is malformed: {err:?}"),
        },
    }
}

/// Passes bytes through only once they are known to be valid UTF-8.
///
/// `eventsource-stream` decodes code points split across network chunks, but on
/// a truly invalid byte it buffers everything after it until EOF: the stream
/// stalls and memory grows. This guard carries an incomplete trailing sequence
/// (at most 3 bytes) to the next chunk and fails fast on invalid bytes.
pub(crate) struct Utf8Guard<S> {
    /// Boxed so the guard (and the event stream around it) is `Unpin`.
    inner: Pin<Box<S>>,
    /// The start of a code point whose remaining bytes are in the next chunk.
    carry: Vec<u8>,
    /// An invalid byte was found after a valid prefix; reported on the next poll.
    pending: Option<ProviderError>,
    ended: bool,
}

impl<S> Utf8Guard<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner: Box::pin(inner),
            carry: Vec::new(),
            pending: None,
            ended: false,
        }
    }

    /// The valid prefix of `carry + bytes` (`None` if nothing is complete yet).
    /// Before an invalid byte, the valid prefix is still passed on, so events
    /// that arrived whole are parsed however the network split the body.
    fn accept(&mut self, bytes: Bytes) -> Result<Option<Bytes>, ProviderError> {
        let bytes = if self.carry.is_empty() {
            bytes
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&bytes);
            Bytes::from(joined)
        };
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(err) if err.error_len().is_some() => {
                // The detail leaves out the byte offset: it depends on how the
                // network happened to split the body.
                let invalid = ProviderError::Protocol {
                    detail: "the event stream is not valid UTF-8".to_owned(),
                };
                if err.valid_up_to() == 0 {
                    return Err(invalid);
                }
                self.pending = Some(invalid);
                err.valid_up_to()
            }
            Err(err) => {
                self.carry = bytes[err.valid_up_to()..].to_vec();
                err.valid_up_to()
            }
        };
        Ok((valid > 0).then(|| bytes.slice(..valid)))
    }
}

impl<S, E> Stream for Utf8Guard<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<ProviderError>,
{
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(failure) = this.pending.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(failure)));
            }
            let failure = match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(bytes)) => match this.accept(bytes) {
                    Ok(Some(valid)) => return Poll::Ready(Some(Ok(valid))),
                    Ok(None) => continue,
                    Err(err) => err,
                },
                Some(Err(err)) => err.into(),
                None if this.carry.is_empty() => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                None => ProviderError::Protocol {
                    detail: "the event stream ended inside a UTF-8 sequence".to_owned(),
                },
            };
            this.ended = true;
            return Poll::Ready(Some(Err(failure)));
        }
    }
}
