//! TLS termination with rustls (the `ring` provider, as reqwest uses):
//! loading a PEM chain and key (every failure names its `[server.tls]`
//! field), the certificate store every handshake asks, and the task that
//! swaps the store's certificate when the files change (polled every
//! [`POLL_EVERY`]) or on SIGHUP. A handshake takes the `Arc` current when it
//! starts, so open connections keep the certificate they were made with.
//! It does not accept connections: that is `super`'s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, InconsistentKeys, ServerConfig};
use tokun_actors::metric;

use crate::config::TlsConfig;

/// How often the certificate files are looked at for a change.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

const CERT_FIELD: &str = "server.tls.cert_file";
const KEY_FIELD: &str = "server.tls.key_file";

/// Why a certificate and key could not be used. Never carries file contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate ({detail})", path.display())]
    NoCertificate { path: PathBuf, detail: String },
    #[error("{} holds no PEM private key ({detail})", path.display())]
    NoKey { path: PathBuf, detail: String },
    #[error("the certificate in {} cannot be used: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("the key in {} cannot sign (RSA, ECDSA or Ed25519 expected): {detail}", path.display())]
    UnsupportedKey { path: PathBuf, detail: String },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsFileError {
    /// The config field to blame.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Read { field, .. } => field,
            Self::NoCertificate { .. } | Self::BadCertificate { .. } | Self::Rustls(_) => {
                CERT_FIELD
            }
            Self::NoKey { .. } | Self::UnsupportedKey { .. } | Self::KeyMismatch { .. } => {
                KEY_FIELD
            }
        }
    }
}

/// The certificate handshakes are answered with; swapped on reload.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads `files` now.
    pub fn open(files: &TlsConfig) -> Result<Arc<CertStore>, TlsFileError> {
        let key = load(files)?;
        publish_expiry(&key);
        Ok(Arc::new(CertStore {
            current: RwLock::new(key),
        }))
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut current) => *current = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The acceptor of the API listener: TLS 1.2 and 1.3, HTTP/2 or HTTP/1.1 by ALPN.
pub fn acceptor(store: Arc<CertStore>) -> Result<TlsAcceptor, TlsFileError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads and checks a chain and its key: at least one certificate, a key
/// rustls can sign with, and the key matching the leaf.
pub fn load(files: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsFileError> {
    let cert_pem = read(CERT_FIELD, &files.cert_file)?;
    let key_pem = read(KEY_FIELD, &files.key_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsFileError::NoCertificate {
            path: files.cert_file.clone(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: files.cert_file.clone(),
            detail: "no CERTIFICATE section".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsFileError::NoKey {
        path: files.key_file.clone(),
        detail: error.to_string(),
    })?;
    match CertifiedKey::from_der(chain, key, &provider()) {
        Ok(certified) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsFileError::KeyMismatch {
                key: files.key_file.clone(),
                cert: files.cert_file.clone(),
            })
        }
        Err(rustls::Error::InvalidCertificate(error)) => Err(TlsFileError::BadCertificate {
            path: files.cert_file.clone(),
            detail: error.to_string(),
        }),
        Err(error) => Err(TlsFileError::UnsupportedKey {
            path: files.key_file.clone(),
            detail: error.to_string(),
        }),
    }
}

/// Keeps `store` on the files' current certificate: reloads when either
/// file's modification time or length changes, or on SIGHUP. A file that
/// does not load (caught half-written, say) leaves the old certificate in
/// place with a warning; the next change tries again. Runs until aborted.
pub async fn keep_current(store: Arc<CertStore>, files: TlsConfig) {
    let mut seen = stamp(&files).await;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangups = Hangups::new();
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => false,
            () = hangups.next() => true,
        };
        let now = stamp(&files).await;
        if !asked && now == seen {
            continue;
        }
        seen = now;
        let loading = files.clone();
        match tokio::task::spawn_blocking(move || load(&loading)).await {
            Ok(Ok(key)) => {
                publish_expiry(&key);
                store.replace(key);
                metric::counter_add("tokun_tls_reloads_total", &[("result", "ok")], 1);
                tracing::info!(signal = asked, "TLS certificate reloaded");
            }
            Ok(Err(error)) => {
                metric::counter_add("tokun_tls_reloads_total", &[("result", "failed")], 1);
                tracing::warn!(field = error.field(), %error, "TLS certificate not reloaded; keeping the current one");
            }
            Err(error) => tracing::warn!(%error, "the TLS certificate reload panicked"),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

/// What a reload compares: each file's modification time and length.
type Stamp = [Option<(SystemTime, u64)>; 2];

async fn stamp(files: &TlsConfig) -> Stamp {
    let of = |path: &Path| {
        let path = path.to_owned();
        async move {
            let meta = tokio::fs::metadata(path).await.ok()?;
            Some((meta.modified().ok()?, meta.len()))
        }
    };
    [of(&files.cert_file).await, of(&files.key_file).await]
}

/// The leaf's expiry as a gauge, so an alert can fire before it lapses.
fn publish_expiry(key: &CertifiedKey) {
    let Some(leaf) = key.cert.first() else {
        return;
    };
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) {
        let expiry = parsed.validity().not_after.timestamp();
        metric::gauge_set(
            "tokun_tls_certificate_expiry_timestamp_seconds",
            &[],
            expiry as f64,
        );
    }
}

/// SIGHUP as a stream of wake-ups; never fires where it cannot be listened to.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP"))
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}
