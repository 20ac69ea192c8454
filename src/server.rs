//! Assembles and runs the HTTP server: the router with its middleware
//! (request ids, one log line per failed request), the listener with
//! `TCP_NODELAY`, and graceful shutdown (stop accepting, let streams finish up
//! to the grace period, then stop the rest so they settle).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokun_actors::provider::ProviderHandle;
use tokun_actors::{HoldPolicy, StreamSupervisorHandle, metric};
use tracing::Instrument;

use crate::config::Config;
use crate::console::mail::{Mailer, SentCode};
use crate::error::{ApiError, ErrorKind};
use crate::listener::{Endpoint, Limits, Listener, https::Https};
use crate::services::{FirstStart, Services, StartMode};
use crate::state::AppState;
use crate::{api, console};

/// The id of one request, shown to the client as `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The router with every route and middleware; the seam tests drive.
pub fn app(state: AppState) -> Router {
    served(api::router(), state)
}

/// The operator endpoints alone, for `server.admin_listen`.
fn operator_app(state: AppState) -> Router {
    served(api::operator_router(), state)
}

/// What every listener adds to its routes: OpenAI-shaped 404/405, request
/// ids, and outermost the access log (so it sees the request id and the
/// whole duration).
fn served(routes: Router<AppState>, state: AppState) -> Router {
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_context));
    let routes = match state.access_log() {
        Some(log) => routes.layer(middleware::from_fn_with_state(
            log.clone(),
            crate::access_log::record,
        )),
        None => routes,
    };
    routes.with_state(state)
}

/// `server.admin_listen`: the operator endpoints on their own thread and
/// single-threaded runtime, so an operator can watch a saturated gateway —
/// a request there never queues behind the traffic it is looking at.
struct OperatorListener {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OperatorListener {
    fn start(addr: SocketAddr, state: AppState) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tokun-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "the admin listener failed");
                            return;
                        }
                    };
                    let limits = Limits::of(&state.config().server);
                    let endpoint = Endpoint::new(Listener::Operator, operator_app(state), limits);
                    let served = crate::listener::serve(listener, endpoint, async move {
                        let _ = stopped.await;
                    })
                    .await;
                    if let Err(error) = served {
                        tracing::error!(%error, "the admin listener failed");
                    }
                });
            })?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops serving and waits (bounded) for the thread, which holds the
    /// state and with it the store.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), joined).await;
        }
    }
}

impl Drop for OperatorListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An unknown URL: the console's 404 page for a browser (it asks for HTML,
/// outside `/v1/` and `/admin`), OpenAI's JSON error for everything else.
async fn not_found(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if console::wants_html(&parts) {
        let who = console::session::signed_in(&parts.headers, &state);
        return console::error_page(
            StatusCode::NOT_FOUND,
            "There is no page at this address. Check it, or start again from the dashboard.",
            who.as_ref(),
        );
    }
    ApiError::NotFound {
        message: "Unknown request URL.".into(),
        code: "unknown_url",
    }
    .into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Gives every request an id, echoes it as `x-request-id`, counts it by
/// route template, and logs failures once.
async fn request_context(mut request: Request, next: Next) -> Response {
    let id = RequestId(new_request_id().into());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    request.extensions_mut().insert(id.clone());
    // One span per request; handlers fill in who and what once they know.
    let span = tracing::info_span!(
        "request",
        request_id = %id.0,
        %method,
        path = %path,
        account = tracing::field::Empty,
        key = tracing::field::Empty,
        model = tracing::field::Empty,
        route = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let _entered = span.enter();
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status();
    metric::counter_add(
        "tokun_http_requests_total",
        &[("route", &route), ("status", status.as_str())],
        1,
    );
    if status.is_server_error() || status.is_client_error() {
        let kind = response
            .extensions()
            .get::<ErrorKind>()
            .map_or("-", |k| k.0);
        if status.is_server_error() {
            tracing::warn!(request_id = %id.0, %method, path, status = status.as_u16(), kind, "request failed");
        } else {
            tracing::info!(request_id = %id.0, %method, path, status = status.as_u16(), kind, "request rejected");
        }
    }
    response
}

/// How long shutdown waits, after the streams ended, for WebSockets to send
/// their last `done` and close frame.
const SOCKETS_CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Forgets idempotent outcomes older than their window, at start and hourly
/// (a scan of the tree, on a blocking thread).
async fn purge_idempotency(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let state = state.clone();
        match tokio::task::spawn_blocking(move || state.idempotency().purge_expired()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(purged)) => tracing::info!(purged, "forgot expired idempotency keys"),
            Ok(Err(error)) => tracing::warn!(%error, "could not purge idempotency keys"),
            Err(error) => tracing::warn!(%error, "the idempotency purge panicked"),
        }
    }
}

