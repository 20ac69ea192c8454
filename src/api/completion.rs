//! Starting a completion, whatever the transport (SSE or WebSocket): check
//! the request against the model and the key, place the hold (capping the
//! upstream `max_tokens` to what the balance affords), register the cancel
//! signal, and spawn the stream actor. The caller reads its relay events.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokun_actors::account::ReserveRequest;
use tokun_actors::{AccountMeter, Meter, RelayEvent, StreamArgs};
use tokun_providers::{ChatRequest, tokens};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::inflight::InFlightGuard;
use crate::state::{AppState, Model};

/// Events buffered between a stream actor and the client's socket. Small on
/// purpose: a slow client makes the actor wait, not tokun's memory grow.
pub const RELAY_BUFFER: usize = 16;

/// A started completion.
pub struct Launched {
    pub events: mpsc::Receiver<RelayEvent>,
    /// Keeps the request cancellable until dropped.
    pub guard: InFlightGuard,
    pub streaming: bool,
    pub wants_usage: bool,
}

/// Checks the body and that the key may use the model.
pub fn check_request(
    state: &AppState,
    caller: Option<&Caller>,
    request: &ChatRequest,
) -> Result<(), ApiError> {
    validate(request)?;
    let model = state
        .model(&request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    if let Some(caller) = caller {
        let allowed = &caller.key.allowed_models;
        if !allowed.is_empty() && !allowed.contains(&model.config.id) {
            return Err(ApiError::Forbidden {
                message: format!("This API key may not use the model `{}`.", model.config.id),
            });
        }
    }
    Ok(())
}

/// Reserves and spawns the stream actor. `request` must have passed `check_request`.
pub async fn launch(
    state: &AppState,
    caller: Option<&Caller>,
    request_id: Arc<str>,
    mut request: ChatRequest,
    transport: &'static str,
) -> Result<Launched, ApiError> {
    let model = state
        .model(&request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    let prompt_tokens = tokens::estimate_prompt(&request);
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
    let (out, events) = mpsc::channel(RELAY_BUFFER);
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
    let services = state.services();
    if !services.ledger.is_healthy() {
        // Nothing can be billed durably: refuse before any upstream call.
        return Err(ApiError::Unavailable {
            message: "The ledger is not writable; nothing was charged. Retry later.".into(),
        });
    }
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
    let reserve = ReserveRequest {
        request_id: request_id.to_owned(),
        key: Some(caller.key.id),
        key_limit: caller.key.spend_limit,
        price: model.config.price,
        prompt_tokens,
        increment_tokens: increment,
        max_output_tokens: max_output,
    };
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
        transport,
    })))
}
