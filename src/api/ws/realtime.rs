//! `GET /v1/realtime?model=…`: the OpenAI Realtime relay. tokun opens the
//! upstream's Realtime socket (tokio-tungstenite, the provider's key in
//! `Authorization`), then relays every event both ways unchanged while
//! [`RealtimeMeter`] holds and settles each response.
//!
//! One task per socket: a `select!` over both sockets, each direction's
//! writes and the keep-alive. While one side's writes are pending, reads from
//! the other side pause (each socket's own window is the buffer), and a write
//! blocked longer than `stall_timeout` ends the session.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use axum::http::{HeaderValue, header};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as UpstreamConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as UpstreamMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokun_actors::Tariff;
use tokun_providers::ProviderError;
use tokun_providers::TimeoutPhase;

use super::OpenSocket;
use super::realtime_meter::{RealtimeMeter, Verdict};
use super::writer::{
    self, CLOSE_TIMEOUT, Ending, Outbox, close, close_for, close_frame, code, ping_timeout,
    read_failed,
};
use super::{REALTIME_READ_BUFFER, WRITE_BUFFER};
use crate::api::completion::check_request_model;
use crate::auth::Caller;
use crate::config::{Secret, WebSocketConfig};
use crate::error::ApiError;
use crate::state::AppState;

type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// tokun's own events (refusals) queued for the client beyond which the
/// client's frames stop being read.
const MAX_QUEUED: usize = 64;

/// Where a Realtime session goes and what it costs.
pub(super) struct Target {
    url: String,
    api_key: Option<Secret>,
    handshake_timeout: Duration,
    pub model: Arc<str>,
    pub upstream_model: Arc<str>,
    pub provider: Arc<str>,
    /// The route's position among the model's routes, for the request log.
    pub route: u32,
    pub tariff: Tariff,
}

impl Target {
    /// The first route of `model` whose provider has a `realtime_url`.
    pub fn resolve(
        state: &AppState,
        caller: Option<&Caller>,
        model: Option<&str>,
    ) -> Result<Target, ApiError> {
        let id = model.filter(|m| !m.is_empty()).ok_or_else(|| {
            ApiError::bad_request("The `model` query parameter is required.", Some("model"))
        })?;
        let model = state
            .model(id)
            .ok_or_else(|| ApiError::model_not_found(id))?;
        check_request_model(caller, model)?;
        for (position, route) in model.config.routes.iter().enumerate() {
            let provider = state
                .config()
                .providers
                .iter()
                .find(|p| p.name == route.provider);
            let Some((provider, url)) = provider.and_then(|p| Some((p, p.realtime_url.as_ref()?)))
            else {
                continue;
            };
            return Ok(Target {
                url: with_model(url, &route.model),
                api_key: provider.api_key.clone(),
                handshake_timeout: provider.connect_timeout + provider.timeouts.first_byte,
                model: model.config.id.as_str().into(),
                upstream_model: route.model.as_str().into(),
                provider: provider.name.as_str().into(),
                route: u32::try_from(position).unwrap_or(u32::MAX),
                tariff: model.tariff(),
            });
        }
        Err(ApiError::NotFound {
            message: format!("The model `{id}` has no Realtime route."),
            code: "realtime_unavailable",
        })
    }
}

/// Relays one session until either side closes; settles what is open.
pub(super) async fn run(
    client: WebSocket,
    state: AppState,
    caller: Option<Caller>,
    target: Target,
    beta: Option<HeaderValue>,
) {
    let _open = OpenSocket::count("realtime");
    let upstream = match open_upstream(&target, beta).await {
        Ok(upstream) => upstream,
        Err(error) => return writer::refuse(client, &error).await,
    };
    let limits = state.config().websocket.clone();
    let going_away = state.going_away();
    let meter = RealtimeMeter::new(state, caller, target);
    relay(client, upstream, meter, &limits, going_away).await;
}

