//! One `/v1/ws` socket: a single task running a `select!` loop over the
//! client's frames, the launches and relay events of its completions, a
//! keep-alive ping, and the write of what is queued for the client.
//!
//! Backpressure: relay events are pulled only once everything queued was
//! written and flushed, so a slow reader leaves them in each completion's
//! small bounded channel and its stream actor waits; a write blocked longer
//! than `stall_timeout` drops the socket. Dropping the socket drops every
//! receiver: each stream actor sees its client gone, stops the upstream and
//! settles what it relayed (estimated). Starting a completion is
//! [`launch`], exactly as over SSE.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures_util::{FutureExt, SinkExt, StreamExt, stream};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tokun_actors::{RelayEvent, Transport, metric};
use tokun_providers::ChatRequest;

use super::OpenSocket;
use super::limits::RateBucket;
use super::protocol::{ClientMessage, Refused, ServerMessage, parse, peek_id};
use super::writer::{Ending, Outbox, close, close_frame, code, ping_timeout, read_failed};
use crate::api::completion::{Launched, check_request, launch};
use crate::auth::Caller;
use crate::config::WebSocketConfig;
use crate::error::ApiError;
use crate::inflight::InFlightGuard;
use crate::state::AppState;

/// Messages queued for the client beyond which tokun stops reading the
/// client's frames (its errors and replies would otherwise pile up).
const MAX_QUEUED: usize = 64;
/// Relay events turned into messages per write, when several are ready.
const COALESCE: usize = 32;

type Events = SelectAll<BoxStream<'static, (u64, Option<RelayEvent>)>>;
type Launches = FuturesUnordered<BoxFuture<'static, (u64, Result<Launched, ApiError>)>>;

