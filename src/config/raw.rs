//! Stage one of config loading: the TOML file as written, with serde defaults
//! and `deny_unknown_fields`. Nothing here is validated; see `super::Config`.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub billing: RawBilling,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub websocket: RawWebSocket,
    /// Snapshots to Postgres; absent: sled only.
    pub postgres: Option<RawPostgres>,
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Stripe top-ups; absent: off.
    pub stripe: Option<RawStripe>,
    #[serde(default)]
    pub auto: RawAuto,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub retention: RawRetention,
}

/// How long tokun keeps what it keeps (issue 20).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Ledger entries older than this many years may be pruned into the
    /// ledger checkpoint; absent: 7.
    pub ledger_years: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub session_days: Option<u64>,
    #[serde(default)]
    pub admin_emails: Vec<String>,
    /// Sign-in codes by SMTP; absent: written to the log.
    pub smtp: Option<RawSmtp>,
    /// OpenID Connect sign-in; absent: off.
    pub oidc: Option<RawOidc>,
    #[serde(default)]
    pub passkeys: RawPasskeys,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPasskeys {
    pub enabled: Option<bool>,
    pub rp_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub host: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub tls: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuto {
    pub candidates: Option<Vec<String>>,
    pub policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    /// `/metrics` on the API listener without the admin token.
    pub public: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub admin_token: Option<String>,
    pub public_url: Option<String>,
    pub shutdown_grace_secs: Option<u64>,
    /// Peers (IPs or CIDR blocks) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// TLS on `listen`; absent: plain HTTP.
    pub tls: Option<RawTls>,
    /// A plain-HTTP address answering 308 to the https URL.
    pub redirect_http: Option<String>,
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub max_wait_ms: Option<u64>,
    pub breaker_failures: Option<u32>,
    pub breaker_cooldown_secs: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    /// echo only: pause between streamed tokens.
    pub delay_ms: Option<u64>,
    /// echo only: tokens in a reply when the request sets no `max_tokens`.
    pub reply_tokens: Option<u32>,
    /// The upstream's OpenAI Realtime WebSocket URL (`ws://` or `wss://`).
    pub realtime_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: String,
    pub context_window: Option<u32>,
    pub price: RawPrice,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub provider: String,
    pub model: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBilling {
    pub enabled: Option<bool>,
    pub demo_credit_usd: Option<f64>,
    pub signup_credit_usd: Option<f64>,
    pub hold_increment_tokens: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub max_batch: Option<u32>,
    pub max_batch_delay_us: Option<u64>,
    pub cache_mib: Option<u64>,
    pub max_unflushed_us: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub max_completions: Option<u32>,
    pub max_frame_bytes: Option<u64>,
    pub max_messages_per_sec: Option<u32>,
    pub ping_interval_ms: Option<u64>,
    pub pong_timeout_ms: Option<u64>,
    pub stall_timeout_ms: Option<u64>,
    pub ticket_ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub url: String,
    pub snapshot_interval_secs: Option<u64>,
    pub schema: Option<String>,
    pub max_rows_per_sec: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStripe {
    pub secret_key: Option<String>,
    pub webhook_secret: Option<String>,
    pub api_base: Option<String>,
    pub currency: Option<String>,
    pub min_topup_usd: Option<f64>,
    pub max_topup_usd: Option<f64>,
    pub success_url: Option<String>,
    pub cancel_url: Option<String>,
}
