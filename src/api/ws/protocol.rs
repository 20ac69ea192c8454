//! The JSON messages of `/v1/ws`: what a client may send (parsed here, with
//! errors that name the field) and what tokun sends back, built from a stream
//! actor's relay events. Shapes only; the socket loop decides when to send.
//!
//! Client: `{"type":"chat.completion.create","id","request":{…}}` and
//! `{"type":"cancel","id"}`. Server: `chunk` (a `chat.completion.chunk`
//! without `usage`), `completion` (a whole `chat.completion`, for
//! `"stream": false`), `done` (usage with cost, once the settlement is
//! durable) and `error` (OpenAI's error object; `id` is null when the
//! message that caused it had none).

use axum::extract::ws::Message;
use serde::Serialize;
use serde_json::Value;
use tokun_actors::Settlement;
use tokun_providers::types::{Choice, ChunkChoice};
use tokun_providers::{ChatCompletion, ChatCompletionChunk, ChatRequest};

use crate::api::sse::UsageWithCost;
use crate::error::{ApiError, ErrorObject};

/// Longest completion id a client may choose.
const MAX_ID_CHARS: usize = 256;

pub(crate) enum ClientMessage {
    Create { id: String, request: ChatRequest },
    Cancel { id: String },
}

/// A client message tokun could not act on; `id` when it could be read.
pub(crate) struct Refused {
    pub id: Option<String>,
    pub error: ApiError,
}

/// Reads one text frame.
pub(crate) fn parse(text: &str) -> Result<ClientMessage, Refused> {
    let value: Value = serde_json::from_str(text).map_err(|error| Refused {
        id: None,
        error: invalid(
            format!("The message is not valid JSON: {error}."),
            None,
            "invalid_json",
        ),
    })?;
    let Value::Object(mut object) = value else {
        return Err(Refused {
            id: None,
            error: invalid("A message must be a JSON object.", None, "invalid_message"),
        });
    };
    let id = match object.remove("id") {
        Some(Value::String(id)) if (1..=MAX_ID_CHARS).contains(&id.chars().count()) => Some(id),
        None => None,
        Some(_) => {
            return Err(Refused {
                id: None,
                error: invalid(
                    format!("`id` must be a string of 1 to {MAX_ID_CHARS} characters."),
                    Some("id"),
                    "invalid_value",
                ),
            });
        }
    };
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let refuse = |id: Option<String>, error| Err(Refused { id, error });
    let Some(id) = id else {
        return refuse(None, missing("id"));
    };
    match kind.as_deref() {
        Some("chat.completion.create") => match object.remove("request") {
            Some(request) => match parse_request(request) {
                Ok(request) => Ok(ClientMessage::Create { id, request }),
                Err(error) => refuse(Some(id), error),
            },
            None => refuse(Some(id), missing("request")),
        },
        Some("cancel") => Ok(ClientMessage::Cancel { id }),
        Some(other) => refuse(
            Some(id),
            invalid(
                format!(
                    "Unknown message type `{other}`; send `chat.completion.create` or `cancel`."
                ),
                Some("type"),
                "unknown_message_type",
            ),
        ),
        None => refuse(Some(id), missing("type")),
    }
}

/// The `id` of a message tokun will not read further (over the rate limit).
pub(crate) fn peek_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<String>,
    }
    serde_json::from_str::<Head>(text).ok()?.id
}

fn parse_request(value: Value) -> Result<ChatRequest, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let param = if path == "." {
            "request".to_owned()
        } else {
            format!("request.{path}")
        };
        invalid(
            format!("Invalid request: {}.", error.inner()),
            Some(&param),
            "invalid_value",
        )
    })
}

fn invalid(message: impl Into<String>, param: Option<&str>, code: &'static str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        param: param.map(str::to_owned),
        code: Some(code),
    }
}

fn missing(field: &str) -> ApiError {
    invalid(
        format!("`{field}` is required."),
        Some(field),
        "missing_field",
    )
}

