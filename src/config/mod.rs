//! Configuration, loaded in two stages: `raw` mirrors the TOML file, then
//! [`Config::from_raw`] checks it and builds domain types (`Duration`,
//! `SocketAddr`, `Price` in nanos, [`Secret`]). Every error names the field path.
//! With no file at all, [`Config::default`] runs the `echo` provider.

mod access;
mod auth;
mod listen;
mod postgres;
mod raw;
mod secret;
mod stripe;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokun_actors::Timeouts;
use tokun_actors::provider::ProviderLimits;
use tokun_actors::provider::breaker::BreakerConfig;
use tokun_storage::{Nanos, Price, StoreOptions};

pub use access::{AccessLogConfig, IpNet, TrustedProxies};
pub use auth::{AuthConfig, SmtpConfig, SmtpTls};
pub use listen::TlsConfig;
pub use postgres::PostgresConfig;
pub use raw::RawConfig;
pub use secret::{Secret, expand_env};
pub use stripe::{NANOS_PER_CENT, StripeConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub billing: BillingConfig,
    pub ledger: LedgerConfig,
    pub websocket: WebSocketConfig,
    /// Postgres snapshots; `None` runs on sled alone.
    pub postgres: Option<PostgresConfig>,
    pub metrics: MetricsConfig,
    /// Stripe top-ups; `None`: `/v1/topups` answers 501.
    pub stripe: Option<StripeConfig>,
    pub auto: AutoConfig,
    /// Console sign-in: sessions and the sign-in code mailer.
    pub auth: AuthConfig,
    /// One JSON line per HTTP request and WebSocket upgrade, in `data_dir/access/`.
    pub access_log: AccessLogConfig,
    pub retention: RetentionConfig,
}

/// How long tokun keeps what it keeps.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Ledger entries older than this may be pruned (`retention.ledger_years`,
    /// counted as 365-day years; default 7).
    pub ledger: Duration,
}

/// `model: "auto"`: the models it may pick from, in tie-break order.
#[derive(Debug, Clone)]
pub struct AutoConfig {
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Record metrics and serve `GET /metrics`.
    pub enabled: bool,
    /// `/metrics` on the API listener without the admin token (the operator
    /// listener never asks for it).
    pub public: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A second address serving only the operator endpoints, on their own thread.
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub admin_token: Option<Secret>,
    /// Where people reach tokun (links, and `Secure` cookies when https).
    pub public_url: Option<String>,
    pub shutdown_grace: Duration,
    /// Whose `X-Forwarded-For` the access log believes; empty: nobody's.
    pub trusted_proxies: TrustedProxies,
    /// `[server.tls]`: TLS on `listen` with these PEM files (see `listen.rs`).
    pub tls: Option<TlsConfig>,
    /// A plain-HTTP listener that answers 308 to the https URL.
    pub redirect_http: Option<SocketAddr>,
    /// Longest a client may take over a request's headers (and a TLS handshake).
    pub header_read_timeout: Duration,
    /// Longest a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    Echo,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    pub echo_delay: Duration,
    pub echo_reply_tokens: u32,
    /// Rate limits, concurrency cap, permit wait bound and circuit breaker.
    pub limits: ProviderLimits,
    /// `ws://` or `wss://` URL of the upstream's OpenAI Realtime endpoint.
    pub realtime_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub id: String,
    pub context_window: u32,
    pub price: Price,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub enabled: bool,
    pub demo_credit: Nanos,
    pub signup_credit: Nanos,
    pub hold_increment_tokens: u32,
}

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub max_batch: usize,
    pub max_batch_delay: Duration,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Longest a write nobody waits for (a hold) waits to join a batch.
    pub max_unflushed: Duration,
}

/// Per-socket limits of `/v1/ws` and `/v1/realtime`.
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    pub max_completions: NonZeroU32,
    pub max_frame_bytes: usize,
    pub max_messages_per_sec: NonZeroU32,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// How long one write to a client may stay blocked before the socket is dropped.
    pub stall_timeout: Duration,
    pub ticket_ttl: Duration,
}

