//! `POST /v1/chat/completions`: parse and check the request, start a stream
//! actor, and answer with the first event it sends — an error status, a JSON
//! completion, or an SSE stream that relays the rest.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::BytesMut;
use futures_util::stream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokun_actors::{RelayEvent, Settlement, Transport, metric};
use tokun_providers::types::Choice;
use tokun_providers::{ChatCompletion, ChatRequest};

use super::completion::{Launched, check_request, launch};
use super::idempotent::{self, Begun, Ticket};
use super::sse::{SseEncoder, UsageWithCost};
use super::{parse_json, read_json_body};
use crate::auth::{Caller, Inference};
use crate::error::ApiError;
use crate::inflight::InFlightGuard;
use crate::server::RequestId;
use crate::state::AppState;

/// Most events coalesced into one write when several are ready.
const COALESCE: usize = 32;

pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Inference(caller): Inference,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut labels = Labels::default();
    let result = serve(
        &state,
        request_id,
        caller,
        &headers,
        body,
        started,
        &mut labels,
    )
    .await;
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
            ("transport", Transport::Http.as_str()),
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

/// One request, step by step: read, check, claim its idempotency key, start
/// the stream actor, answer with what it sends first.
async fn serve<'a>(
    state: &'a AppState,
    request_id: RequestId,
    caller: Option<Caller>,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    labels: &mut Labels<'a>,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(headers, body, state.config().server.max_body_bytes).await?;
    let request: ChatRequest = parse_json(&bytes)?;
    labels.model = state.model(&request.model).map(|m| m.config.id.as_str());
    record_span(caller.as_ref(), labels.model);
    check_request(state, caller.as_ref(), &request)?;
    let ticket = match idempotent::begin(state, caller.as_ref(), headers, &request)? {
        Begun::Run(ticket) => ticket,
        Begun::Replayed(response) => return Ok(response),
    };
    let launched = launch(
        state,
        caller.as_ref(),
        request_id.0.clone(),
        request,
        Transport::Http,
    )
    .await?;
    answer(state, launched, ticket, started, labels).await
}

fn record_span(caller: Option<&Caller>, model: Option<&str>) {
    let span = tracing::Span::current();
    if let Some(caller) = caller {
        span.record("account", tracing::field::display(caller.account));
        span.record("key", caller.key.prefix.as_str());
    }
    if let Some(model) = model {
        span.record("model", model);
    }
}

/// Waits for the stream actor's first answer: a refusal, the whole body, or
/// the first chunk of a stream (the commit point: the status is 200 from here).
async fn answer(
    state: &AppState,
    launched: Launched,
    ticket: Ticket,
    started: Instant,
    labels: &mut Labels<'_>,
) -> Result<Response, ApiError> {
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
                tracing::Span::current().record("route", provider.as_ref());
                labels.provider = Some(provider);
                upstream = took;
            }
            Some(RelayEvent::Rejected(error)) => return Err((*error).into()),
            Some(RelayEvent::Completion(completion, settlement)) => {
                let (headers, body) =
                    json_answer(&completion, &settlement, labels.provider.as_deref())?;
                ticket.remember(state, &headers, &body).await;
                // Overhead includes the settlement's durable flush, which ends every response.
                record_overhead(started, upstream, false);
                let mut response = Response::new(Body::from(body));
                *response.headers_mut() = headers;
                return Ok(response);
            }
            Some(first) if streaming => {
                ticket.streamed();
                let ttft = started.elapsed();
                metric::histogram_record(
                    "tokun_time_to_first_token_seconds",
                    &[("transport", Transport::Http.as_str())],
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
            Some(event) => {
                tracing::error!(?event, "a stream actor answered out of order");
                return Err(ApiError::Internal);
            }
            None => {
                tracing::error!("a stream actor ended without an answer");
                return Err(ApiError::Internal);
            }
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

/// The JSON body of a non-streamed completion and its headers.
fn json_answer(
    completion: &ChatCompletion,
    settlement: &Settlement,
    route: Option<&str>,
) -> Result<(HeaderMap, Bytes), ApiError> {
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
    let json = serde_json::to_vec(&body).map_err(|error| {
        tracing::error!(%error, "a completion could not be serialized");
        ApiError::Internal
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_header(&mut headers, "x-tokun-cost", &settlement.cost.to_string());
    billing_headers(&mut headers, settlement, route);
    Ok((headers, Bytes::from(json)))
}

fn billing_headers(headers: &mut HeaderMap, settlement: &Settlement, route: Option<&str>) {
    if let Some(balance) = settlement.balance {
        insert_header(headers, "x-tokun-balance-remaining", &balance.to_string());
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