/// 16 random base62 characters (≈ 95 bits): unique without coordination.
pub fn new_request_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A server running in this process (used by `tokun serve` and by tests).
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    streams: StreamSupervisorHandle,
    services: Services,
    /// The metrics upkeep task; aborted at shutdown.
    upkeep: Option<JoinHandle<()>>,
    first_start: FirstStart,
    grace: std::time::Duration,
    /// `server.admin_listen`, when configured; stops when dropped.
    operator: Option<OperatorListener>,
    /// Forgets idempotent outcomes past their 24 h, hourly; aborted at shutdown.
    purge: JoinHandle<()>,
    /// The console's low-balance alerts, every 30 s; aborted at shutdown.
    alerts: JoinHandle<()>,
    /// Emails about policy changes (`policy::mail`); aborted at shutdown.
    policy_mail: JoinHandle<()>,
    /// Tells open WebSockets to finish and close with 1001.
    going_away: Arc<tokio::sync::watch::Sender<bool>>,
    /// Sends console sign-in codes; in-process watchers may read them.
    mailer: Mailer,
    /// The access log's writer, flushed and stopped last at shutdown.
    access_log: Option<crate::access_log::AccessLog>,
    /// `[server.tls]`: the certificate reloader and the redirect listener.
    https: Https,
}