/// Serves one socket until it closes; every completion on it ends with it.
pub(super) async fn run(socket: WebSocket, state: AppState, caller: Option<Caller>) {
    let limits = state.config().websocket.clone();
    let _open = OpenSocket::count("ws");
    let mut session = Session::new(state, caller, &limits);
    let (mut sink, mut stream) = socket.split();
    let start = Instant::now() + limits.ping_interval;
    let mut ping = interval_at(start, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_sent: Option<Instant> = None;
    let mut write_started: Option<Instant> = None;
    let mut going_away = session.state.going_away();
    let mut draining = *going_away.borrow();
    let ending = loop {
        let writing = session.out.pending();
        if draining && !writing && session.running.is_empty() && session.launches.is_empty() {
            // Every completion ended with its `done`: say goodbye properly.
            break Ending::Close(close_frame(code::GOING_AWAY, "tokun is shutting down"));
        }
        if !writing {
            write_started = None;
        } else if write_started.is_none() {
            write_started = Some(Instant::now());
        }
        let stall_at = write_started.map(|t| t + limits.stall_timeout);
        let pong_at = ping_sent.map(|t| t + limits.pong_timeout);
        // Relay events wait in their channels until the client took what is queued.
        let pull_events = !writing && !session.events.is_empty();
        tokio::select! {
            biased;
            written = session.out.write(&mut sink), if writing => {
                if written.is_err() {
                    break Ending::Gone;
                }
            }
            () = sleep_until(stall_at.unwrap_or(start)), if stall_at.is_some() => {
                tracing::info!("websocket client stopped reading; dropping the socket");
                break Ending::Gone;
            }
            () = sleep_until(pong_at.unwrap_or(start)), if pong_at.is_some() => {
                break ping_timeout(&limits);
            }
            frame = stream.next(), if session.out.len() < MAX_QUEUED => {
                ping_sent = None;
                match frame {
                    Some(Ok(message)) => {
                        if let Some(ending) = session.on_frame(message) {
                            break ending;
                        }
                    }
                    Some(Err(error)) => break read_failed(error, limits.max_frame_bytes),
                    None => break Ending::Gone,
                }
            }
            Some((seq, launched)) = session.launches.next(), if !session.launches.is_empty() => {
                session.on_launched(seq, launched);
            }
            Some((seq, event)) = session.events.next(), if pull_events => {
                session.on_event(seq, event);
                for _ in 1..COALESCE {
                    match session.events.next().now_or_never() {
                        Some(Some((seq, event))) => session.on_event(seq, event),
                        _ => break,
                    }
                }
            }
            // Shutdown: streams finish (or are stopped and settled) by the
            // stream supervisor; new completions are refused by `launch`.
            _ = going_away.changed(), if !draining => draining = true,
            _ = ping.tick() => {
                if ping_sent.is_none() {
                    session.out.push(Message::Ping(Default::default()));
                    ping_sent = Some(Instant::now());
                }
            }
        }
    };
    session.stop().await;
    match ending {
        Ending::Close(frame) => close(&mut sink, stream, frame).await,
        // The close reply tungstenite queued goes out with this flush.
        Ending::ClientClosed => {
            let _ = tokio::time::timeout(super::writer::CLOSE_TIMEOUT, sink.flush()).await;
        }
        Ending::Gone => {}
    }
}

/// The completions of one socket and what is queued for its client.
struct Session {
    state: AppState,
    caller: Option<Caller>,
    max_completions: usize,
    bucket: RateBucket,
    out: Outbox<Message>,
    next_seq: u64,
    /// Client id → the sequence number of its running completion.
    ids: HashMap<Arc<str>, u64>,
    running: HashMap<u64, Running>,
    launches: Launches,
    /// Every started completion's relay events, tagged with its sequence
    /// number; a final `None` says its channel closed.
    events: Events,
}

struct Running {
    id: Arc<str>,
    request_id: Arc<str>,
    model: String,
    provider: Option<Arc<str>>,
    /// When the client asked, until its first chunk (for the TTFT metric).
    waiting_since: Option<Instant>,
    /// `None` while launching; keeps the completion cancellable by id.
    guard: Option<InFlightGuard>,
    cancel_requested: bool,
}

impl Session {
    fn new(state: AppState, caller: Option<Caller>, limits: &WebSocketConfig) -> Self {
        Self {
            state,
            caller,
            max_completions: limits.max_completions.get() as usize,
            bucket: RateBucket::new(limits.max_messages_per_sec),
            out: Outbox::new(),
            next_seq: 0,
            ids: HashMap::new(),
            running: HashMap::new(),
            launches: FuturesUnordered::new(),
            events: SelectAll::new(),
        }
    }

    fn on_frame(&mut self, message: Message) -> Option<Ending> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let error =
                    invalid_frame("Binary frames are not supported; send JSON text frames.");
                self.send_error(None, &error);
                return None;
            }
            Message::Close(_) => return Some(Ending::ClientClosed),
            // tungstenite answers pings itself; any frame counts as a pong.
            Message::Ping(_) | Message::Pong(_) => return None,
        };
        if !self.bucket.take() {
            let error = ApiError::RateLimited {
                message: "Too many messages on this socket; the message was dropped.".into(),
                retry_after: std::time::Duration::from_secs(1),
            };
            self.send_error(peek_id(&text).as_deref(), &error);
            return None;
        }
        match parse(&text) {
            Ok(ClientMessage::Create { id, request }) => self.create(id.into(), request),
            Ok(ClientMessage::Cancel { id }) => self.cancel(&id),
            Err(Refused { id, error }) => self.send_error(id.as_deref(), &error),
        }
        None
    }

    fn create(&mut self, id: Arc<str>, request: ChatRequest) {
        if let Err(error) = self.admit(&id, &request) {
            return self.send_error(Some(&id), &error);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let request_id: Arc<str> = crate::server::new_request_id().into();
        self.ids.insert(id.clone(), seq);
        self.running.insert(
            seq,
            Running {
                id,
                request_id: request_id.clone(),
                model: request.model.clone(),
                provider: None,
                waiting_since: Some(Instant::now()),
                guard: None,
                cancel_requested: false,
            },
        );
        let (state, caller) = (self.state.clone(), self.caller.clone());
        self.launches.push(
            async move {
                let launched =
                    launch(&state, caller.as_ref(), request_id, request, Transport::Ws).await;
                (seq, launched)
            }
            .boxed(),
        );
    }

    /// The per-socket and per-key checks before a completion may start.
    fn admit(&self, id: &str, request: &ChatRequest) -> Result<(), ApiError> {
        if self.ids.contains_key(id) {
            return Err(ApiError::Conflict {
                message: format!("A completion with id `{id}` is already running on this socket."),
            });
        }
        if self.running.len() >= self.max_completions {
            return Err(ApiError::RateLimited {
                message: format!(
                    "This socket already runs {} completions, its limit; wait for one to finish.",
                    self.max_completions
                ),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        if let Some(caller) = &self.caller {
            // The socket was authenticated once; a key revoked since starts nothing.
            if self.state.keys().is_revoked(&caller.key) {
                return Err(ApiError::Unauthorized {
                    message: "This API key has been revoked.".into(),
                });
            }
            self.state.keys().check_rpm(&caller.key)?;
        }
        check_request(&self.state, self.caller.as_ref(), request)
    }

    fn cancel(&mut self, id: &str) {
        let Some(running) = self.ids.get(id).and_then(|seq| self.running.get_mut(seq)) else {
            let error = ApiError::NotFound {
                message: format!("No completion with id `{id}` is running on this socket."),
                code: "completion_not_found",
            };
            return self.send_error(Some(id), &error);
        };
        running.cancel_requested = true;
        if running.guard.is_some() {
            let account = self.caller.as_ref().map(|c| c.account);
            self.state.inflight().cancel(&running.request_id, account);
        }
    }

    fn on_launched(&mut self, seq: u64, launched: Result<Launched, ApiError>) {
        match launched {
            Ok(launched) => {
                let Some(running) = self.running.get_mut(&seq) else {
                    return;
                };
                running.guard = Some(launched.guard);
                self.events.push(tagged(seq, launched.events));
                if running.cancel_requested {
                    let account = self.caller.as_ref().map(|c| c.account);
                    self.state.inflight().cancel(&running.request_id, account);
                }
            }
            Err(error) => self.end(seq, Some(&error)),
        }
    }

    fn on_event(&mut self, seq: u64, event: Option<RelayEvent>) {
        let Some(running) = self.running.get_mut(&seq) else {
            return; // The completion already ended; this is its channel closing.
        };
        let id = running.id.clone();
        match event {
            Some(RelayEvent::Routed { provider, .. }) => running.provider = Some(provider),
            Some(RelayEvent::Chunk(chunk)) => {
                if let Some(since) = running.waiting_since.take() {
                    metric::histogram_record(
                        "tokun_time_to_first_token_seconds",
                        &[("transport", Transport::Ws.as_str())],
                        since.elapsed().as_secs_f64(),
                    );
                }
                self.out.push(ServerMessage::chunk(&id, &chunk).encode());
            }
            Some(RelayEvent::Completion(completion, settlement)) => {
                self.out
                    .push(ServerMessage::completion(&id, &completion, &settlement).encode());
                self.out
                    .push(ServerMessage::done(&id, &settlement).encode());
                self.end(seq, None);
            }
            Some(RelayEvent::Failed(failure)) => {
                // Mid-stream: the error, then still `done` with what was billed.
                self.send_error(Some(&id), &ApiError::from(*failure));
            }
            Some(RelayEvent::Finished(settlement)) => {
                self.out
                    .push(ServerMessage::done(&id, &settlement).encode());
                self.end(seq, None);
            }
            Some(RelayEvent::Rejected(error)) => self.end(seq, Some(&ApiError::from(*error))),
            // Embeddings are not run over `/v1/ws`; nor does a stream end unanswered.
            Some(RelayEvent::Embedded(..)) | None => self.end(seq, Some(&ApiError::Internal)),
        }
    }

    /// Forgets a completion, sending its error if it failed.
    fn end(&mut self, seq: u64, error: Option<&ApiError>) {
        let Some(running) = self.running.remove(&seq) else {
            return;
        };
        self.ids.remove(&running.id);
        if let Some(error) = error {
            self.send_error(Some(&running.id), error);
        }
        let status = error.map_or(200, |e| e.status().as_u16());
        let model = self
            .state
            .model(&running.model)
            .map_or("unknown", |m| m.config.id.as_str());
        let status = status.to_string();
        metric::counter_add(
            "tokun_requests_total",
            &[
                ("model", model),
                ("provider", running.provider.as_deref().unwrap_or("none")),
                ("status", &status),
                ("transport", Transport::Ws.as_str()),
            ],
            1,
        );
    }

    fn send_error(&mut self, id: Option<&str>, error: &ApiError) {
        self.out.push(ServerMessage::error(id, error).encode());
    }

    /// Ends every completion: a launch in flight may already have spawned its
    /// stream actor, so it is finished first; then dropping the receivers
    /// tells each stream actor its client is gone, and it settles what it
    /// relayed (or releases its hold).
    async fn stop(mut self) {
        while self.launches.next().await.is_some() {}
        drop(self.events);
        self.running.clear();
    }
}

fn invalid_frame(message: &str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        param: None,
        code: Some("unsupported_frame"),
    }
}

/// A completion's relay events tagged with its sequence number, then one `None`.
fn tagged(
    seq: u64,
    events: mpsc::Receiver<RelayEvent>,
) -> BoxStream<'static, (u64, Option<RelayEvent>)> {
    stream::unfold(Some(events), move |events| async move {
        let mut events = events?;
        match events.recv().await {
            Some(event) => Some(((seq, Some(event)), Some(events))),
            None => Some(((seq, None), None)),
        }
    })
    .boxed()
}