/// How a relay ended.
enum End {
    ClientClosed,
    /// The client went away, stopped reading, or broke the protocol.
    Client(Ending),
    /// The upstream closed (with this code, if it sent one) or broke.
    Upstream(Option<CloseCode>),
    /// A response the upstream started by itself could not be paid for.
    Refused(ApiError),
    /// tokun is shutting down: a session has no end to wait for, so it ends
    /// now, settling what is open, and the client hears 1001.
    GoingAway,
}

async fn relay(
    client: WebSocket,
    upstream: Upstream,
    mut meter: RealtimeMeter,
    limits: &WebSocketConfig,
    mut going_away: tokio::sync::watch::Receiver<bool>,
) {
    let (mut client_sink, mut client_stream) = client.split();
    let (mut upstream_sink, mut upstream_stream) = upstream.split();
    let mut to_client = Outbox::<Message>::new();
    let mut to_upstream = Outbox::<UpstreamMessage>::new();
    let start = Instant::now() + limits.ping_interval;
    let mut ping = interval_at(start, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_sent: Option<Instant> = None;
    let mut write_started: Option<Instant> = None;
    let end = loop {
        if *going_away.borrow() {
            break End::GoingAway;
        }
        if !(to_client.pending() || to_upstream.pending()) {
            write_started = None;
        } else if write_started.is_none() {
            write_started = Some(Instant::now());
        }
        let stall_at = write_started.map(|t| t + limits.stall_timeout);
        let pong_at = ping_sent.map(|t| t + limits.pong_timeout);
        // Each side is read only while what it sends can be passed on.
        let read_client = !to_upstream.pending() && to_client.len() < MAX_QUEUED;
        tokio::select! {
            biased;
            written = to_client.write(&mut client_sink), if to_client.pending() => {
                if written.is_err() {
                    break End::Client(Ending::Gone);
                }
            }
            written = to_upstream.write(&mut upstream_sink), if to_upstream.pending() => {
                if written.is_err() {
                    break End::Upstream(None);
                }
            }
            () = sleep_until(stall_at.unwrap_or(start)), if stall_at.is_some() => {
                tracing::info!("a realtime peer stopped reading; ending the session");
                break End::Client(Ending::Gone);
            }
            () = sleep_until(pong_at.unwrap_or(start)), if pong_at.is_some() => {
                break End::Client(ping_timeout(limits));
            }
            frame = client_stream.next(), if read_client => {
                ping_sent = None;
                match frame {
                    Some(Ok(Message::Text(text))) => match meter.on_client_text(&text).await {
                        Verdict::Forward => to_upstream.push_some(upstream_text(text)),
                        Verdict::Refuse(event) => to_client.push(Message::text(event)),
                    },
                    Some(Ok(Message::Binary(data))) => {
                        to_upstream.push(UpstreamMessage::Binary(data));
                    }
                    Some(Ok(Message::Close(_))) => break End::ClientClosed,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(error)) => {
                        break End::Client(read_failed(error, limits.max_frame_bytes));
                    }
                    None => break End::Client(Ending::Gone),
                }
            }
            frame = upstream_stream.next(), if !to_client.pending() => match frame {
                Some(Ok(UpstreamMessage::Text(text))) => {
                    if let Err(error) = meter.on_upstream_text(&text).await {
                        break End::Refused(error);
                    }
                    to_client.push_some(client_text(&text));
                }
                Some(Ok(UpstreamMessage::Binary(data))) => to_client.push(Message::Binary(data)),
                Some(Ok(UpstreamMessage::Close(frame))) => {
                    break End::Upstream(frame.map(|f| f.code));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break End::Upstream(None),
            },
            _ = going_away.changed() => break End::GoingAway,
            _ = ping.tick() => {
                if ping_sent.is_none() {
                    to_client.push(Message::Ping(Bytes::new()));
                    ping_sent = Some(Instant::now());
                }
            }
        }
    };
    if !matches!(end, End::Upstream(_)) {
        // Closing the upstream socket stops whatever it was generating.
        let bye = upstream_sink.send(UpstreamMessage::Close(None));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, bye).await;
    }
    drop((upstream_sink, upstream_stream));
    // Settle before the client hears the session is over.
    let reason = match &end {
        End::Upstream(_) => "upstream_closed",
        End::Refused(_) => "budget",
        End::GoingAway => "shutdown",
        End::ClientClosed | End::Client(_) => "client_gone",
    };
    meter.close(reason).await;
    let frame = match end {
        End::ClientClosed => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, client_sink.flush()).await;
            return;
        }
        End::Client(Ending::Close(frame)) => frame,
        End::Client(_) => return,
        End::Upstream(code) => {
            // What the upstream sent before closing still reaches the client.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, to_client.write(&mut client_sink)).await;
            match code {
                Some(CloseCode::Normal) => {
                    close_frame(code::NORMAL, "The upstream ended the session.")
                }
                _ => close_frame(code::INTERNAL, "The upstream Realtime connection closed."),
            }
        }
        End::Refused(error) => close_for(&error),
        End::GoingAway => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, to_client.write(&mut client_sink)).await;
            close_frame(code::GOING_AWAY, "tokun is shutting down")
        }
    };
    close(&mut client_sink, client_stream, frame).await;
}

