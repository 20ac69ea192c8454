//! Starting a completion, whatever the transport (SSE or WebSocket): check
//! the request against the model and the key, pick the model for `auto`,
//! register the cancel signal, and spawn the stream actor — which places the
//! hold and caps the upstream `max_tokens` itself. The caller reads its relay
//! events.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokun_actors::provider::CircuitState;
use tokun_actors::routing::{Candidate, cheapest_fit};
use tokun_actors::{RelayEvent, StreamArgs, Transport, Work};
use tokun_providers::{ChatRequest, tokens};

use super::debug::capture::Capture;
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
            Some(limiter) => limiter
                .health()
                .await
                .is_none_or(|h| h.circuit != CircuitState::Open),
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

pub fn check_request_model(caller: Option<&Caller>, model: &Model) -> Result<(), ApiError> {
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

/// Picks the model (`auto` resolved), registers the cancel signal and
/// spawns the stream actor, which places the hold itself. `request` must have
/// passed `check_request`.
pub async fn launch(
    state: &AppState,
    caller: Option<&Caller>,
    request_id: Arc<str>,
    mut request: ChatRequest,
    transport: Transport,
) -> Result<Launched, ApiError> {
    // Before `auto` is resolved: the request as the client sent it.
    let capture = Capture::begin(
        state,
        caller,
        transport,
        &request_id,
        (&request.model, &request),
    );
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
    check_context(model, prompt_tokens, request.requested_max_tokens())?;
    let streaming = request.stream;
    let wants_usage = request.wants_usage_chunk();
    let buffer = match transport {
        Transport::Ws => WS_RELAY_BUFFER,
        Transport::Http | Transport::Realtime => RELAY_BUFFER,
    };
    let work = Work::Chat(request);
    let (events, guard) = start(
        state,
        caller,
        request_id,
        (model, prompt_tokens),
        work,
        transport,
        buffer,
    )
    .await?;
    Ok(Launched {
        events: Capture::relay(capture, events, buffer),
        guard,
        streaming,
        wants_usage,
    })
}

/// Spawns the stream actor for `work` on `model`; returns its relay events and
/// the guard that keeps it cancellable. A spawn that fails held nothing (the
/// actor places the hold) and answers 500 with the request id.
pub async fn start(
    state: &AppState,
    caller: Option<&Caller>,
    request_id: Arc<str>,
    (model, prompt_tokens): (&Model, u64),
    work: Work,
    transport: Transport,
    buffer: usize,
) -> Result<(mpsc::Receiver<RelayEvent>, InFlightGuard), ApiError> {
    let (cancel, guard) = state
        .inflight()
        .register(request_id.clone(), caller.map(|c| c.account));
    let (out, events) = mpsc::channel(buffer);
    let args = StreamArgs {
        request_id,
        model: model.config.id.as_str().into(),
        tariff: model.tariff(),
        routes: model.routes.clone(),
        prompt_tokens_estimate: prompt_tokens,
        payer: caller.map(Caller::payer),
        out,
        cancel,
        transport,
    };
    if let Err(error) = state.streams().spawn(args, work).await {
        tracing::error!(%error, "the stream actor failed to start");
        return Err(ApiError::Internal);
    }
    Ok((events, guard))
}

/// Refuses, before any upstream call or hold, a prompt (plus the output it
/// asks for) that the model's context window cannot hold — as OpenAI does.
fn check_context(model: &Model, prompt: u64, max_output: Option<u32>) -> Result<(), ApiError> {
    let window = u64::from(model.config.context_window);
    let output = max_output.map_or(0, u64::from);
    if prompt.saturating_add(output) <= window {
        return Ok(());
    }
    let message = match max_output {
        Some(max) => format!(
            "This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt} in the messages, {max} in the completion). Please reduce the length of the messages or completion.",
            prompt.saturating_add(output)
        ),
        None => format!(
            "This model's maximum context length is {window} tokens. However, your messages resulted in {prompt} tokens. Please reduce the length of the messages."
        ),
    };
    Err(ApiError::BadRequest {
        message,
        param: Some("messages".into()),
        code: Some("context_length_exceeded"),
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
    // tokun bills and relays one choice per request; more would be billed as one.
    if request
        .extra
        .get("n")
        .is_some_and(|n| !n.is_null() && n != 1)
    {
        return Err(ApiError::bad_request(
            "tokun serves one choice per request: `n` must be 1 (or left out).",
            Some("n"),
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