/// A message to the client.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum ServerMessage<'a> {
    Chunk {
        id: &'a str,
        chunk: WireChunk<'a>,
    },
    Completion {
        id: &'a str,
        completion: WireCompletion<'a>,
    },
    Done {
        id: &'a str,
        usage: UsageWithCost<'a>,
        cost: String,
    },
    Error {
        id: Option<&'a str>,
        error: ErrorObject<'static>,
    },
}

impl<'a> ServerMessage<'a> {
    pub fn chunk(id: &'a str, chunk: &'a ChatCompletionChunk) -> Self {
        ServerMessage::Chunk {
            id,
            chunk: WireChunk {
                id: &chunk.id,
                object: "chat.completion.chunk",
                created: chunk.created,
                model: &chunk.model,
                system_fingerprint: chunk.system_fingerprint.as_deref(),
                choices: &chunk.choices,
            },
        }
    }

    pub fn completion(
        id: &'a str,
        completion: &'a ChatCompletion,
        settlement: &'a Settlement,
    ) -> Self {
        ServerMessage::Completion {
            id,
            completion: WireCompletion {
                id: &completion.id,
                object: "chat.completion",
                created: completion.created,
                model: &completion.model,
                choices: &completion.choices,
                usage: UsageWithCost::new(settlement),
                system_fingerprint: completion.system_fingerprint.as_deref(),
                extra: &completion.extra,
            },
        }
    }

    pub fn done(id: &'a str, settlement: &'a Settlement) -> Self {
        let usage = UsageWithCost::new(settlement);
        let cost = usage.cost.clone();
        ServerMessage::Done { id, usage, cost }
    }

    pub fn error(id: Option<&'a str>, error: &ApiError) -> Self {
        ServerMessage::Error {
            id,
            error: error.object(),
        }
    }

    pub fn encode(&self) -> Message {
        // Serializing plain structs into memory cannot fail.
        Message::text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// A `chat.completion.chunk` without `usage`: over WebSocket usage comes in `done`.
#[derive(Serialize)]
pub(super) struct WireChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    choices: &'a [ChunkChoice],
}

/// A `chat.completion` whose usage carries its cost, as over HTTP.
#[derive(Serialize)]
pub(super) struct WireCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice],
    usage: UsageWithCost<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> (Option<String>, Value) {
        match parse(text) {
            Ok(_) => panic!("{text} parsed"),
            Err(refused) => (
                refused.id,
                serde_json::to_value(refused.error.object()).unwrap(),
            ),
        }
    }

    #[test]
    fn reads_create_and_cancel() {
        let create = r#"{"type":"chat.completion.create","id":"c1","request":{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}}"#;
        match parse(create) {
            Ok(ClientMessage::Create { id, request }) => {
                assert_eq!(id, "c1");
                assert!(request.stream);
            }
            _ => panic!("create"),
        }
        assert!(matches!(
            parse(r#"{"type":"cancel","id":"c1"}"#),
            Ok(ClientMessage::Cancel { id }) if id == "c1"
        ));
    }

    #[test]
    fn refusals_name_the_id_and_the_field() {
        let (id, error) = refused("{not json");
        assert_eq!((id, error["code"].as_str()), (None, Some("invalid_json")));
        let (id, error) = refused(r#"{"type":"cancel"}"#);
        assert_eq!((id, error["param"].as_str()), (None, Some("id")));
        let (id, error) = refused(r#"{"type":"dance","id":"x"}"#);
        assert_eq!(id.as_deref(), Some("x"));
        assert_eq!(error["code"], "unknown_message_type");
        let (id, error) =
            refused(r#"{"type":"chat.completion.create","id":"y","request":{"model":1}}"#);
        assert_eq!(id.as_deref(), Some("y"));
        assert_eq!(error["param"], "request.model");
        assert_eq!(
            peek_id(r#"{"id":"z","type":"cancel"}"#).as_deref(),
            Some("z")
        );
    }
}
