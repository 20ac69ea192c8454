//! The `[stripe]` section: keys (secrets, `${ENV}` expanded, never
//! printed), the API base (tests point it at a fake Stripe), the currency,
//! top-up bounds in whole cents, and the Checkout return URLs. Without a
//! `[stripe]` section top-ups are off (`/v1/topups` answers 501).

use std::net::SocketAddr;

use tokun_storage::Nanos;

use super::raw::RawStripe;
use super::{ConfigError, Secret, SecretFn, invalid};

/// Stripe's own API.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com/";

/// Nanos in one US cent: Stripe amounts are integer cents.
pub const NANOS_PER_CENT: i64 = 10_000_000;

/// Stripe, when configured.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `sk_live_…` / `sk_test_…` (or a restricted `rk_…` key).
    pub secret_key: Secret,
    /// `whsec_…`: signs the webhook events Stripe sends.
    pub webhook_secret: Secret,
    /// Ends with `/`; the client appends `v1/…`.
    pub api_base: String,
    /// Lowercase ISO code; balances are USD, so only `usd`.
    pub currency: String,
    /// Inclusive bounds of one top-up, whole cents.
    pub min_topup: Nanos,
    pub max_topup: Nanos,
    /// Where Checkout sends the customer back. `{CHECKOUT_SESSION_ID}` is
    /// filled in by Stripe.
    pub success_url: String,
    pub cancel_url: String,
}

pub(super) fn stripe_config(
    raw: Option<RawStripe>,
    secret: &SecretFn<'_>,
    public_url: Option<&str>,
    listen: SocketAddr,
) -> Result<Option<StripeConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let required = |field: &str, value: Option<Secret>| {
        value.filter(|v| !v.expose().is_empty()).ok_or_else(|| {
            invalid(
                field,
                "is required in [stripe] (see docs/stripe.md); remove the section to turn top-ups off",
            )
        })
    };
    let secret_key = required(
        "stripe.secret_key",
        secret("stripe.secret_key", raw.secret_key)?,
    )?;
    let webhook_secret = required(
        "stripe.webhook_secret",
        secret("stripe.webhook_secret", raw.webhook_secret)?,
    )?;
    // Stripe's client sends the key in a header: visible ASCII only.
    if !secret_key.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "stripe.secret_key",
            "must be visible ASCII without spaces",
        ));
    }
    let api_base = match raw.api_base {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            return Err(invalid(
                "stripe.api_base",
                "must start with http:// or https://",
            ));
        }
        Some(url) if url.ends_with('/') => url,
        Some(url) => format!("{url}/"),
        None => STRIPE_API_BASE.to_owned(),
    };
    if api_base.parse::<axum::http::Uri>().is_err() {
        return Err(invalid("stripe.api_base", "is not a URL"));
    }
    let currency = raw.currency.unwrap_or_else(|| "usd".into()).to_lowercase();
    if currency != "usd" {
        return Err(invalid(
            "stripe.currency",
            format!("`{currency}` is not supported: balances are kept in USD, so only `usd`"),
        ));
    }
    let min_topup = cents("stripe.min_topup_usd", raw.min_topup_usd, 5.0)?;
    let max_topup = cents("stripe.max_topup_usd", raw.max_topup_usd, 1000.0)?;
    // Stripe charges at least $0.50.
    if min_topup.get() < 50 * NANOS_PER_CENT {
        return Err(invalid("stripe.min_topup_usd", "must be at least 0.50"));
    }
    if max_topup < min_topup {
        return Err(invalid(
            "stripe.max_topup_usd",
            "must not be less than min_topup_usd",
        ));
    }
    let base = public_url
        .map(|url| url.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://{listen}"));
    let url = |field: &str, value: Option<String>, default: String| match value {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            Err(invalid(field, "must start with http:// or https://"))
        }
        Some(url) => Ok(url),
        None => Ok(default),
    };
    Ok(Some(StripeConfig {
        secret_key,
        webhook_secret,
        api_base,
        currency,
        min_topup,
        max_topup,
        success_url: url(
            "stripe.success_url",
            raw.success_url,
            format!("{base}/?topup=success&session_id={{CHECKOUT_SESSION_ID}}"),
        )?,
        cancel_url: url(
            "stripe.cancel_url",
            raw.cancel_url,
            format!("{base}/?topup=cancelled"),
        )?,
    }))
}

/// A USD amount from the file that must be a positive whole number of cents.
fn cents(field: &str, value: Option<f64>, default: f64) -> Result<Nanos, ConfigError> {
    let amount =
        Nanos::from_usd_f64(value.unwrap_or(default)).map_err(|e| invalid(field, e.to_string()))?;
    if amount.get() % NANOS_PER_CENT != 0 {
        return Err(invalid(field, "must be a whole number of cents"));
    }
    Ok(amount)
}