async fn open_upstream(target: &Target, beta: Option<HeaderValue>) -> Result<Upstream, ApiError> {
    let upstream = |error: ProviderError| {
        let kind = error.kind();
        tracing::warn!(provider = %target.provider, kind, "realtime upstream failed");
        ApiError::Upstream(error)
    };
    let mut request = target.url.as_str().into_client_request().map_err(|_| {
        upstream(ProviderError::Request {
            detail: "invalid realtime_url".into(),
        })
    })?;
    if let Some(key) = &target.api_key {
        let value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
            upstream(ProviderError::Request {
                detail: "the provider key is not a valid header value".into(),
            })
        })?;
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    if let Some(beta) = beta {
        request.headers_mut().insert("openai-beta", beta);
    }
    let config = UpstreamConfig::default()
        .read_buffer_size(REALTIME_READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(target.handshake_timeout, connect).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) if response.status().as_u16() == 429 => {
            Err(upstream(ProviderError::Status {
                status: 429,
                message: "The upstream is rate limiting Realtime sessions.".into(),
                retry_after: None,
            }))
        }
        // Other refusals (a bad provider key included) are tokun's problem, not the client's.
        Ok(Err(error)) => Err(upstream(ProviderError::Connect {
            detail: handshake_failure(&error),
        })),
        Err(_) => Err(upstream(ProviderError::Timeout {
            phase: TimeoutPhase::Connect,
        })),
    }
}

fn handshake_failure(error: &tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Http(response) => {
            format!("handshake refused with HTTP {}", response.status())
        }
        tungstenite::Error::Io(error) => format!("{}", error.kind()),
        _ => "handshake failed".into(),
    }
}

/// `url` with `model=` appended, percent-encoded.
fn with_model(url: &str, model: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut encoded = String::with_capacity(model.len());
    for byte in model.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{url}{separator}model={encoded}")
}

fn upstream_text(text: Utf8Bytes) -> Option<UpstreamMessage> {
    tungstenite::Utf8Bytes::try_from(Bytes::from(text))
        .ok()
        .map(UpstreamMessage::Text)
}

fn client_text(text: &tungstenite::Utf8Bytes) -> Option<Message> {
    let bytes: &Bytes = text.as_ref();
    Utf8Bytes::try_from(bytes.clone()).ok().map(Message::Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_appended_to_the_url() {
        assert_eq!(
            with_model("ws://h/v1/realtime", "gpt-4o-realtime"),
            "ws://h/v1/realtime?model=gpt-4o-realtime"
        );
        assert_eq!(
            with_model("wss://h/rt?x=1", "a b"),
            "wss://h/rt?x=1&model=a%20b"
        );
    }
}
