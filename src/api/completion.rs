//! Starting a completion, whatever the transport (SSE or WebSocket): check
//! the request against the model and the key, place the hold (capping the
//! upstream `max_tokens` to what the balance affords), register the cancel
//! signal, and spawn the stream actor. The caller reads its relay events.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokun_actors::account::ReserveRequest;
use tokun_actors::routing::{Candidate, cheapest_fit};
use tokun_actors::{AccountMeter, Meter, RelayEvent, StreamArgs};
use tokun_providers::{ChatRequest, tokens};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::inflight::InFlightGuard;
use crate::state::{AppState, Model};

/// Events buffered between a stream actor and the client's socket. Small on
/// purpose: a slow client makes the actor wait, not tokun's memory grow. An
/// SSE response owns its connection, and a few chunks in hand let one write
/// carry several.
pub const RELAY_BUFFER: usize = 16;

/// The same for a completion on `/v1/ws`: a socket carries many, and a
/// server 10,000, so each keeps fewer (a buffered chunk is ≈ 0.5 KiB; 16 of
/// them per completion would be 80 MiB at 10,000 when clients fall behind,
/// and 4 measured ≈ 4 MiB more than 2 at 10,000 saturated completions).
pub const WS_RELAY_BUFFER: usize = 2;

/// A started completion.
pub struct Launched {
    pub events: mpsc::Receiver<RelayEvent>,
    /// Keeps the request cancellable until dropped.
    pub guard: InFlightGuard,
    pub streaming: bool,
    pub wants_usage: bool,
}

/// The model name that asks tokun to pick (see `[auto]` in the config).
pub const AUTO: &str = "auto";

/// Picks the concrete model for `model: "auto"` by the configured policy,
/// skipping candidates whose first route's circuit is open.
async fn pick_auto<'a>(
    state: &'a AppState,
    request: &ChatRequest,
    prompt_tokens: u64,
) -> Result<&'a Model, ApiError> {
    let mut candidates = Vec::new();
    for id in &state.config().auto.candidates {
        let Some(model) = state.model(id) else {
            continue;
        };
        let healthy = match model.routes.first().and_then(|r| r.limiter.as_ref()) {
            Some(limiter) => limiter.health().await.is_none_or(|h| h.circuit != "open"),
            None => true,
        };
        candidates.push(Candidate {
            id: model.config.id.as_str(),
            context_window: u64::from(model.config.context_window),
            price: model.config.price,
            healthy,
        });
    }
    let max_output = request.requested_max_tokens().map_or(1, u64::from);
    let id = cheapest_fit(&candidates, prompt_tokens, max_output).ok_or_else(|| {
        ApiError::bad_request(
            "No `auto` candidate has a context window that fits this request.",
            Some("messages"),
        )
    })?;
    state.model(id).ok_or(ApiError::Internal)
}

fn check_request_model(caller: Option<&Caller>, model: &Model) -> Result<(), ApiError> {
    match caller {
        Some(caller)
            if !caller.key.allowed_models.is_empty()
                && !caller.key.allowed_models.contains(&model.config.id) =>
        {
            Err(ApiError::Forbidden {
                message: format!("This API key may not use the model `{}`.", model.config.id),
            })
        }
        _ => Ok(()),
    }
}

