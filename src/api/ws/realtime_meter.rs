//! Metering of one Realtime session through the same [`Meter`] as
//! completions: a hold per response, placed when the client asks for one
//! (`response.create`) or, for a response the upstream starts by itself
//! (server VAD), when it announces it (`response.created`); settled from
//! its `response.done` usage before that event reaches the client. At close,
//! responses still running are settled at tokun's estimate (flagged
//! `estimated`) and holds the upstream never started are released; a session
//! dropped without `close` gives its holds back as their meters drop.
//!
//! The estimate is honest but rough: the prompt is the text the client put
//! into the conversation (audio is not counted), the output one token per
//! text or transcript delta. Events are inspected, never changed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokun_actors::{Meter, MeterRecord, Output, RequestOutcome, Transport, UsageSource};
use tokun_providers::types::PromptTokensDetails;
use tokun_providers::{Usage, tokens};

use super::realtime::Target;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Output tokens held for a response that sets no `max_output_tokens`.
const DEFAULT_OUTPUT_TOKENS: u64 = 4096;
/// Deltas that carry output text; each is counted as one token for estimates.
const TEXT_DELTAS: [&str; 4] = [
    "response.text.delta",
    "response.output_text.delta",
    "response.audio_transcript.delta",
    "response.output_audio_transcript.delta",
];

/// What to do with a client event.
pub(super) enum Verdict {
    Forward,
    /// Do not forward; send this Realtime `error` event to the client instead.
    Refuse(String),
}

pub(super) struct RealtimeMeter {
    state: AppState,
    /// `None` when billing is off: events are relayed and nothing is held.
    caller: Option<Caller>,
    target: Target,
    /// Text tokens the client put into the conversation: the prompt estimate.
    context_tokens: u64,
    instructions_tokens: u64,
    /// Holds for `response.create`s the upstream has not started yet, oldest first.
    requested: VecDeque<Open>,
    /// Responses the upstream started, by response id.
    started: HashMap<String, Open>,
}

/// One response's hold.
struct Open {
    meter: Meter,
    request_id: Arc<str>,
    client_event: Option<String>,
    prompt_tokens: u64,
    output_deltas: u64,
    opened: Instant,
}

/// The parts of an event metering reads; everything else is skipped unread.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    event_id: Option<String>,
    response_id: Option<String>,
    response: Option<Value>,
    item: Option<Value>,
    session: Option<Value>,
    error: Option<Value>,
}

impl RealtimeMeter {
    pub fn new(state: AppState, caller: Option<Caller>, target: Target) -> Self {
        Self {
            state,
            caller,
            target,
            context_tokens: 0,
            instructions_tokens: 0,
            requested: VecDeque::new(),
            started: HashMap::new(),
        }
    }

    /// Reads a client event; places a hold for `response.create`.
    pub async fn on_client_text(&mut self, text: &str) -> Verdict {
        let Ok(event) = serde_json::from_str::<Event>(text) else {
            return Verdict::Forward; // The upstream answers malformed events itself.
        };
        match event.kind.as_str() {
            "conversation.item.create" => {
                self.context_tokens += event.item.as_ref().map_or(0, text_tokens);
            }
            "session.update" => {
                let instructions = event.session.as_ref().and_then(|s| s.get("instructions"));
                if let Some(instructions) = instructions.and_then(Value::as_str) {
                    self.instructions_tokens = tokens::count_text(instructions);
                }
            }
            "response.create" => {
                let max_output = event
                    .response
                    .as_ref()
                    .and_then(|r| r.get("max_output_tokens"))
                    .and_then(Value::as_u64)
                    .unwrap_or(DEFAULT_OUTPUT_TOKENS);
                match self.hold(max_output, event.event_id.clone()).await {
                    Ok(Some(open)) => self.requested.push_back(open),
                    Ok(None) => {}
                    Err(error) => return Verdict::Refuse(error_event(&error, event.event_id)),
                }
            }
            _ => {}
        }
        Verdict::Forward
    }

