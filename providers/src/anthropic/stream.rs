//! Anthropic Messages server-sent events → OpenAI [`ChatCompletionChunk`]s.
//! SSE framing and the UTF-8 guard are the OpenAI adapter's; this module owns
//! the event translation: `message_start` (id, partial usage), content-block
//! starts and deltas (text, tool use, thinking), `message_delta` (stop reason,
//! cumulative usage), `message_stop`, `ping` and in-band `error` events. It does
//! not know HTTP status codes or timeouts.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use eventsource_stream::{Event, EventStream, Eventsource};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::response::{WireBlock, WireMessage, WireUsage, finish_reason, stream_error};
use crate::ChunkStream;
use crate::error::ProviderError;
use crate::openai::response::truncate;
use crate::openai::stream::{Utf8Guard, event_error};
use crate::types::{ChatCompletionChunk, ChunkChoice, Delta, Usage};

/// After `message_stop`, how many already-buffered events to read before
/// dropping the body, so the connection can go back to the pool.
const DRAIN_AFTER_STOP: usize = 4;

/// Translates an Anthropic event stream into OpenAI chunks for `model` (the
/// request's model; chunks carry the message id from `message_start`).
///
/// The first chunk carries `role: "assistant"`; text and tool-call deltas
/// follow; `message_delta`'s stop reason becomes a `finish_reason` chunk; at
/// `message_stop` a final chunk with no choices carries the usage (input from
/// `message_start`, output from the last `message_delta`), and the stream ends.
/// It ends with exactly one `Err` on the first problem: an `error` event
/// (`Stream`), unparsable JSON or invalid UTF-8 (`Protocol`), a body error, or
/// EOF before any stop reason (`Truncated`). EOF after a stop reason but
/// before `message_stop` still yields the usage chunk and ends cleanly.
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
    /// The message is complete: yield the chunk, if any, then end.
    Last(Option<ChatCompletionChunk>),
    Fail(ProviderError),
}

/// The state of one translation.
struct Translator {
    id: String,
    model: String,
    created: u64,
    usage: WireUsage,
    /// Content-block index → OpenAI tool-call index, for blocks that are tool uses.
    tool_blocks: Vec<(usize, u32)>,
    /// Whether a stop reason arrived (which makes a missing `message_stop` harmless).
    stopped: bool,
}

/// The events tokun reads; `ping`, `content_block_stop` and event types added
/// later are `Other` and skipped.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: WireUsage,
    },
    MessageStop,
    Error,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
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
                    this.drain_buffered(cx);
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

impl<S, E> ChunkParser<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<ProviderError>,
{
    /// Reads what already arrived after `message_stop`, then drops the body.
    fn drain_buffered(&mut self, cx: &mut Context<'_>) {
        if let Some(events) = self.events.as_mut() {
            for _ in 0..DRAIN_AFTER_STOP {
                match Pin::new(&mut *events).poll_next(cx) {
                    Poll::Ready(Some(_)) => continue,
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
        }
        self.events = None;
    }
}

impl Translator {
    fn new(model: &str) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created: crate::clock::unix_seconds(),
            usage: WireUsage::default(),
            tool_blocks: Vec::new(),
            stopped: false,
        }
    }

    fn event(&mut self, event: &Event) -> Step {
        let data = event.data.trim();
        if event.event == "error" {
            return Step::Fail(stream_error(data));
        }
        if data.is_empty() {
            return Step::Skip;
        }
        match serde_json::from_str::<WireEvent>(data) {
            Ok(WireEvent::Error) => Step::Fail(stream_error(data)),
            Ok(wire) => self.translate(wire),
            Err(err) => Step::Fail(ProviderError::Protocol {
                detail: format!("unparsable event ({err}): {}", truncate(data, 120)),
            }),
        }
    }

    fn translate(&mut self, event: WireEvent) -> Step {
        match event {
            WireEvent::MessageStart { message } => {
                self.id = message.id;
                self.usage.update(&message.usage);
                let delta = Delta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                    ..Delta::default()
                };
                Step::Chunk(self.delta_chunk(delta, None))
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => self.block_start(index, content_block),
            WireEvent::ContentBlockDelta { index, delta } => self.block_delta(index, delta),
            WireEvent::MessageDelta { delta, usage } => {
                self.usage.update(&usage);
                match delta.stop_reason {
                    Some(reason) => {
                        self.stopped = true;
                        let finish = finish_reason(&reason);
                        Step::Chunk(self.delta_chunk(Delta::default(), Some(finish)))
                    }
                    None => Step::Skip,
                }
            }
            WireEvent::MessageStop => Step::Last(self.usage_chunk()),
            WireEvent::Error | WireEvent::Other => Step::Skip,
        }
    }

    fn block_start(&mut self, index: usize, block: WireBlock) -> Step {
        match block {
            WireBlock::Text { text } if !text.is_empty() => Step::Chunk(self.text_chunk(text)),
            WireBlock::ToolUse { id, name, .. } => {
                let tool_index = u32::try_from(self.tool_blocks.len()).unwrap_or(u32::MAX);
                self.tool_blocks.push((index, tool_index));
                let call = json!({
                    "index": tool_index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""},
                });
                Step::Chunk(self.tool_chunk(call))
            }
            WireBlock::Text { .. } | WireBlock::Thinking { .. } | WireBlock::Other => Step::Skip,
        }
    }

    fn block_delta(&mut self, index: usize, delta: WireDelta) -> Step {
        match delta {
            WireDelta::TextDelta { text } if !text.is_empty() => Step::Chunk(self.text_chunk(text)),
            WireDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                let tool = self.tool_blocks.iter().find(|(block, _)| *block == index);
                match tool {
                    Some(&(_, tool_index)) => {
                        let call =
                            json!({"index": tool_index, "function": {"arguments": partial_json}});
                        Step::Chunk(self.tool_chunk(call))
                    }
                    // Input of a block tokun does not relay (a server tool).
                    None => Step::Skip,
                }
            }
            WireDelta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                let mut extra = Map::new();
                extra.insert("reasoning_content".to_owned(), Value::String(thinking));
                let delta = Delta {
                    extra,
                    ..Delta::default()
                };
                Step::Chunk(self.delta_chunk(delta, None))
            }
            _ => Step::Skip,
        }
    }

    /// At EOF: complete if a stop reason arrived (the usage chunk follows),
    /// truncated otherwise.
    fn end_of_body(&mut self) -> Step {
        if self.stopped {
            Step::Last(self.usage_chunk())
        } else {
            Step::Fail(ProviderError::Truncated)
        }
    }

    fn text_chunk(&self, text: String) -> ChatCompletionChunk {
        let delta = Delta {
            content: Some(text),
            ..Delta::default()
        };
        self.delta_chunk(delta, None)
    }

    fn tool_chunk(&self, call: Value) -> ChatCompletionChunk {
        let delta = Delta {
            tool_calls: Some(Value::Array(vec![call])),
            ..Delta::default()
        };
        self.delta_chunk(delta, None)
    }

    fn delta_chunk(&self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish.map(str::to_owned),
        };
        self.chunk(vec![choice], None)
    }

    /// The final chunk, if Anthropic reported any usage.
    fn usage_chunk(&self) -> Option<ChatCompletionChunk> {
        self.usage
            .is_known()
            .then(|| self.chunk(Vec::new(), Some(self.usage.to_openai())))
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}
