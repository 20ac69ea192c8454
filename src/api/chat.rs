//! `POST /v1/chat/completions`: parse and check the request, start a stream
//! actor, and answer with the first event it sends — an error status, a JSON
//! completion, or an SSE stream that relays the rest.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::stream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokun_actors::{RelayEvent, Settlement, metric};
use tokun_providers::types::Choice;
use tokun_providers::{ChatCompletion, ChatRequest};
use tokun_storage::AccountId;

use super::completion::{Launched, check_request, launch};
use super::sse::{SseEncoder, UsageWithCost};
use super::{parse_json, read_json_body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::inflight::{Claim, IdempotencyTicket, InFlightGuard, StoredResponse};
use crate::server::RequestId;
use crate::state::AppState;

/// Most events coalesced into one write when several are ready.
const COALESCE: usize = 32;

pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut labels = Labels::default();
    let result = serve(&state, request_id, &headers, body, started, &mut labels).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.status(),
    };
    metric::counter_add(
        "tokun_requests_total",
        &[
            ("model", labels.model.unwrap_or("unknown")),
            ("provider", labels.provider.as_deref().unwrap_or("none")),
            ("status", status.as_str()),
            ("transport", "http"),
        ],
        1,
    );
    result
}

/// Bounded labels of one request: a configured model id, the serving provider.
#[derive(Default)]
struct Labels<'a> {
    model: Option<&'a str>,
    provider: Option<std::sync::Arc<str>>,
}

async fn serve<'a>(
    state: &'a AppState,
    request_id: RequestId,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    labels: &mut Labels<'a>,
) -> Result<Response, ApiError> {
    let caller = authenticate(state, headers)?;
    let bytes = read_json_body(headers, body, state.config().server.max_body_bytes).await?;
    let request: ChatRequest = parse_json(&bytes)?;
    labels.model = state.model(&request.model).map(|m| m.config.id.as_str());
    let span = tracing::Span::current();
    if let Some(caller) = &caller {
        span.record("account", tracing::field::display(caller.account));
        span.record("key", caller.key.prefix.as_str());
    }
    if let Some(model) = labels.model {
        span.record("model", model);
    }
    check_request(state, caller.as_ref(), &request)?;
    let ticket = match idempotency_key(headers)? {
        Some(key) => match state
            .idempotency()
            .claim(account_of(&caller), key)
            .map_err(|error| {
                tracing::error!(%error, "idempotency lookup failed");
                ApiError::Unavailable {
                    message: "tokun cannot check the Idempotency-Key right now; retry shortly."
                        .into(),
                }
            })? {
            Claim::Proceed(ticket) => Some(ticket),
            Claim::InFlight => {
                return Err(ApiError::Conflict {
                    message: "A request with this Idempotency-Key is still running.".into(),
                });
            }
            Claim::Replay(stored) => return Ok(replay(stored)),
            Claim::AlreadyStreamed => {
                return Err(ApiError::Conflict {
                    message: "A streamed request with this Idempotency-Key already completed; streams are not replayed.".into(),
                });
            }
        },
        None => None,
    };
    let launched = launch(
        state,
        caller.as_ref(),
        request_id.0.clone(),
        request,
        "http",
    )
    .await?;
    let Launched {
        mut events,
        guard,
        streaming,
        wants_usage,
    } = launched;
    let mut upstream = Duration::ZERO;
    loop {
        match events.recv().await {
            Some(RelayEvent::Routed {
                provider,
                upstream: took,
            }) => {
                span.record("route", provider.as_ref());
                labels.provider = Some(provider);
                upstream = took;
            }
            Some(RelayEvent::Rejected(error)) => return Err((*error).into()),
            Some(RelayEvent::Completion(completion, settlement)) => {
                let response = json_response(&completion, &settlement, labels.provider.as_deref());
                // Overhead includes the settlement's durable flush, which ends every response.
                record_overhead(started, upstream, false);
                return Ok(remember(state, ticket, response).await);
            }
            Some(first) if streaming => {
                if let Some(ticket) = ticket {
                    ticket.finish(None);
                }
                let ttft = started.elapsed();
                metric::histogram_record(
                    "tokun_time_to_first_token_seconds",
                    &[("transport", "http")],
                    ttft.as_secs_f64(),
                );
                record_overhead(started, upstream, true);
                return Ok(sse_response(
                    first,
                    events,
                    wants_usage,
                    labels.provider.as_deref(),
                    guard,
                ));
            }
            Some(_) | None => return Err(ApiError::Internal),
        }
    }
}

fn record_overhead(started: Instant, upstream: Duration, streaming: bool) {
    let overhead = started.elapsed().saturating_sub(upstream);
    let kind = if streaming { "first_chunk" } else { "response" };
    metric::histogram_record(
        "tokun_gateway_overhead_seconds",
        &[("until", kind)],
        overhead.as_secs_f64(),
    );
}

/// The caller, when billing is on (or a key was sent anyway).
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    if !state.billing_enabled() && crate::auth::bearer(headers).is_none() {
        return Ok(None);
    }
    let caller = state
        .keys()
        .authenticate(&state.services().store, headers)?;
    state.keys().check_rpm(&caller.key)?;
    if let Some((hash, record)) = state
        .keys()
        .last_used_due(&caller.key, tokun_actors::account::now_ms())
    {
        // Not awaited: a lost last-used stamp is harmless; revoked keys stay revoked (writer rule).
        let services = state.services();
        services
            .ledger
            .append_nowait(vec![tokun_storage::WriteOp::PutKey { hash, record }]);
    }
    Ok(Some(caller))
}

fn account_of(caller: &Option<Caller>) -> AccountId {
    caller.as_ref().map_or(AccountId::new(0), |c| c.account)
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

/// Stores a non-streaming response under its idempotency key and makes it
/// durable (one ledger flush) before the client sees it, so a retry after a
/// crash or restart replays it instead of charging again.
async fn remember(
    state: &AppState,
    ticket: Option<IdempotencyTicket>,
    response: Response,
) -> Response {
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
    if let Err(error) = state.services().ledger.sync().await {
        tracing::error!(%error, "could not flush an idempotent outcome");
    }
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
