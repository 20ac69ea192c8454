//! `POST /v1/chat/completions`: parse and check the request, start a stream
//! actor, and answer with the first event it sends — an error status, a JSON
//! completion, or an SSE stream that relays the rest.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::stream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokun_actors::account::ReserveRequest;
use tokun_actors::{AccountMeter, Meter, RelayEvent, Settlement, StreamArgs};
use tokun_providers::types::Choice;
use tokun_providers::{ChatCompletion, ChatRequest, tokens};
use tokun_storage::AccountId;

use super::sse::{SseEncoder, UsageWithCost};
use super::{parse_json, read_json_body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::inflight::{Claim, IdempotencyTicket, InFlightGuard, StoredResponse};
use crate::server::RequestId;
use crate::state::{AppState, Model};

/// Events buffered between a stream actor and the client's socket. Small on
/// purpose: a slow client makes the actor wait, not tokun's memory grow.
const RELAY_BUFFER: usize = 16;
/// Most events coalesced into one write when several are ready.
const COALESCE: usize = 32;

pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let bytes = read_json_body(&headers, body, state.config().server.max_body_bytes).await?;
    let mut request: ChatRequest = parse_json(&bytes)?;
    validate(&request)?;
    let model = state
        .model(&request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    if let Some(caller) = &caller {
        check_key_allows(caller, &model.config.id)?;
    }
    let ticket = match idempotency_key(&headers)? {
        Some(key) => match (&caller, state.idempotency().claim(account_of(&caller), key)) {
            (_, Claim::Proceed(ticket)) => Some(ticket),
            (_, Claim::InFlight) => {
                return Err(ApiError::Conflict {
                    message: "A request with this Idempotency-Key is still running.".into(),
                });
            }
            (_, Claim::Replay(stored)) => return Ok(replay(stored)),
            (_, Claim::AlreadyStreamed) => {
                return Err(ApiError::Conflict {
                    message: "A streamed request with this Idempotency-Key already completed; streams are not replayed.".into(),
                });
            }
        },
        None => None,
    };
    let prompt_tokens = tokens::estimate_prompt(&request);
    let meter = match &caller {
        Some(caller) => {
            reserve(
                &state,
                caller,
                &request_id,
                model,
                &mut request,
                prompt_tokens,
            )
            .await?
        }
        None => Meter::Log,
    };
    let streaming = request.stream;
    let wants_usage = request.wants_usage_chunk();
    let (cancel, guard) = state
        .inflight()
        .register(request_id.0.clone(), caller.as_ref().map(|c| c.account));
    let (out, mut events) = mpsc::channel(RELAY_BUFFER);
    let args = StreamArgs {
        request_id: request_id.0.clone(),
        model: model.config.id.as_str().into(),
        prompt_tokens_estimate: prompt_tokens,
        request,
        routes: model.routes.clone(),
        out,
        cancel,
        meter,
        stats: state.streams().stats().clone(),
    };
    state
        .streams()
        .spawn(args)
        .await
        .map_err(|_| ApiError::Internal)?;

    let mut route = None;
    loop {
        match events.recv().await {
            Some(RelayEvent::Routed(provider)) => route = Some(provider),
            Some(RelayEvent::Rejected(error)) => return Err(error.into()),
            Some(RelayEvent::Completion(completion, settlement)) => {
                let response = json_response(&completion, &settlement, route.as_deref());
                return Ok(remember(ticket, response).await);
            }
            Some(first) if streaming => {
                if let Some(ticket) = ticket {
                    ticket.finish(None);
                }
                return Ok(sse_response(
                    first,
                    events,
                    wants_usage,
                    route.as_deref(),
                    guard,
                ));
            }
            Some(_) | None => return Err(ApiError::Internal),
        }
    }
}

/// The caller, when billing is on (or a key was sent anyway).
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    if !state.billing_enabled() && crate::auth::bearer(headers).is_none() {
        return Ok(None);
    }
    let caller = state
        .keys()
        .authenticate(&state.services().store, headers)?;
    state.keys().check_rpm(&caller.key)?;
    Ok(Some(caller))
}

fn account_of(caller: &Option<Caller>) -> AccountId {
    caller.as_ref().map_or(AccountId::new(0), |c| c.account)
}

fn check_key_allows(caller: &Caller, model: &str) -> Result<(), ApiError> {
    let allowed = &caller.key.allowed_models;
    if allowed.is_empty() || allowed.iter().any(|m| m == model) {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            message: format!("This API key may not use the model `{model}`."),
        })
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII.", None))?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 characters.",
            None,
        ));
    }
    Ok(Some(key))
}

