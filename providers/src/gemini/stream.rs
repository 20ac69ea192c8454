//! Gemini `streamGenerateContent?alt=sse` events → OpenAI
//! [`ChatCompletionChunk`]s. SSE framing and the UTF-8 guard are the OpenAI
//! adapter's; this module owns the translation: each event is a whole
//! `GenerateContentResponse` whose candidates become chunk choices, whose
//! cumulative `usageMetadata` is remembered, and whose error envelope ends the
//! stream. Gemini sends no `[DONE]`: the body's end is the end of the answer.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use eventsource_stream::{Event, EventStream, Eventsource};
use futures_util::Stream;
use serde_json::{Map, Value};

use super::response::{
    WireCandidate, WireResponse, WireUsage, finish_reason, generated_id, translate_parts,
};
use crate::ChunkStream;
use crate::error::ProviderError;
use crate::openai::response::{truncate, upstream_error_message};
use crate::openai::stream::{Utf8Guard, event_error};
use crate::types::{ChatCompletionChunk, ChunkChoice, Delta, Usage};

/// More candidates than any request may ask for; a higher index is a broken upstream.
const MAX_CANDIDATES: usize = 16;

/// Translates a Gemini event stream into OpenAI chunks for `model` (the
/// request's model; chunks carry Gemini's `responseId`, or a generated id).
///
/// Each candidate's first delta carries `role: "assistant"`; texts, thought
/// summaries (`reasoning_content`) and function calls (complete, one delta
/// each, ids `call_0`, `call_1`, …) follow; `finishReason` becomes
/// `finish_reason`. At the end of the body one chunk with no choices carries
/// the last `usageMetadata`. The stream ends with exactly one `Err` on the first
/// problem: an error envelope (`Stream`), unparsable JSON or invalid UTF-8
/// (`Protocol`), a body error, or EOF before any finish reason (`Truncated`).
pub fn parse_chunk_stream<S, E>(bytes: S, model: &str) -> ChunkStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<ProviderError> + 'static,
{
    Box::pin(ChunkParser {
        events: Some(Utf8Guard::new(bytes).eventsource()),
        translator: Translator::new(model),
    })
}

struct ChunkParser<S> {
    /// `None` once the stream ended, so the body (and its connection) is dropped
    /// as soon as tokun is done with it rather than when the caller drops us.
    events: Option<EventStream<Utf8Guard<S>>>,
    translator: Translator,
}

/// What one event (or the end of the body) means for the chunk stream.
enum Step {
    Skip,
    Chunk(ChatCompletionChunk),
    /// The answer is complete: yield the chunk, if any, then end.
    Last(Option<ChatCompletionChunk>),
    Fail(ProviderError),
}

struct Translator {
    /// Set from the first event (its `responseId`, else generated).
    id: Option<String>,
    model: String,
    created: u64,
    /// The latest `usageMetadata`; Gemini's counts are cumulative.
    usage: Option<WireUsage>,
    candidates: Vec<CandidateState>,
    /// Whether any candidate finished (which makes the body's end a clean end).
    finished: bool,
}

#[derive(Default, Clone, Copy)]
struct CandidateState {
    role_sent: bool,
    tool_calls: u32,
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
                Some(Ok(event)) => this.translator.event(&event),
                Some(Err(err)) => Step::Fail(event_error(err)),
                None => this.translator.end_of_body(),
            };
            match step {
                Step::Skip => continue,
                Step::Chunk(chunk) => return Poll::Ready(Some(Ok(chunk))),
                Step::Last(chunk) => {
                    this.events = None;
                    return Poll::Ready(chunk.map(Ok));
                }
                Step::Fail(err) => {
                    this.events = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }
}

impl Translator {
    fn new(model: &str) -> Self {
        Self {
            id: None,
            model: model.to_owned(),
            created: crate::clock::unix_seconds(),
            usage: None,
            candidates: Vec::new(),
            finished: false,
        }
    }

