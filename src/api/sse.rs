//! Turns a stream actor's relay events into OpenAI's SSE bytes.
//!
//! Chunks carry `"usage":null` only when the client asked for the usage chunk
//! (`stream_options.include_usage`), which then comes last, with `choices: []`
//! and tokun's `cost`, right before `data: [DONE]`. A failure after the first
//! chunk becomes one `data: {"error":…}` event before the usage chunk.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokun_actors::{RelayEvent, Settlement};
use tokun_providers::types::ChunkChoice;
use tokun_providers::{ChatCompletionChunk, Usage};

use crate::error::ApiError;

/// OpenAI's usage object plus what the request cost, in USD.
#[derive(Serialize)]
pub struct UsageWithCost<'a> {
    #[serde(flatten)]
    pub usage: &'a Usage,
    pub cost: String,
    /// Present (true) only when tokun counted the tokens itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl<'a> UsageWithCost<'a> {
    pub fn new(settlement: &'a Settlement) -> Self {
        Self {
            usage: &settlement.usage,
            cost: settlement.cost.to_string(),
            estimated: settlement.source == tokun_actors::UsageSource::Estimated,
        }
    }
}

#[derive(Serialize)]
struct WireChunk<'a> {
    id: &'a str,
    object: &'a str,
    created: u64,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    choices: &'a [ChunkChoice],
    /// `Some(None)` writes `"usage":null`; `None` leaves the field out.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageWithCost<'a>>>,
}

/// Encodes one stream's events; remembers the chunk identity for the usage chunk.
pub struct SseEncoder {
    wants_usage: bool,
    id: String,
    model: String,
    created: u64,
    system_fingerprint: Option<String>,
}

impl SseEncoder {
    pub fn new(wants_usage: bool) -> Self {
        Self {
            wants_usage,
            id: String::new(),
            model: String::new(),
            created: 0,
            system_fingerprint: None,
        }
    }

    /// Appends the bytes for `event`; returns true when the stream is complete.
    pub fn encode(&mut self, event: RelayEvent, out: &mut BytesMut) -> bool {
        match event {
            RelayEvent::Routed { .. } => false,
            RelayEvent::Chunk(chunk) => {
                self.remember(&chunk);
                let usage = self.wants_usage.then_some(None);
                self.write_chunk(out, &chunk.choices, usage);
                false
            }
            RelayEvent::Failed(failure) => {
                let error = ApiError::from(*failure);
                write_data(out, &serde_json::json!({ "error": error.object() }));
                false
            }
            RelayEvent::Finished(settlement) => {
                if self.wants_usage {
                    self.write_chunk(out, &[], Some(Some(UsageWithCost::new(&settlement))));
                }
                out.put_slice(b"data: [DONE]\n\n");
                true
            }
            // Never sent after a stream started; end the stream cleanly if it is.
            RelayEvent::Completion(..) | RelayEvent::Embedded(..) | RelayEvent::Rejected(_) => {
                out.put_slice(b"data: [DONE]\n\n");
                true
            }
        }
    }

    fn remember(&mut self, chunk: &ChatCompletionChunk) {
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
            self.model.clone_from(&chunk.model);
            self.created = chunk.created;
        }
        if chunk.system_fingerprint.is_some() {
            self.system_fingerprint
                .clone_from(&chunk.system_fingerprint);
        }
    }

    fn write_chunk(
        &self,
        out: &mut BytesMut,
        choices: &[ChunkChoice],
        usage: Option<Option<UsageWithCost<'_>>>,
    ) {
        let wire = WireChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: self.system_fingerprint.as_deref(),
            choices,
            usage,
        };
        write_data(out, &wire);
    }
}

fn write_data(out: &mut BytesMut, value: &impl Serialize) {
    out.put_slice(b"data: ");
    let mut writer = out.writer();
    // Serializing plain structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut writer, value);
    let out = writer.into_inner();
    out.put_slice(b"\n\n");
}

/// Encodes a single event into fresh bytes (used by tests and benches).
pub fn encode_one(encoder: &mut SseEncoder, event: RelayEvent) -> Bytes {
    let mut out = BytesMut::new();
    encoder.encode(event, &mut out);
    out.freeze()
}