/// Places the hold and caps the upstream `max_tokens` to what the balance affords.
async fn reserve(
    state: &AppState,
    caller: &Caller,
    request_id: &RequestId,
    model: &Model,
    request: &mut ChatRequest,
    prompt_tokens: u64,
) -> Result<Meter, ApiError> {
    let services = state.services();
    if !services.ledger.is_healthy() {
        // Nothing can be billed durably: refuse before any upstream call.
        return Err(ApiError::Unavailable { message: "The ledger is not writable; nothing was charged. Retry later.".into() });
    }
    let billing = &state.config().billing;
    let context_left = u64::from(model.config.context_window)
        .saturating_sub(prompt_tokens)
        .max(1);
    let max_output = request
        .requested_max_tokens()
        .map_or(context_left, u64::from);
    let increment = if request.stream {
        u64::from(billing.hold_increment_tokens)
    } else {
        max_output
    };
    let reserve = ReserveRequest {
        request_id: request_id.0.to_string(),
        key: Some(caller.key.id),
        key_limit: caller.key.spend_limit,
        price: model.config.price,
        prompt_tokens,
        increment_tokens: increment,
        max_output_tokens: max_output,
    };
    let services = state.services();
    let reservation = services
        .accounts
        .reserve(caller.account, reserve)
        .await
        .map_err(ApiError::from)?;
    if reservation.max_tokens < max_output || request.requested_max_tokens().is_some() {
        let cap = u32::try_from(reservation.max_tokens).unwrap_or(u32::MAX);
        if request.max_completion_tokens.is_some() {
            request.max_completion_tokens = Some(cap);
        } else {
            request.max_tokens = Some(cap);
        }
    }
    Ok(Meter::Account(Box::new(AccountMeter {
        accounts: services.accounts.clone(),
        account: caller.account,
        key: Some(caller.key.id),
        reservation,
        transport: "http",
    })))
}

async fn remember(ticket: Option<IdempotencyTicket>, response: Response) -> Response {
    let Some(ticket) = ticket else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-tokun") || *name == header::CONTENT_TYPE)
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    ticket.finish(Some(StoredResponse {
        status: parts.status.as_u16(),
        body: bytes.clone(),
        headers,
    }));
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = axum::http::StatusCode::from_u16(stored.status).unwrap_or_default();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn validate(request: &ChatRequest) -> Result<(), ApiError> {
    if request.model.is_empty() {
        return Err(ApiError::bad_request(
            "`model` must not be empty.",
            Some("model"),
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` must contain at least one message.",
            Some("messages"),
        ));
    }
    if request.requested_max_tokens() == Some(0) {
        return Err(ApiError::bad_request(
            "`max_tokens` must be at least 1.",
            Some("max_tokens"),
        ));
    }
    if request.stream_options.is_some() && !request.stream {
        return Err(ApiError::bad_request(
            "`stream_options` is only allowed when `stream` is true.",
            Some("stream_options"),
        ));
    }
    Ok(())
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'a str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice],
    usage: UsageWithCost<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

fn json_response(
    completion: &ChatCompletion,
    settlement: &Settlement,
    route: Option<&str>,
) -> Response {
    let body = CompletionBody {
        id: &completion.id,
        object: "chat.completion",
        created: completion.created,
        model: &completion.model,
        choices: &completion.choices,
        usage: UsageWithCost::new(settlement),
        system_fingerprint: completion.system_fingerprint.as_deref(),
        extra: &completion.extra,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = json.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let cost = tokun_storage::Nanos::new(settlement.cost_nanos).to_string();
    insert_header(headers, "x-tokun-cost", &cost);
    billing_headers(headers, settlement, route);
    response
}

fn billing_headers(headers: &mut HeaderMap, settlement: &Settlement, route: Option<&str>) {
    if let Some(balance) = settlement.balance_nanos {
        let balance = tokun_storage::Nanos::new(balance).to_string();
        insert_header(headers, "x-tokun-balance-remaining", &balance);
    }
    if let Some(route) = route {
        insert_header(headers, "x-tokun-route", route);
    }
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn sse_response(
    first: RelayEvent,
    events: mpsc::Receiver<RelayEvent>,
    wants_usage: bool,
    route: Option<&str>,
    guard: InFlightGuard,
) -> Response {
    let encoder = SseEncoder::new(wants_usage);
    // The guard lives as long as the body: the request can be cancelled until it ends.
    let state = (Some(first), events, encoder, false, guard);
    let body = stream::unfold(
        state,
        |(pending, mut events, mut encoder, done, guard)| async move {
            if done {
                return None;
            }
            let first = match pending {
                Some(event) => event,
                None => events.recv().await?,
            };
            let mut out = BytesMut::with_capacity(512);
            let mut finished = encoder.encode(first, &mut out);
            // Coalesce what is already waiting into one write.
            let mut taken = 1;
            while !finished && taken < COALESCE {
                match events.try_recv() {
                    Ok(event) => finished = encoder.encode(event, &mut out),
                    Err(_) => break,
                }
                taken += 1;
            }
            Some((
                Ok::<_, std::convert::Infallible>(out.freeze()),
                (None, events, encoder, finished, guard),
            ))
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(route) = route {
        insert_header(headers, "x-tokun-route", route);
    }
    response
}
