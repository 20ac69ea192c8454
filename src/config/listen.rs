//! How the listeners treat connections: `[server.tls]` (checked here by
//! loading the files once, so a bad certificate stops `tokun serve` with the
//! field named, not the first handshake), `server.redirect_http` and the
//! header-read and idle timeouts. Serving them is `crate::listener`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, ServerConfig, invalid, raw};

/// `[server.tls]`: the PEM files TLS is served with. They are read again
/// whenever they change (see `crate::listener::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
}

/// The connection settings of `[server]`, checked.
pub(super) struct Connections {
    pub tls: Option<TlsConfig>,
    pub redirect_http: Option<SocketAddr>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ServerConfig {
    /// Whether people reach tokun over https: TLS here, or a `public_url`
    /// that says so (TLS ended by a proxy in front). Session cookies are
    /// `Secure` then.
    pub fn https(&self) -> bool {
        self.tls.is_some()
            || self
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://"))
    }
}

pub(super) fn connections_config(raw: &raw::RawServer) -> Result<Connections, ConfigError> {
    let tls = raw
        .tls
        .as_ref()
        .map(|tls| TlsConfig {
            cert_file: PathBuf::from(&tls.cert_file),
            key_file: PathBuf::from(&tls.key_file),
        })
        .map(|tls| {
            crate::listener::tls::load(&tls)
                .map(|_| tls)
                .map_err(|error| invalid(error.field(), error.to_string()))
        })
        .transpose()?;
    let redirect_http = match raw.redirect_http.as_deref() {
        None => None,
        Some(_) if tls.is_none() => {
            return Err(invalid(
                "server.redirect_http",
                "redirects to https, so it needs [server.tls]",
            ));
        }
        Some(addr) => Some(addr.parse().map_err(|_| {
            invalid(
                "server.redirect_http",
                format!("`{addr}` is not an address like 0.0.0.0:80"),
            )
        })?),
    };
    Ok(Connections {
        tls,
        redirect_http,
        header_read_timeout: seconds(
            "server.header_read_timeout_secs",
            raw.header_read_timeout_secs,
            10,
        )?,
        idle_timeout: seconds("server.idle_timeout_secs", raw.idle_timeout_secs, 60)?,
    })
}

/// Whole seconds, at least one.
fn seconds(field: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(field, "must be at least 1")),
        secs => Ok(Duration::from_secs(secs)),
    }
}
