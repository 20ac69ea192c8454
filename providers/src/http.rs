//! The one pooled HTTP client all adapters share. It owns connection settings
//! only; it sets no total or read timeout, because streams may run for minutes
//! and the callers' watchdogs (first byte, idle, total) decide when to give up.

use std::time::Duration;

use crate::error::ProviderError;

/// The pooled HTTP client adapters share, re-exported so callers need no
/// direct `reqwest` dependency.
pub use reqwest::Client;

/// Idle pooled connections are closed after this long. Shorter than the 2–5
/// minutes most load balancers allow, so tokun rarely reuses a connection the
/// far side already dropped.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream host; enough for bursts without hoarding sockets.
const POOL_MAX_IDLE_PER_HOST: usize = 64;
/// TCP keep-alive probes notice dead peers on long, quiet streams.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Builds the shared client: rustls, `TCP_NODELAY` (tokens are small writes and
/// must not wait for Nagle), pooled keep-alive connections, no redirects (an API
/// that redirects a POST is misconfigured; following it would turn it into a GET),
/// and only a connect timeout.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("tokun/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(TCP_KEEPALIVE)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| ProviderError::Request {
            detail: format!("could not build the HTTP client: {err}"),
        })
}