    /// Reads an upstream event; settles on `response.done` (durably, before
    /// the caller relays it). `Err` when a response the upstream started by
    /// itself cannot be paid for: the session must end.
    pub async fn on_upstream_text(&mut self, text: &str) -> Result<(), ApiError> {
        let Ok(event) = serde_json::from_str::<Event>(text) else {
            return Ok(());
        };
        let response_id = event
            .response
            .as_ref()
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str);
        match event.kind.as_str() {
            "response.created" => {
                let Some(id) = response_id else { return Ok(()) };
                let open = match self.requested.pop_front() {
                    Some(open) => Some(open),
                    None => self.hold(DEFAULT_OUTPUT_TOKENS, None).await?,
                };
                if let Some(open) = open {
                    self.started.insert(id.to_owned(), open);
                }
            }
            kind if TEXT_DELTAS.contains(&kind) => {
                let open = event
                    .response_id
                    .as_ref()
                    .and_then(|id| self.started.get_mut(id));
                if let Some(open) = open {
                    open.output_deltas += 1;
                }
            }
            "response.done" => {
                let open = match response_id.and_then(|id| self.started.remove(id)) {
                    Some(open) => Some(open),
                    None => self.requested.pop_front(),
                };
                if let (Some(open), Some(response)) = (open, event.response.as_ref()) {
                    self.settle_done(open, response).await;
                }
            }
            "error" => {
                // A refused `response.create` names the client's event: its hold goes back.
                let refused = event
                    .error
                    .as_ref()
                    .and_then(|e| e.get("event_id"))
                    .and_then(Value::as_str);
                let at = refused.and_then(|id| {
                    self.requested
                        .iter()
                        .position(|o| o.client_event.as_deref() == Some(id))
                });
                if let Some(open) = at.and_then(|at| self.requested.remove(at)) {
                    self.release(open);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The session ended: settles running responses at the estimate, releases the rest.
    pub async fn close(&mut self, reason: &'static str) {
        for open in std::mem::take(&mut self.requested) {
            self.release(open);
        }
        let started: Vec<Open> = self.started.drain().map(|(_, open)| open).collect();
        for open in started {
            let usage = Usage::new(open.prompt_tokens, open.output_deltas);
            let billed = (usage, UsageSource::Estimated);
            self.settle(open, billed, Some(reason)).await;
        }
    }

    /// Places a hold for one response (`None` when billing is off).
    async fn hold(
        &self,
        max_output: u64,
        client_event: Option<String>,
    ) -> Result<Option<Open>, ApiError> {
        let Some(caller) = &self.caller else {
            return Ok(None);
        };
        let request_id: Arc<str> = crate::server::new_request_id().into();
        let prompt_tokens = self.context_tokens + self.instructions_tokens;
        // A response arrives whole as far as the hold goes: held at once.
        let output = Output {
            requested: Some(max_output),
            streamed: false,
            // Deltas reach the client before `response.done` settles.
            withheld: false,
        };
        let meter = Meter::open(
            &self.state.services().accounts,
            Some(caller.payer()),
            &request_id,
            self.state.streams().policy(),
            (self.target.tariff, prompt_tokens, output),
            Transport::Realtime,
        )
        .await?;
        Ok(Some(Open {
            meter,
            request_id,
            client_event,
            prompt_tokens,
            output_deltas: 0,
            opened: Instant::now(),
        }))
    }

    async fn settle_done(&self, open: Open, response: &Value) {
        let usage = response.get("usage").filter(|u| !u.is_null());
        let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
        let billed = match (count("input_tokens"), count("output_tokens")) {
            (Some(input), Some(output)) => {
                let mut exact = Usage::new(input, output);
                let cached = usage
                    .and_then(|u| u.pointer("/input_token_details/cached_tokens"))
                    .and_then(Value::as_u64);
                exact.prompt_tokens_details =
                    cached.map(|cached_tokens| PromptTokensDetails { cached_tokens });
                (exact, UsageSource::Exact)
            }
            _ => (
                Usage::new(open.prompt_tokens, open.output_deltas),
                UsageSource::Estimated,
            ),
        };
        let error_kind = match response.get("status").and_then(Value::as_str) {
            Some("cancelled") => Some("cancelled"),
            Some("failed") => Some("upstream_failed"),
            _ => None,
        };
        self.settle(open, billed, error_kind).await;
    }

    async fn settle(
        &self,
        mut open: Open,
        (usage, source): (Usage, UsageSource),
        error_kind: Option<&'static str>,
    ) {
        let record = MeterRecord {
            request_id: open.request_id.clone(),
            model: self.target.model.clone(),
            served_model: Some(self.target.upstream_model.clone()),
            provider: Some(self.target.provider.clone()),
            route: Some(self.target.route),
            usage,
            source,
            outcome: match error_kind {
                None => RequestOutcome::Completed,
                Some(_) => RequestOutcome::Interrupted,
            },
            error_kind,
            latency_ms: u64::try_from(open.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            ttft_ms: None,
        };
        if let Err(error) = open.meter.settle(record).await {
            tracing::error!(%error, "realtime settlement failed; the hold is recovered at restart");
        }
    }

    fn release(&self, mut open: Open) {
        open.meter.release();
    }
}

/// Tokens of the text parts of a conversation item.
fn text_tokens(item: &Value) -> u64 {
    let parts = item.get("content").and_then(Value::as_array);
    parts
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("text").or_else(|| part.get("transcript")))
        .filter_map(Value::as_str)
        .map(tokens::count_text)
        .sum()
}

/// A Realtime `error` event from tokun, naming the client event it refuses.
fn error_event(error: &ApiError, client_event: Option<String>) -> String {
    let object = error.object();
    json!({
        "type": "error",
        "event_id": format!("event_tokun_{}", crate::server::new_request_id()),
        "error": {
            "type": object.kind,
            "code": object.code,
            "message": object.message,
            "param": object.param,
            "event_id": client_event,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_text_and_transcripts_of_items() {
        let item = json!({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hello there"},
            {"type": "input_audio", "audio": "AAAA", "transcript": "hi"},
        ]});
        assert!(text_tokens(&item) >= 3);
        assert_eq!(text_tokens(&json!({"type": "function_call_output"})), 0);
    }

    #[test]
    fn error_events_name_the_refused_client_event() {
        let error = ApiError::InsufficientCredits {
            balance: "0.00".into(),
            estimate: "0.01".into(),
        };
        let event: Value = serde_json::from_str(&error_event(&error, Some("e1".into()))).unwrap();
        assert_eq!(event["type"], "error");
        assert_eq!(event["error"]["code"], "insufficient_credits");
        assert_eq!(event["error"]["event_id"], "e1");
    }
}