impl Config {
    /// Reads and validates a TOML file; `${ENV}` references in secrets come from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, |name| std::env::var(name).ok())
    }

    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            path: "(file)".into(),
            message: e.message().to_string(),
        })?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|e| ConfigError::Parse {
                path: e.path().to_string(),
                message: e.inner().message().to_string(),
            })?;
        Self::from_raw(raw, &env)
    }

    pub fn from_raw(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let secret = |field: &str, value: Option<String>| -> Result<Option<Secret>, ConfigError> {
            value
                .map(|v| {
                    expand_env(&v, env)
                        .map(Secret::new)
                        .map_err(|m| invalid(field, m))
                })
                .transpose()
        };
        let server = server_config(raw.server, &secret)?;
        let stripe = stripe::stripe_config(
            raw.stripe,
            &secret,
            server.public_url.as_deref(),
            server.listen,
        )?;
        let mut providers = Vec::with_capacity(raw.providers.len().max(1));
        for (i, p) in raw.providers.into_iter().enumerate() {
            let api_key = secret(&format!("providers[{i}].api_key"), p.api_key.clone())?;
            providers.push(provider_config(i, p, api_key)?);
        }
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, m) in raw.models.into_iter().enumerate() {
            models.push(model_config(i, m)?);
        }
        if providers.is_empty() && models.is_empty() {
            providers = default_providers();
            models = default_models()?;
        }
        check_references(&providers, &models)?;
        let auto = auto_config(raw.auto, &models)?;
        let auth = auth::auth_config(raw.auth, &secret)?;
        Ok(Config {
            server,
            log: LogConfig {
                level: raw.log.level.unwrap_or_else(|| "info".into()),
                json: match raw.log.format.as_deref() {
                    None | Some("text") => false,
                    Some("json") => true,
                    Some(other) => {
                        return Err(invalid(
                            "log.format",
                            format!("`{other}` is not `text` or `json`"),
                        ));
                    }
                },
            },
            providers,
            models,
            billing: billing_config(raw.billing)?,
            ledger: LedgerConfig {
                max_batch: raw.ledger.max_batch.unwrap_or(1024).max(1) as usize,
                max_batch_delay: Duration::from_micros(
                    raw.ledger.max_batch_delay_us.unwrap_or(500),
                ),
                cache_bytes: raw
                    .ledger
                    .cache_mib
                    .map_or(StoreOptions::default().cache_capacity_bytes, |mib| {
                        mib.max(1).saturating_mul(1024 * 1024)
                    }),
                // At most 1 s: an account actor stopped for idleness reloads
                // its books from the store, which must hold its last release.
                max_unflushed: raw
                    .ledger
                    .max_unflushed_us
                    .map_or(tokun_actors::ledger::MAX_UNFLUSHED, |us| {
                        Duration::from_micros(us.min(1_000_000))
                    }),
            },
            auto,
            auth,
            metrics: MetricsConfig {
                enabled: raw.metrics.enabled.unwrap_or(true),
                public: raw.metrics.public.unwrap_or(false),
            },
            websocket: websocket_config(raw.websocket)?,
            postgres: postgres::postgres_config(raw.postgres, &secret)?,
            stripe,
            access_log: access::access_log_config(raw.access_log),
            retention: retention_config(&raw.retention)?,
        })
    }

    pub fn model(&self, id: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.id == id)
    }
}

fn retention_config(raw: &raw::RawRetention) -> Result<RetentionConfig, ConfigError> {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let years = raw.ledger_years.unwrap_or(7);
    // Bookkeeping law keeps ledgers for years; a year is the least tokun takes.
    if !(1..=100).contains(&years) {
        return Err(invalid(
            "retention.ledger_years",
            format!("{years} is not between 1 and 100"),
        ));
    }
    Ok(RetentionConfig {
        ledger: YEAR.saturating_mul(u32::try_from(years).unwrap_or(100)),
    })
}

impl Default for Config {
    fn default() -> Self {
        Self::from_raw(RawConfig::default(), &|_| None).unwrap_or_else(|_| unreachable_default())
    }
}

#[expect(
    clippy::panic,
    reason = "the built-in defaults are checked by a unit test"
)]
fn unreachable_default() -> Config {
    panic!("the built-in default configuration is invalid")
}

type SecretFn<'a> = dyn Fn(&str, Option<String>) -> Result<Option<Secret>, ConfigError> + 'a;

fn server_config(raw: raw::RawServer, secret: &SecretFn<'_>) -> Result<ServerConfig, ConfigError> {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = listen.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("`{listen}` is not an address like 127.0.0.1:8080"),
        )
    })?;
    let admin_listen = match raw.admin_listen.as_deref() {
        None => None,
        Some(addr) => Some(addr.parse().map_err(|_| {
            invalid(
                "server.admin_listen",
                format!("`{addr}` is not an address like 127.0.0.1:9090"),
            )
        })?),
    };
    let connections = listen::connections_config(&raw)?;
    let max_body_bytes = raw.max_body_bytes.unwrap_or(4 * 1024 * 1024);
    if max_body_bytes < 1024 {
        return Err(invalid("server.max_body_bytes", "must be at least 1024"));
    }
    Ok(ServerConfig {
        listen,
        admin_listen,
        data_dir: PathBuf::from(raw.data_dir.as_deref().unwrap_or("./data")),
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        admin_token: secret("server.admin_token", raw.admin_token)?,
        public_url: match raw.public_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(invalid(
                    "server.public_url",
                    "must start with http:// or https://",
                ));
            }
            url => url,
        },
        shutdown_grace: Duration::from_secs(raw.shutdown_grace_secs.unwrap_or(30)),
        trusted_proxies: access::trusted_proxies(raw.trusted_proxies)?,
        tls: connections.tls,
        redirect_http: connections.redirect_http,
        header_read_timeout: connections.header_read_timeout,
        idle_timeout: connections.idle_timeout,
    })
}

