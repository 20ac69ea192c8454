//! The WebSocket edge: `GET /v1/ws` (chat completions multiplexed on one
//! socket), `POST /v1/ws/ticket` (single-use tickets for browsers) and
//! `GET /v1/realtime` (the OpenAI Realtime relay). Owns the handshake, who
//! the caller is, and the per-socket loops. It does not start completions
//! itself: that is `completion::launch`, the same as over SSE, so metering
//! cannot differ between transports. See `docs/websocket.md`.
//!
//! A refused socket is still upgraded and then closed with a code and a
//! reason (4401 for bad credentials, `4000 + status` for other refusals):
//! browsers cannot read the status of a refused upgrade, only a close frame.

mod limits;
pub(crate) mod protocol;
mod realtime;
mod realtime_meter;
mod socket;
mod ticket;
mod writer;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

pub use ticket::Tickets;

use crate::auth::{Caller, KEY_PREFIX, bearer};
use crate::config::WebSocketConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// Subprotocols tokun echoes back when offered (never one that carries a key).
const PROTOCOLS: [&str; 2] = ["bearer", "realtime"];
/// OpenAI's browser convention: the key rides in a subprotocol with this prefix.
const KEY_PROTOCOL_PREFIX: &str = "openai-insecure-api-key.";
/// Read buffer of a `/v1/ws` socket. tungstenite zero-fills all of it on
/// every read, so it is resident memory per socket: small, since client
/// messages are small (larger frames are read in several reads).
const READ_BUFFER: usize = 1024;
/// Read buffers of Realtime sockets, which carry audio.
const REALTIME_READ_BUFFER: usize = 16 * 1024;
/// Bytes the socket gathers before writing; every flush writes them anyway.
/// tungstenite's buffer keeps the capacity it grew to, so this is resident
/// per socket once clients fall behind (16 KiB: ≈ 16 MiB at 1,000 sockets;
/// with the 1 KiB read buffer, 10,000 one-completion sockets peaked 8 MiB
/// lower at 2 KiB than at 4).
const WRITE_BUFFER: usize = 2 * 1024;

#[derive(Debug, Default, Deserialize)]
pub struct SocketQuery {
    ticket: Option<String>,
    model: Option<String>,
}

type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

/// `GET /v1/ws`.
pub async fn connect(
    State(state): State<AppState>,
    query: Result<Query<SocketQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let upgrade = configure(upgrade?, &state.config().websocket, READ_BUFFER);
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("The query string is malformed.", None))?;
    let caller = resolve_caller(&state, &headers, query.ticket.as_deref());
    Ok(upgrade.on_upgrade(move |socket| async move {
        match caller {
            Ok(caller) => socket::run(socket, state, caller).await,
            Err(error) => writer::refuse(socket, &error).await,
        }
    }))
}

/// `GET /v1/realtime?model=…`.
pub async fn realtime(
    State(state): State<AppState>,
    query: Result<Query<SocketQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let limits = &state.config().websocket;
    let upgrade = configure(upgrade?, limits, REALTIME_READ_BUFFER);
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("The query string is malformed.", None))?;
    let prepared = resolve_caller(&state, &headers, query.ticket.as_deref()).and_then(|caller| {
        if let Some(caller) = &caller {
            state.keys().check_rpm(&caller.key)?;
        }
        let target = realtime::Target::resolve(&state, caller.as_ref(), query.model.as_deref())?;
        Ok((caller, target))
    });
    let beta = headers.get("openai-beta").cloned();
    Ok(upgrade.on_upgrade(move |socket| async move {
        match prepared {
            Ok((caller, target)) => realtime::run(socket, state, caller, target, beta).await,
            Err(error) => writer::refuse(socket, &error).await,
        }
    }))
}

/// `POST /v1/ws/ticket`: a single-use ticket for `?ticket=`, valid for `ticket_ttl_secs`.
pub async fn issue_ticket(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    state.keys().check_rpm(&caller.key)?;
    super::account::refuse_disabled(&state, caller.account).await?;
    let ticket = state.tickets().issue(&caller)?;
    Ok(ticket_response(&state, &ticket))
}

/// A new ticket as `POST /v1/ws/ticket` (and the playground's) answer it:
/// `201`, never cached — the ticket is a credential for its lifetime.
pub fn ticket_response(state: &AppState, ticket: &str) -> Response {
    let body = json!({
        "object": "websocket.ticket",
        "ticket": ticket,
        "expires_in": state.tickets().ttl().as_secs(),
    });
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Counts open sockets for `/metrics` while alive.
struct OpenSocket(&'static str);

impl OpenSocket {
    pub fn count(endpoint: &'static str) -> Self {
        metrics::gauge!("tokun_websockets_open", "endpoint" => endpoint).increment(1.0);
        Self(endpoint)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!("tokun_websockets_open", "endpoint" => self.0).decrement(1.0);
    }
}

fn configure(
    upgrade: WebSocketUpgrade,
    limits: &WebSocketConfig,
    read_buffer: usize,
) -> WebSocketUpgrade {
    upgrade
        .protocols(PROTOCOLS)
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .read_buffer_size(read_buffer)
        .write_buffer_size(WRITE_BUFFER)
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(_: WebSocketUpgradeRejection) -> Self {
        ApiError::bad_request(
            "This endpoint only accepts WebSocket upgrades (GET with `Upgrade: websocket`).",
            None,
        )
    }
}

/// Who is calling, from (in order) a ticket, a key in the subprotocols, or
/// the `Authorization` header. `None` when billing is off and no credential
/// was sent.
fn resolve_caller(
    state: &AppState,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Option<Caller>, ApiError> {
    let store = &state.services().store;
    if let Some(ticket) = ticket {
        return state.tickets().redeem(ticket, store).map(Some);
    }
    if let Some(key) = protocol_key(headers) {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ApiError::Unauthorized {
                message: "Incorrect API key provided.".into(),
            }
        })?;
        let mut synthetic = HeaderMap::new();
        synthetic.insert(header::AUTHORIZATION, value);
        return state.keys().authenticate(store, &synthetic).map(Some);
    }
    if !state.billing_enabled() && bearer(headers).is_none() {
        return Ok(None);
    }
    state.keys().authenticate(store, headers).map(Some)
}

/// A key offered as a subprotocol: `bearer, sk-tokun-…` or
/// `openai-insecure-api-key.sk-tokun-…`.
fn protocol_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find_map(|protocol| {
            let key = protocol
                .strip_prefix(KEY_PROTOCOL_PREFIX)
                .unwrap_or(protocol);
            key.starts_with(KEY_PREFIX).then(|| key.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_either_subprotocol_convention() {
        let mut headers = HeaderMap::new();
        assert_eq!(protocol_key(&headers), None);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, sk-tokun-abc"),
        );
        assert_eq!(protocol_key(&headers).as_deref(), Some("sk-tokun-abc"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("realtime, openai-insecure-api-key.sk-tokun-xyz"),
        );
        assert_eq!(protocol_key(&headers).as_deref(), Some("sk-tokun-xyz"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, graphql-ws"),
        );
        assert_eq!(protocol_key(&headers), None);
    }
}