/// Checks the body and that the key may use the model.
pub fn check_request(
    state: &AppState,
    caller: Option<&Caller>,
    request: &ChatRequest,
) -> Result<(), ApiError> {
    validate(request)?;
    if request.model == AUTO {
        // The concrete model is picked (and checked against the key) at launch.
        return Ok(());
    }
    let model = state
        .model(&request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    check_request_model(caller, model)
}

/// Reserves and spawns the stream actor. `request` must have passed `check_request`.
pub async fn launch(
    state: &AppState,
    caller: Option<&Caller>,
    request_id: Arc<str>,
    mut request: ChatRequest,
    transport: &'static str,
) -> Result<Launched, ApiError> {
    let prompt_tokens = tokens::estimate_prompt(&request);
    let model = if request.model == AUTO {
        let model = pick_auto(state, &request, prompt_tokens).await?;
        check_request_model(caller, model)?;
        request.model = model.config.id.clone();
        model
    } else {
        state
            .model(&request.model)
            .ok_or_else(|| ApiError::model_not_found(&request.model))?
    };
    let meter = match caller {
        Some(caller) => {
            reserve(
                state,
                caller,
                &request_id,
                model,
                &mut request,
                prompt_tokens,
                transport,
            )
            .await?
        }
        None => Meter::Log,
    };
    let streaming = request.stream;
    let wants_usage = request.wants_usage_chunk();
    let (cancel, guard) = state
        .inflight()
        .register(request_id.clone(), caller.map(|c| c.account));
    let buffer = match transport {
        "ws" => WS_RELAY_BUFFER,
        _ => RELAY_BUFFER,
    };
    let (out, events) = mpsc::channel(buffer);
    let args = StreamArgs {
        request_id,
        model: model.config.id.as_str().into(),
        prompt_tokens_estimate: prompt_tokens,
        request,
        routes: model.routes.clone(),
        out,
        cancel,
        meter: meter.clone(),
        stats: state.streams().stats().clone(),
        transport,
    };
    if state.streams().spawn(args).await.is_err() {
        meter.release().await;
        return Err(ApiError::Internal);
    }
    Ok(Launched {
        events,
        guard,
        streaming,
        wants_usage,
    })
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

/// Places the hold and caps the upstream `max_tokens` to what the balance affords.
async fn reserve(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    model: &Model,
    request: &mut ChatRequest,
    prompt_tokens: u64,
    transport: &'static str,
) -> Result<Meter, ApiError> {
    let billing = &state.config().billing;
    let context_left = u64::from(model.config.context_window)
        .saturating_sub(prompt_tokens)
        .max(1);
    let max_output = request
        .requested_max_tokens()
        .map_or(context_left, u64::from);
    // Streams hold in increments; a non-streaming answer cannot be extended, so hold it whole.
    let increment = if request.stream {
        u64::from(billing.hold_increment_tokens)
    } else {
        max_output
    };
    let hold = Hold {
        request_id,
        model,
        prompt_tokens,
        increment_tokens: increment,
        max_output_tokens: max_output,
    };
    let (meter, max_tokens) = hold_credit(state, caller, hold, transport).await?;
    if max_tokens < max_output || request.requested_max_tokens().is_some() {
        let cap = u32::try_from(max_tokens).unwrap_or(u32::MAX);
        if request.max_completion_tokens.is_some() {
            request.max_completion_tokens = Some(cap);
        } else {
            request.max_tokens = Some(cap);
        }
    }
    Ok(meter)
}

/// What a request wants held before its upstream call.
pub struct Hold<'a> {
    pub request_id: &'a str,
    pub model: &'a Model,
    pub prompt_tokens: u64,
    pub increment_tokens: u64,
    pub max_output_tokens: u64,
}

/// Places a hold on the caller's account; returns the meter that settles it
/// and the most output tokens the funds allow. Refused with 503 while the
/// ledger is not writable, before any upstream call.
pub async fn hold_credit(
    state: &AppState,
    caller: &Caller,
    hold: Hold<'_>,
    transport: &'static str,
) -> Result<(Meter, u64), ApiError> {
    let services = state.services();
    if !services.ledger.is_healthy() {
        return Err(ApiError::Unavailable {
            message: "The ledger is not writable; nothing was charged. Retry later.".into(),
        });
    }
    let reserve = ReserveRequest {
        request_id: hold.request_id.to_owned(),
        key: Some(caller.key.id),
        key_limit: caller.key.spend_limit,
        price: hold.model.config.price,
        prompt_tokens: hold.prompt_tokens,
        increment_tokens: hold.increment_tokens,
        max_output_tokens: hold.max_output_tokens,
    };
    let reservation = services
        .accounts
        .reserve(caller.account, reserve)
        .await
        .map_err(ApiError::from)?;
    let meter = Meter::Account(Box::new(AccountMeter {
        accounts: services.accounts.clone(),
        account: caller.account,
        key: Some(caller.key.id),
        reservation,
        transport,
    }));
    Ok((meter, reservation.max_tokens))
}
