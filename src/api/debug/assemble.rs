//! What a debugged request answered, rebuilt from its relay events as the
//! client received them: the non-streamed body whole (a `chat.completion`
//! or the embeddings list, with tokun's usage and cost), or for a stream the
//! `chat.completion` its chunks add up to — content and tool-call deltas
//! joined, finish reasons, usage with cost — and how many chunks there were.
//! Refusals and mid-stream failures keep OpenAI's error object. Pure: no
//! I/O, no clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokun_actors::{RelayEvent, Settlement};
use tokun_providers::types::ChunkChoice;

use crate::api::sse::UsageWithCost;
use crate::error::ApiError;

/// The status recorded when the client left before the request ended
/// (nginx's "client closed request"; tokun never sends it).
pub(crate) const CLIENT_GONE: u16 = 499;

/// The answer so far; [`Assembly::finish`] gives its status and body.
#[derive(Default)]
pub(crate) struct Assembly {
    provider: Option<Arc<str>>,
    /// The whole body of a non-streamed answer or a refusal.
    whole: Option<(u16, Value)>,
    /// Chunks relayed: the stream's raw event count.
    chunks: u64,
    id: String,
    model: String,
    created: u64,
    system_fingerprint: Option<String>,
    choices: BTreeMap<u32, Draft>,
    /// A mid-stream failure's error object.
    failure: Option<Value>,
    /// The stream's settlement (usage and cost); the stream ended.
    usage: Option<Value>,
}

/// One choice of a stream, joined from its deltas.
#[derive(Default)]
struct Draft {
    role: Option<String>,
    content: Option<String>,
    /// Tool calls by their `index`, arguments joined.
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    /// Other delta fields: strings joined (`refusal`, `reasoning_content`), the rest replaced.
    extra: Map<String, Value>,
    finish_reason: Option<String>,
}

impl Assembly {
    /// Takes in one event, as it goes to the client.
    pub(crate) fn observe(&mut self, event: &RelayEvent) {
        match event {
            RelayEvent::Routed { provider, .. } => self.provider = Some(provider.clone()),
            RelayEvent::Chunk(chunk) => {
                self.chunks += 1;
                if self.id.is_empty() {
                    self.id.clone_from(&chunk.id);
                    self.model.clone_from(&chunk.model);
                    self.created = chunk.created;
                }
                if chunk.system_fingerprint.is_some() {
                    self.system_fingerprint
                        .clone_from(&chunk.system_fingerprint);
                }
                for choice in &chunk.choices {
                    self.choices.entry(choice.index).or_default().add(choice);
                }
            }
            RelayEvent::Completion(completion, settlement) => {
                let mut body = serde_json::to_value(completion.as_ref()).unwrap_or_default();
                set(&mut body, "object", json!("chat.completion"));
                set(&mut body, "usage", usage_json(settlement));
                self.whole = Some((200, body));
            }
            RelayEvent::Embedded(response, settlement) => {
                let mut body = serde_json::to_value(response.as_ref()).unwrap_or_default();
                let tokens = response.usage.prompt_tokens;
                let cost = settlement.cost.to_string();
                let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens, "cost": cost});
                set(&mut body, "usage", usage);
                self.whole = Some((200, body));
            }
            RelayEvent::Rejected(error) => {
                let error = ApiError::from(error.as_ref().clone());
                let body = json!({ "error": error.object() });
                self.whole = Some((error.status().as_u16(), body));
            }
            RelayEvent::Failed(failure) => {
                let error = ApiError::from(failure.as_ref().clone());
                self.failure = Some(json!(error.object()));
            }
            RelayEvent::Finished(settlement) => self.usage = Some(usage_json(settlement)),
        }
    }

    /// The status the request ended with and what it answered.
    pub(crate) fn finish(self) -> (u16, Value) {
        if let Some(whole) = self.whole {
            return whole;
        }
        if self.chunks == 0 && self.usage.is_none() {
            let note = "The client left before tokun had an answer.";
            return (CLIENT_GONE, json!({ "note": note }));
        }
        let status = if self.usage.is_some() {
            200
        } else {
            CLIENT_GONE
        };
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, draft)| draft.into_json(index))
            .collect();
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
            "stream_chunks": self.chunks,
        });
        if let Some(fingerprint) = self.system_fingerprint {
            set(&mut body, "system_fingerprint", json!(fingerprint));
        }
        if let Some(failure) = self.failure {
            set(&mut body, "error", failure);
        }
        if let Some(provider) = self.provider {
            set(&mut body, "tokun_route", json!(provider.as_ref()));
        }
        (status, body)
    }
}

