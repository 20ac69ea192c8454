//! `POST /v1/embeddings`: billed like a completion with input tokens only.
//! The stream actor runs it like any request — the hold for the counted input,
//! the model's routes that can embed tried in order with permits and
//! failover, the settlement from the upstream's usage (or tokun's count,
//! marked estimated) — and sends one `Embedded` event; this handler checks
//! the request and shapes the answer.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokun_actors::{RelayEvent, Settlement, Transport, Work};
use tokun_providers::{EmbeddingRequest, EmbeddingResponse};

use super::completion::{RELAY_BUFFER, check_request_model, start};
use super::debug::capture::Capture;
use super::{parse_json, read_json_body};
use crate::auth::Inference;
use crate::error::ApiError;
use crate::server::RequestId;
use crate::state::AppState;

/// OpenAI's limits per request: inputs in one array, and tokens summed over
/// them. They also bound what one response may allocate.
const MAX_INPUTS: usize = 2048;
const MAX_INPUT_TOKENS: u64 = 300_000;

pub async fn embeddings(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Inference(caller): Inference,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(&headers, body, state.config().server.max_body_bytes).await?;
    let request: EmbeddingRequest = parse_json(&bytes)?;
    let model = state
        .model(&request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    check_request_model(caller.as_ref(), model)?;
    if request.input.len() > MAX_INPUTS {
        let message = format!("`input` may hold at most {MAX_INPUTS} items.");
        return Err(ApiError::bad_request(message, Some("input")));
    }
    let input_tokens = request.input.count_tokens();
    if input_tokens > MAX_INPUT_TOKENS {
        let message = format!(
            "`input` holds {input_tokens} tokens; one request may embed at most {MAX_INPUT_TOKENS}."
        );
        return Err(ApiError::bad_request(message, Some("input")));
    }
    if input_tokens == 0 {
        return Err(ApiError::bad_request(
            "`input` must not be empty.",
            Some("input"),
        ));
    }
    if !model.routes.iter().any(|r| r.adapter.can_embed()) {
        let message = format!(
            "The model `{}` has no route that can embed.",
            model.config.id
        );
        return Err(ApiError::bad_request(message, Some("model")));
    }
    let base64 = request.encoding_format.as_deref() == Some("base64");
    let model_id: Arc<str> = model.config.id.as_str().into();
    let capture = Capture::begin(
        &state,
        caller.as_ref(),
        Transport::Http,
        &request_id.0,
        (&request.model, &request),
    );
    let work = Work::Embeddings(request);
    let (events, _guard) = start(
        &state,
        caller.as_ref(),
        request_id.0.clone(),
        (model, input_tokens),
        work,
        Transport::Http,
        RELAY_BUFFER,
    )
    .await?;
    let mut events = Capture::relay(capture, events, RELAY_BUFFER);
    let mut route = None;
    loop {
        match events.recv().await {
            Some(RelayEvent::Routed { provider, .. }) => route = Some(provider),
            Some(RelayEvent::Rejected(error)) => return Err((*error).into()),
            Some(RelayEvent::Embedded(response, settlement)) => {
                return Ok(answer(&response, &settlement, &model_id, route, base64));
            }
            Some(event) => {
                tracing::error!(?event, "an embeddings request answered out of order");
                return Err(ApiError::Internal);
            }
            None => {
                tracing::error!("an embeddings request ended without an answer");
                return Err(ApiError::Internal);
            }
        }
    }
}

fn answer(
    response: &EmbeddingResponse,
    settlement: &Settlement,
    model: &str,
    route: Option<Arc<str>>,
    base64: bool,
) -> Response {
    let cost = settlement.cost.to_string();
    let data: Vec<Value> = response
        .data
        .iter()
        .map(|e| {
            let embedding = if base64 {
                json!(e.base64())
            } else {
                json!(e.embedding)
            };
            json!({"object": "embedding", "index": e.index, "embedding": embedding})
        })
        .collect();
    let tokens = response.usage.prompt_tokens;
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "cost": cost},
    });
    let mut http = axum::Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&cost) {
        http.headers_mut().insert("x-tokun-cost", value);
    }
    if let Some(value) = route.and_then(|r| HeaderValue::from_str(&r).ok()) {
        http.headers_mut().insert("x-tokun-route", value);
    }
    http
}
