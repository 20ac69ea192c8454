//! The accept loop every listener runs (API, operator, redirect): TCP with
//! `TCP_NODELAY`, TLS when the endpoint has an acceptor, then HTTP/1.1 or
//! HTTP/2 on the connection (hyper-util's auto builder: ALPN or the h2
//! preface decides), with upgrades for WebSockets. Each connection has a
//! watchdog closing it when a request's headers take longer than
//! `server.header_read_timeout_secs` or no request comes for
//! `server.idle_timeout_secs`, so clients that open connections and stall
//! (slowloris) cannot hold descriptors for ever. Shutdown is axum's:
//! stop accepting, ask every connection to finish gracefully, wait for them.
//! Routing and middleware are not here: an endpoint is given its `Router`.

mod activity;
pub mod https;
pub mod redirect;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokun_actors::metric;

use crate::config::ServerConfig;
use activity::{Activity, Tracked, Watched};

/// Which listener a request came in on; every request carries it as an
/// extension (`/metrics` asks for the admin token on the API listener only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Api,
    Operator,
    Redirect,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Operator => "operator",
            Self::Redirect => "redirect",
        }
    }
}

/// How long a client may take, per connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the first byte of a request to its last header; also the TLS
    /// handshake, and a new connection's first request.
    pub header_read: Duration,
    /// With no request in flight, between two requests.
    pub idle: Duration,
}

impl Limits {
    pub fn of(server: &ServerConfig) -> Limits {
        Limits {
            header_read: server.header_read_timeout,
            idle: server.idle_timeout,
        }
    }
}

/// What one listener serves and how.
pub struct Endpoint {
    listener: Listener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    http: auto::Builder<TokioExecutor>,
}

impl Endpoint {
    pub fn new(listener: Listener, router: Router, limits: Limits) -> Endpoint {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // The watchdog times headers out, for both protocols; hyper's own
        // header timer would also close idle keep-alive connections.
        http.http1().header_read_timeout(None);
        Endpoint {
            listener,
            router,
            tls: None,
            limits,
            http,
        }
    }

    /// Serves TLS with `acceptor` (`None`: plain HTTP).
    pub fn with_tls(mut self, acceptor: Option<TlsAcceptor>) -> Endpoint {
        self.tls = acceptor;
        self
    }
}

/// How long a connection asked to close gets before it is dropped.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// Accepts on `tcp` until `shutdown` resolves, then lets open connections
/// finish gracefully and returns once they all have. Dropping the returned
/// future drops every connection.
pub async fn serve(
    tcp: TcpListener,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let endpoint = Arc::new(endpoint);
    // Tells every connection to finish its requests and close.
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((socket, peer)) => {
                    connections.spawn(connection(socket, peer, endpoint.clone(), stopping.clone()));
                }
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::error!(%error, listener = endpoint.listener.label(), "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
    }
    drop(tcp);
    stop.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    endpoint: Arc<Endpoint>,
    stopping: watch::Receiver<bool>,
) {
    // Nagle's algorithm meeting delayed ACKs costs ~40 ms per small write.
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = &endpoint.tls else {
        return drive(tcp, peer, &endpoint, stopping).await;
    };
    let handshake = tokio::time::timeout(endpoint.limits.header_read, acceptor.accept(tcp));
    match handshake.await {
        Ok(Ok(tls)) => drive(tls, peer, &endpoint, stopping).await,
        Ok(Err(error)) => {
            closed(endpoint.listener, "handshake_failed");
            tracing::debug!(%error, %peer, "TLS handshake failed");
        }
        Err(_) => closed(endpoint.listener, "handshake_timeout"),
    }
}

/// Serves HTTP on one connection, under its watchdog.
async fn drive<I>(io: I, peer: SocketAddr, endpoint: &Endpoint, mut stopping: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
    });
    let service = RequestService {
        router: endpoint.router.clone(),
        peer,
        listener: endpoint.listener,
        activity: activity.clone(),
    };
    let conn = endpoint.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let limits = endpoint.limits;
    let mut draining = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        let wake = drop_at.unwrap_or_else(|| next_look(&activity, &limits));
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake) => {
                if drop_at.is_some() {
                    return;
                }
                let due = activity.deadline(&limits).filter(|(at, _)| *at <= Instant::now());
                if let Some((_, expiry)) = due {
                    closed(endpoint.listener, expiry.label());
                    conn.as_mut().graceful_shutdown();
                    drop_at = Some(Instant::now() + CLOSE_WITHIN);
                }
            }
        }
    }
}

/// When the watchdog looks again: at the deadline, and at least every
/// header timeout (a byte arriving while idle can only bring the deadline
/// forward to one header timeout after now).
fn next_look(activity: &Activity, limits: &Limits) -> Instant {
    let latest = Instant::now() + limits.header_read;
    activity
        .deadline(limits)
        .map_or(latest, |(at, _)| at.min(latest))
}

fn closed(listener: Listener, reason: &'static str) {
    metric::counter_add(
        "tokun_connections_closed_total",
        &[("listener", listener.label()), ("reason", reason)],
        1,
    );
}

/// HTTP/2 names the host in `:authority`, not `Host`; handlers read `Host`
/// (the console's same-origin check, its absolute URLs), so it is added.
fn with_host(request: &mut Request<Incoming>) {
    if request.headers().contains_key(header::HOST) {
        return;
    }
    let host = request
        .uri()
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Hands each request to the router with the peer address (`ConnectInfo`)
/// and the [`Listener`], counting it in flight until its body is dropped.
#[derive(Clone)]
struct RequestService {
    router: Router,
    peer: SocketAddr,
    listener: Listener,
    activity: Arc<Activity>,
}

type Responding = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Responding;

    fn call(&self, mut request: Request<Incoming>) -> Responding {
        let in_flight = self.activity.request(request.version());
        with_host(&mut request);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request.extensions_mut().insert(self.listener);
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = match tower_service::Service::call(&mut router, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}