impl RunningServer {
    /// Binds `listener` and serves `config` until [`RunningServer::shutdown`].
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<RunningServer> {
        let addr = listener.local_addr()?;
        // The recorder goes first, so the actors started below are counted.
        if config.metrics.enabled {
            crate::metrics::install();
        }
        let (services, first_start) = Services::start(&config, StartMode::Serve).await?;
        let policy = HoldPolicy {
            increment_tokens: u64::from(config.billing.hold_increment_tokens),
        };
        let streams = StreamSupervisorHandle::start(services.accounts.clone(), policy).await?;
        let grace = config.server.shutdown_grace;
        let admin_listen = config.server.admin_listen;
        let mut limiters = std::collections::HashMap::new();
        for provider in &config.providers {
            let handle =
                ProviderHandle::start(provider.name.as_str().into(), provider.limits).await?;
            limiters.insert(provider.name.clone(), handle);
        }
        let access_log = crate::access_log::AccessLog::from_config(&config)
            .context("cannot start the access log in <server.data_dir>/access")?;
        let state = AppState::new(
            config,
            streams.clone(),
            services.clone(),
            limiters,
            access_log.clone(),
        )?;
        state.console().discover_oidc().await;
        let mailer = state.console().mailer().clone();
        if mailer.logs_codes() {
            tracing::warn!(
                "no [auth.smtp]: console sign-in codes are written to this log (development only)"
            );
        }
        let (shutdown, signal) = oneshot::channel::<()>();
        let https = Https::start(&state.config().server, addr).await?;
        let upkeep = state.metrics().cloned().map(|handle| {
            // Folds histogram samples in between scrapes so they never pile up.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::metrics::UPKEEP_EVERY);
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            })
        });
        let purge = tokio::spawn(purge_idempotency(state.clone()));
        let alerts = tokio::spawn(crate::console::billing::alerts::run(state.clone()));
        let policy_mail = tokio::spawn(crate::policy::mail::run(state.clone()));
        let going_away = state.going_away_signal();
        let operator = admin_listen
            .map(|addr| OperatorListener::start(addr, state.clone()))
            .transpose()?;
        // The peer address reaches handlers as `ConnectInfo` (sign-in limits).
        let limits = Limits::of(&state.config().server);
        let endpoint = Endpoint::new(Listener::Api, app(state), limits).with_tls(https.acceptor());
        let task = tokio::spawn(crate::listener::serve(listener, endpoint, async move {
            let _ = signal.await;
        }));
        Ok(RunningServer {
            addr,
            shutdown: Some(shutdown),
            task,
            streams,
            services,
            upkeep,
            first_start,
            grace,
            operator,
            purge,
            alerts,
            policy_mail,
            going_away,
            mailer,
            access_log,
            https,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the API listener serves TLS (`[server.tls]`).
    pub fn serves_tls(&self) -> bool {
        self.https.acceptor().is_some()
    }

    /// Where `server.redirect_http` answers plain HTTP with 308, if configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.https.redirect_addr()
    }

    /// Where `server.admin_listen` serves the operator endpoints, if configured.
    pub fn operator_addr(&self) -> Option<SocketAddr> {
        self.operator.as_ref().map(|o| o.addr)
    }

    pub fn streams(&self) -> &StreamSupervisorHandle {
        &self.streams
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Every console sign-in code sent from now on, as handed to the mailer:
    /// for tests driving this server in the same process.
    pub fn watch_sign_in_codes(&self) -> tokio::sync::broadcast::Receiver<SentCode> {
        self.mailer.watch()
    }

    /// Every console mail sent from now on (codes, low-balance alerts).
    pub fn watch_mail(&self) -> tokio::sync::broadcast::Receiver<crate::console::mail::SentMail> {
        self.mailer.watch_mail()
    }

    /// Runs the low-balance check now (it also runs every 30 s); how many
    /// alerts it sent.
    pub async fn check_low_balances(&self) -> Result<usize, tokun_storage::StorageError> {
        crate::console::billing::alerts::check(&self.services.store, &self.mailer).await
    }

    /// Secrets created by this start (demo key, admin token), to print once.
    pub fn first_start(&self) -> &FirstStart {
        &self.first_start
    }

    /// Stops accepting, lets streams finish up to the grace period, stops the rest.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // WebSockets are not the listener's: they are told separately, and
        // close (1001) once their completions have sent `done`.
        self.going_away.send_replace(true);
        self.streams.shutdown(self.grace).await;
        let sockets_closed = async {
            while self.going_away.receiver_count() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(SOCKETS_CLOSE_WITHIN, sockets_closed).await;
        match tokio::time::timeout(self.grace, &mut self.task).await {
            Ok(joined) => joined??,
            Err(_) => self.task.abort(),
        }
        self.https.stop().await;
        // Every stream has settled; flush the ledger and stop its writer.
        self.services.stop().await;
        if let Some(upkeep) = self.upkeep.take() {
            upkeep.abort();
        }
        // The operator endpoints stay up through the drain, for whoever watches it.
        if let Some(operator) = self.operator.take() {
            operator.stop().await;
        }
        // Awaited, not just aborted: the task holds the state, and with it
        // the store, which must be closed when this returns.
        self.purge.abort();
        let _ = (&mut self.purge).await;
        self.alerts.abort();
        let _ = (&mut self.alerts).await;
        self.policy_mail.abort();
        let _ = (&mut self.policy_mail).await;
        if let Some(log) = self.access_log.take() {
            let _ = tokio::task::spawn_blocking(move || log.stop()).await;
        }
        Ok(())
    }

    /// Writes every access log line so far to its file (for tests and tools
    /// reading the files while the server runs).
    pub async fn flush_access_log(&self) {
        if let Some(log) = self.access_log.clone() {
            let _ = tokio::task::spawn_blocking(move || log.flush()).await;
        }
    }
}