    fn event(&mut self, event: &Event) -> Step {
        let data = event.data.trim();
        if data.is_empty() {
            return Step::Skip;
        }
        // A bare `"error"` can only be a key (strings escape their quotes), so
        // the envelope is looked for only then, keeping the common path to one parse.
        if event.event == "error" || data.contains("\"error\"") {
            if let Some(message) = upstream_error_message(data) {
                return Step::Fail(ProviderError::Stream { message });
            }
        }
        match serde_json::from_str::<WireResponse>(data) {
            Ok(answer) => self.translate(answer),
            Err(err) => Step::Fail(ProviderError::Protocol {
                detail: format!("unparsable chunk ({err}): {}", truncate(data, 120)),
            }),
        }
    }

    fn translate(&mut self, answer: WireResponse) -> Step {
        if self.id.is_none() {
            self.id = Some(answer.response_id.unwrap_or_else(generated_id));
        }
        if let Some(usage) = answer.usage_metadata {
            self.usage = Some(usage);
        }
        if answer.candidates.is_empty() {
            let blocked = answer
                .prompt_feedback
                .and_then(|f| f.block_reason)
                .is_some();
            if !blocked {
                return Step::Skip;
            }
            // The prompt was blocked: no candidate will come.
            self.finished = true;
            let choice = choice(0, role_delta(), Some("content_filter"));
            return Step::Chunk(self.chunk(vec![choice], None));
        }
        let mut choices = Vec::with_capacity(answer.candidates.len());
        for (position, candidate) in answer.candidates.iter().enumerate() {
            match self.candidate(position, candidate) {
                Ok(Some(choice)) => choices.push(choice),
                Ok(None) => {}
                Err(err) => return Step::Fail(err),
            }
        }
        if choices.is_empty() {
            return Step::Skip;
        }
        Step::Chunk(self.chunk(choices, None))
    }

    /// The choice for one candidate, `None` if it says nothing new.
    fn candidate(
        &mut self,
        position: usize,
        candidate: &WireCandidate,
    ) -> Result<Option<ChunkChoice>, ProviderError> {
        let index = candidate.index.map_or(position, |i| i as usize);
        if index >= MAX_CANDIDATES {
            return Err(ProviderError::Protocol {
                detail: format!("candidate index {index} is out of range"),
            });
        }
        if self.candidates.len() <= index {
            self.candidates.resize(index + 1, CandidateState::default());
        }
        let state = &mut self.candidates[index];
        let parts = candidate.content.as_ref().map_or(&[][..], |c| &c.parts[..]);
        let translated = translate_parts(parts, state.tool_calls, true);
        state.tool_calls += u32::try_from(translated.calls.len()).unwrap_or(u32::MAX);
        let finish = candidate
            .finish_reason
            .as_deref()
            .map(|reason| finish_reason(reason, state.tool_calls > 0));
        let mut delta = if state.role_sent {
            Delta::default()
        } else {
            role_delta()
        };
        if !translated.text.is_empty() {
            delta.content = Some(translated.text);
        }
        if !translated.reasoning.is_empty() {
            let mut extra = Map::new();
            extra.insert(
                "reasoning_content".to_owned(),
                Value::String(translated.reasoning),
            );
            delta.extra = extra;
        }
        if !translated.calls.is_empty() {
            delta.tool_calls = Some(Value::Array(translated.calls));
        }
        if delta == Delta::default() && finish.is_none() {
            return Ok(None);
        }
        state.role_sent = true;
        self.finished |= finish.is_some();
        Ok(Some(choice(index, delta, finish)))
    }

    /// At EOF: complete if a candidate finished (the usage chunk follows),
    /// truncated otherwise.
    fn end_of_body(&mut self) -> Step {
        if !self.finished {
            return Step::Fail(ProviderError::Truncated);
        }
        let usage = self.usage.map(WireUsage::to_openai);
        Step::Last(usage.map(|usage| self.chunk(Vec::new(), Some(usage))))
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone().unwrap_or_default(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}

fn role_delta() -> Delta {
    Delta {
        role: Some("assistant".to_owned()),
        ..Delta::default()
    }
}

fn choice(index: usize, delta: Delta, finish: Option<&str>) -> ChunkChoice {
    ChunkChoice {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        delta,
        logprobs: None,
        finish_reason: finish.map(str::to_owned),
    }
}
