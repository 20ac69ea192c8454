//! Stripe top-ups at the edge: `POST /v1/topups` opens a Checkout Session
//! (`checkout.rs`), `GET /v1/payments` lists an account's payments, and
//! `POST /stripe/webhook` (`webhook.rs`) verifies Stripe's signature
//! (`signature.rs`), reads the event (`event.rs`) and hands what it says to
//! the account's actor, which credits or debits exactly once. Orphans
//! (money tokun cannot match to a live account) are recorded here for
//! operators.
//!
//! Does not own balances (the account actor does) or the exactly-once rules
//! (the actor checks, the ledger writer refuses; see
//! `tokun_actors::account::payment` and `tokun_storage`'s payment rules).

pub mod checkout;
pub mod event;
pub mod signature;
pub mod webhook;

use std::time::Duration;

use serde_json::{Value, json};
use tokun_storage::{PaymentRecord, PaymentStatus};

use crate::config::StripeConfig;

/// How long one call to Stripe's API may take.
const STRIPE_TIMEOUT: Duration = Duration::from_secs(15);

/// The configured Stripe: its API client and settings. Cheap to clone.
#[derive(Clone)]
pub struct Stripe {
    client: stripe::Client,
    config: StripeConfig,
}

impl Stripe {
    /// A client for `config.api_base` with the secret key. Does no I/O.
    pub fn new(config: StripeConfig) -> Result<Stripe, stripe::StripeError> {
        let client = stripe::ClientBuilder::new(config.secret_key.expose())
            .url(config.api_base.clone())
            .timeout(STRIPE_TIMEOUT)
            .app_info("tokun", Some(env!("CARGO_PKG_VERSION").to_owned()), None)
            .build()?;
        Ok(Stripe { client, config })
    }

    pub fn config(&self) -> &StripeConfig {
        &self.config
    }

    pub(crate) fn client(&self) -> &stripe::Client {
        &self.client
    }
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the secret key; only the (redacting) config prints.
        f.debug_struct("Stripe")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A payment as the API shows it (to its account and to operators).
pub fn payment_json(payment: &PaymentRecord) -> Value {
    json!({
        "id": payment.session_id,
        "object": "payment",
        "account": payment.account.map(|a| a.to_string()),
        "status": payment.status.as_str(),
        "currency": payment.currency,
        "amount_usd": payment.amount.to_string(),
        "paid_usd": payment.paid_amount.to_string(),
        "refunded_usd": payment.refunded_amount.to_string(),
        "debited_usd": payment.debited_amount.to_string(),
        "created": payment.created_ms / 1000,
        "updated": payment.updated_ms / 1000,
        "note": payment.note,
    })
}

/// Parses a `?status=` filter.
pub fn parse_status(name: &str) -> Option<PaymentStatus> {
    PaymentStatus::parse(name)
}