fn provider_config(
    i: usize,
    p: raw::RawProvider,
    api_key: Option<Secret>,
) -> Result<ProviderConfig, ConfigError> {
    let field = |name: &str| format!("providers[{i}].{name}");
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        "echo" => ProviderKind::Echo,
        other => {
            return Err(invalid(
                field("kind"),
                format!("`{other}` is not one of: openai, anthropic, gemini, echo"),
            ));
        }
    };
    let base_url = match (kind, p.base_url) {
        (ProviderKind::OpenAi, None) => "https://api.openai.com/v1".to_string(),
        (ProviderKind::Anthropic, None) => "https://api.anthropic.com".to_string(),
        (ProviderKind::Gemini, None) => "https://generativelanguage.googleapis.com".to_string(),
        (_, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            return Err(invalid(
                field("base_url"),
                "must start with http:// or https://",
            ));
        }
        (_, url) => url.unwrap_or_default(),
    };
    let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
    let ws_url = |url: &String| url.starts_with("ws://") || url.starts_with("wss://");
    if !p.realtime_url.as_ref().is_none_or(ws_url) {
        return Err(invalid(
            field("realtime_url"),
            "must start with ws:// or wss://",
        ));
    }
    Ok(ProviderConfig {
        name: p.name,
        kind,
        base_url,
        api_key,
        connect_timeout: ms(p.connect_timeout_ms, 2_000),
        timeouts: Timeouts {
            first_byte: ms(p.first_byte_timeout_ms, 30_000),
            idle: ms(p.idle_timeout_ms, 30_000),
            total: ms(p.total_timeout_ms, 600_000),
        },
        echo_delay: ms(p.delay_ms, 0),
        echo_reply_tokens: p.reply_tokens.unwrap_or(16),
        limits: ProviderLimits {
            rpm: p.rpm.filter(|r| *r > 0),
            tpm: p.tpm.filter(|t| *t > 0),
            max_concurrency: p.max_concurrency.filter(|c| *c > 0),
            max_wait: ms(p.max_wait_ms, 2_000),
            breaker: BreakerConfig {
                consecutive_failures: p.breaker_failures.unwrap_or(5).max(1),
                cool_down: Duration::from_secs(p.breaker_cooldown_secs.unwrap_or(10)),
                ..BreakerConfig::default()
            },
        },
        realtime_url: p.realtime_url,
    })
}

fn model_config(i: usize, m: raw::RawModel) -> Result<ModelConfig, ConfigError> {
    let usd = |name: &str, v: f64| {
        Nanos::from_usd_f64(v)
            .map_err(|e| invalid(format!("models[{i}].price.{name}"), e.to_string()))
    };
    let input = usd("input", m.price.input)?;
    let output = usd("output", m.price.output)?;
    let cached_input = m
        .price
        .cached_input
        .map(|v| usd("cached_input", v))
        .transpose()?
        .unwrap_or(input);
    let price = Price::per_million(input, output, cached_input)
        .map_err(|e| invalid(format!("models[{i}].price"), e.to_string()))?;
    if m.routes.is_empty() {
        return Err(invalid(
            format!("models[{i}].routes"),
            "a model needs at least one route",
        ));
    }
    let routes = m
        .routes
        .into_iter()
        .map(|r| RouteConfig {
            model: r.model.unwrap_or_else(|| m.id.clone()),
            provider: r.provider,
        })
        .collect();
    Ok(ModelConfig {
        id: m.id,
        context_window: m.context_window.unwrap_or(128_000),
        price,
        routes,
    })
}

fn billing_config(raw: raw::RawBilling) -> Result<BillingConfig, ConfigError> {
    let usd = |field: &str, v: Option<f64>, default: f64| {
        Nanos::from_usd_f64(v.unwrap_or(default)).map_err(|e| invalid(field, e.to_string()))
    };
    Ok(BillingConfig {
        enabled: raw.enabled.unwrap_or(true),
        demo_credit: usd("billing.demo_credit_usd", raw.demo_credit_usd, 5.0)?,
        signup_credit: usd("billing.signup_credit_usd", raw.signup_credit_usd, 0.0)?,
        hold_increment_tokens: raw.hold_increment_tokens.unwrap_or(256).max(1),
    })
}

