//! `Idempotency-Key` on inference requests, as one small wrapper around a
//! handler's work: [`begin`] claims the key before anything runs (or answers
//! from what the first attempt did), [`Ticket::remember`] keeps a non-streamed
//! answer durably before the client sees it, [`Ticket::streamed`] marks a key
//! whose request streamed (streams are never replayed). The table itself is
//! `crate::inflight::Idempotency`.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::inflight::{Claim, IdempotencyTicket, StoredResponse};
use crate::state::AppState;

/// What the key says about this request.
pub enum Begun {
    /// Run it; the ticket (if a key was sent) records how it ended.
    Run(Ticket),
    /// Answered from the first attempt: send this as it is.
    Replayed(Response),
}

/// The right to run under a key (or no key at all). Dropped without an
/// outcome (the request failed before charging anything), the key is freed.
pub struct Ticket(Option<IdempotencyTicket>);

/// Claims the request's `Idempotency-Key`, if it has one. Like Stripe, the
/// key is bound to the request it was first used with (a hash of the parsed
/// request, so whitespace and key order do not matter): another request under
/// the same key is a 400, never the first one's answer.
pub fn begin(
    state: &AppState,
    caller: Option<&Caller>,
    headers: &HeaderMap,
    request: &impl serde::Serialize,
) -> Result<Begun, ApiError> {
    let Some(key) = idempotency_key(headers)? else {
        return Ok(Begun::Run(Ticket(None)));
    };
    let fingerprint = fingerprint(request)?;
    // Without billing there is no account: keys share one namespace.
    let account = caller.map_or(tokun_storage::AccountId::new(0), |c| c.account);
    let claim = state
        .idempotency()
        .claim(account, key, &fingerprint)
        .map_err(|error| {
            tracing::error!(%error, "idempotency lookup failed");
            ApiError::Unavailable {
                message: "tokun cannot check the Idempotency-Key right now; retry shortly.".into(),
            }
        })?;
    match claim {
        Claim::Proceed(ticket) => Ok(Begun::Run(Ticket(Some(ticket)))),
        Claim::Replay(stored) => replay(stored).map(Begun::Replayed),
        Claim::InFlight => Err(ApiError::Conflict {
            message: "A request with this Idempotency-Key is still running.".into(),
        }),
        Claim::AlreadyStreamed => Err(ApiError::Conflict {
            message: "A streamed request with this Idempotency-Key already completed; streams are not replayed.".into(),
        }),
        Claim::Interrupted => Err(ApiError::Conflict {
            message: "The first request with this Idempotency-Key was cut short by a restart of tokun; it is not run again (what it used, if anything, is in /v1/usage). Use a new key to retry.".into(),
        }),
        Claim::Mismatch => Err(ApiError::BadRequest {
            message: "This Idempotency-Key was already used with a different request; use a new key for a new request.".into(),
            param: None,
            code: Some("idempotency_key_reused"),
        }),
    }
}

/// SHA-256 of the request as tokun parsed it, in hex.
fn fingerprint(request: &impl serde::Serialize) -> Result<String, ApiError> {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::to_vec(request).map_err(|error| {
        tracing::error!(%error, "a parsed request could not be serialized again");
        ApiError::Internal
    })?;
    let digest = Sha256::digest(&canonical);
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

impl Ticket {
    /// The request is streaming: a retry gets 409, never a second stream.
    pub fn streamed(self) {
        if let Some(ticket) = self.0 {
            ticket.finish(None);
        }
    }

    /// Stores a non-streamed answer under its key and makes it durable (one
    /// ledger flush) before the client sees it, so a retry after a crash or
    /// restart replays it instead of charging again.
    pub async fn remember(self, state: &AppState, headers: &HeaderMap, body: &Bytes) {
        let Some(ticket) = self.0 else {
            return;
        };
        let kept = headers
            .iter()
            .filter(|(name, _)| {
                name.as_str().starts_with("x-tokun") || *name == header::CONTENT_TYPE
            })
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        ticket.finish(Some(StoredResponse {
            status: StatusCode::OK.as_u16(),
            body: body.clone(),
            headers: kept,
        }));
        if let Err(error) = state.services().ledger.sync().await {
            tracing::error!(%error, "could not flush an idempotent outcome");
        }
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

/// The stored answer as it was sent, marked `idempotent-replayed`. A stored
/// status that is not a status (a damaged store) is an internal error, never
/// a 200 with whatever body is there.
fn replay(stored: StoredResponse) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(stored.status).map_err(|_| {
        tracing::error!(
            status = stored.status,
            "a stored idempotent outcome has no valid status"
        );
        ApiError::Internal
    })?;
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = status;
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
    Ok(response)
}