impl Draft {
    fn add(&mut self, choice: &ChunkChoice) {
        let delta = &choice.delta;
        if delta.role.is_some() {
            self.role.clone_from(&delta.role);
        }
        if let Some(content) = &delta.content {
            self.content.get_or_insert_default().push_str(content);
        }
        if let Some(Value::Array(calls)) = &delta.tool_calls {
            for call in calls {
                self.add_tool_call(call);
            }
        }
        for (name, value) in &delta.extra {
            join(&mut self.extra, name, value);
        }
        if choice.finish_reason.is_some() {
            self.finish_reason.clone_from(&choice.finish_reason);
        }
    }

    /// One tool-call delta: `id`, `type` and the function's `name` arrive
    /// once, its `arguments` a piece at a time.
    fn add_tool_call(&mut self, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let joined = self.tool_calls.entry(index).or_default();
        let Some(delta) = call.as_object() else {
            return;
        };
        for (name, value) in delta {
            match (name.as_str(), value) {
                ("index", _) => {}
                ("function", Value::Object(function)) => {
                    let target = joined
                        .entry("function")
                        .or_insert_with(|| json!({}))
                        .as_object_mut();
                    if let Some(target) = target {
                        for (field, piece) in function {
                            join(target, field, piece);
                        }
                    }
                }
                _ => join(joined, name, value),
            }
        }
    }

    fn into_json(self, index: u32) -> Value {
        let mut message = Map::new();
        message.insert(
            "role".into(),
            json!(self.role.as_deref().unwrap_or("assistant")),
        );
        message.insert("content".into(), json!(self.content));
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self.tool_calls.into_values().map(Value::Object).collect();
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        message.extend(self.extra);
        json!({"index": index, "message": message, "finish_reason": self.finish_reason})
    }
}

/// Appends a string piece to what is there, or replaces any other value.
fn join(target: &mut Map<String, Value>, name: &str, piece: &Value) {
    match (target.get_mut(name), piece) {
        (Some(Value::String(so_far)), Value::String(more)) => so_far.push_str(more),
        // A null after a value says nothing new.
        (Some(_), Value::Null) => {}
        _ => {
            target.insert(name.to_owned(), piece.clone());
        }
    }
}

fn usage_json(settlement: &Settlement) -> Value {
    serde_json::to_value(UsageWithCost::new(settlement)).unwrap_or_default()
}

fn set(body: &mut Value, name: &str, value: Value) {
    if let Value::Object(map) = body {
        map.insert(name.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use tokun_providers::ChatCompletionChunk;

    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> RelayEvent {
        let chunk: ChatCompletionChunk = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
        .unwrap();
        RelayEvent::Chunk(Box::new(chunk))
    }

    fn settled() -> RelayEvent {
        RelayEvent::Finished(Box::new(Settlement {
            usage: serde_json::from_value(
                json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
            )
            .unwrap(),
            source: tokun_actors::UsageSource::Exact,
            cost: tokun_storage::Nanos::new(1_500),
            balance: None,
        }))
    }

    #[test]
    fn a_streams_deltas_join_into_one_completion() {
        let mut assembly = Assembly::default();
        for event in [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo", "refusal": null}), None),
            chunk(json!({}), Some("stop")),
            settled(),
        ] {
            assembly.observe(&event);
        }
        let (status, body) = assembly.finish();
        assert_eq!(status, 200);
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["completion_tokens"], 2);
        assert_eq!(body["usage"]["cost"], "0.0000015");
        assert_eq!(body["stream_chunks"], 4);
    }

    #[test]
    fn tool_call_arguments_join_by_index() {
        let mut assembly = Assembly::default();
        let call = |index: u64, extra: Value| {
            let mut call = json!({"index": index});
            call.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            chunk(json!({"tool_calls": [call]}), None)
        };
        for event in [
            call(
                0,
                json!({"id": "call_a", "type": "function",
                "function": {"name": "weather", "arguments": ""}}),
            ),
            call(
                1,
                json!({"id": "call_b", "type": "function",
                "function": {"name": "time", "arguments": "{}"}}),
            ),
            call(0, json!({"function": {"arguments": "{\"city\":"}})),
            call(0, json!({"function": {"arguments": "\"Paris\"}"}})),
            chunk(json!({}), Some("tool_calls")),
        ] {
            assembly.observe(&event);
        }
        let (status, body) = assembly.finish();
        assert_eq!(status, CLIENT_GONE, "no settlement: the stream did not end");
        let calls = &body["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert!(calls[0].get("index").is_none());
    }

    #[test]
    fn nothing_relayed_is_a_client_that_left() {
        let (status, body) = Assembly::default().finish();
        assert_eq!(status, CLIENT_GONE);
        assert!(body["note"].as_str().unwrap().contains("left"));
    }
}