fn websocket_config(raw: raw::RawWebSocket) -> Result<WebSocketConfig, ConfigError> {
    let positive = |field: &str, v: Option<u32>, default: u32| {
        NonZeroU32::new(v.unwrap_or(default))
            .ok_or_else(|| invalid(format!("websocket.{field}"), "must be at least 1"))
    };
    let ms = |field: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
        0 => Err(invalid(format!("websocket.{field}"), "must be at least 1")),
        ms => Ok(Duration::from_millis(ms)),
    };
    let max_frame_bytes = raw.max_frame_bytes.unwrap_or(1024 * 1024);
    if max_frame_bytes < 1024 {
        return Err(invalid(
            "websocket.max_frame_bytes",
            "must be at least 1024",
        ));
    }
    Ok(WebSocketConfig {
        max_completions: positive("max_completions", raw.max_completions, 100)?,
        max_frame_bytes: usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
        max_messages_per_sec: positive("max_messages_per_sec", raw.max_messages_per_sec, 100)?,
        ping_interval: ms("ping_interval_ms", raw.ping_interval_ms, 20_000)?,
        pong_timeout: ms("pong_timeout_ms", raw.pong_timeout_ms, 20_000)?,
        stall_timeout: ms("stall_timeout_ms", raw.stall_timeout_ms, 30_000)?,
        ticket_ttl: ms(
            "ticket_ttl_secs",
            raw.ticket_ttl_secs.map(|s| s.saturating_mul(1000)),
            60_000,
        )?,
    })
}

fn auto_config(raw: raw::RawAuto, models: &[ModelConfig]) -> Result<AutoConfig, ConfigError> {
    match raw.policy.as_deref() {
        None | Some("cheapest_fit") => {}
        Some(other) => {
            return Err(invalid(
                "auto.policy",
                format!("`{other}` is not `cheapest_fit`"),
            ));
        }
    }
    let candidates = raw
        .candidates
        .unwrap_or_else(|| models.iter().map(|m| m.id.clone()).collect());
    for (i, id) in candidates.iter().enumerate() {
        if !models.iter().any(|m| m.id == *id) {
            return Err(invalid(
                format!("auto.candidates[{i}]"),
                format!("no model is named `{id}`"),
            ));
        }
    }
    Ok(AutoConfig { candidates })
}

fn check_references(
    providers: &[ProviderConfig],
    models: &[ModelConfig],
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, p) in providers.iter().enumerate() {
        if !names.insert(p.name.as_str()) {
            return Err(invalid(
                format!("providers[{i}].name"),
                format!("`{}` is used twice", p.name),
            ));
        }
    }
    let mut ids = HashSet::new();
    for (i, m) in models.iter().enumerate() {
        if !ids.insert(m.id.as_str()) || m.id == "auto" {
            return Err(invalid(
                format!("models[{i}].id"),
                format!("`{}` is used twice or reserved", m.id),
            ));
        }
        for (j, r) in m.routes.iter().enumerate() {
            if !names.contains(r.provider.as_str()) {
                return Err(invalid(
                    format!("models[{i}].routes[{j}].provider"),
                    format!("no provider is named `{}`", r.provider),
                ));
            }
        }
    }
    Ok(())
}

fn default_providers() -> Vec<ProviderConfig> {
    let echo = |name: &str, delay_ms: u64| ProviderConfig {
        name: name.into(),
        kind: ProviderKind::Echo,
        base_url: String::new(),
        api_key: None,
        connect_timeout: Duration::from_secs(2),
        timeouts: Timeouts::default(),
        echo_delay: Duration::from_millis(delay_ms),
        echo_reply_tokens: 16,
        limits: ProviderLimits::default(),
        realtime_url: None,
    };
    vec![echo("echo", 0), echo("echo-slow", 20)]
}

fn default_models() -> Result<Vec<ModelConfig>, ConfigError> {
    let model =
        |id: &str, provider: &str, input: f64, output: f64| -> Result<ModelConfig, ConfigError> {
            let usd = |v: f64| Nanos::from_usd_f64(v).map_err(|e| invalid("models", e.to_string()));
            Ok(ModelConfig {
                id: id.into(),
                context_window: 128_000,
                price: Price::per_million(usd(input)?, usd(output)?, usd(input / 2.0)?)
                    .map_err(|e| invalid("models", e.to_string()))?,
                routes: vec![RouteConfig {
                    provider: provider.into(),
                    model: id.into(),
                }],
            })
        };
    Ok(vec![
        model("echo-mini", "echo", 0.15, 0.60)?,
        model("echo-large", "echo", 2.50, 10.00)?,
        model("echo-slow", "echo-slow", 0.15, 0.60)?,
    ])
}

#[cfg(test)]
mod tests;
