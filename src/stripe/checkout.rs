//! `POST /v1/topups` and `GET /v1/payments`, authenticated by an API key.
//!
//! A top-up opens a Stripe Checkout Session (mode `payment`, one line item
//! of `price_data` in USD cents, `client_reference_id` = the account,
//! metadata with the account and amount) and records it `open`
//! ([`open_topup`], which the console's top-up form calls too). Nothing is
//! credited here: only Stripe's webhook, with the amount Stripe reports
//! paid, credits an account.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    ProductData,
};
use tokun_storage::{AccountId, Nanos, PaymentRecord, WriteOp};

use super::{Stripe, payment_json};
use crate::api::{parse_json, read_json_body};
use crate::auth::Caller;
use crate::config::NANOS_PER_CENT;
use crate::error::ApiError;
use crate::state::AppState;
use tokun_providers::clock::unix_ms as now_ms;

const TOPUP_BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopupRequest {
    /// A JSON number or a decimal string, read from its exact text.
    amount_usd: Box<RawValue>,
}

pub async fn create_topup(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let stripe = configured(&state)?;
    let bytes = read_json_body(&headers, body, TOPUP_BODY_LIMIT).await?;
    let request: TopupRequest = parse_json(&bytes)?;
    let amount = topup_amount(request.amount_usd.get(), stripe)?;
    let topup = open_topup(&state, caller.account, amount, None).await?;
    Ok(Json(json!({
        "id": topup.id,
        "object": "checkout.session",
        "url": topup.url,
        "amount_usd": amount.to_string(),
        "currency": stripe.config().currency,
        "status": "open",
    })))
}

/// Where Checkout sends the customer back, when not the configured
/// `stripe.success_url` and `stripe.cancel_url` (the console's own pages).
#[derive(Clone, Debug)]
pub struct ReturnUrls {
    /// Carries `{CHECKOUT_SESSION_ID}`, which Stripe fills in.
    pub success: String,
    pub cancel: String,
}

/// A Checkout Session opened and recorded `open`: where to send the customer.
#[derive(Clone, Debug)]
pub struct OpenedTopup {
    pub id: String,
    pub url: String,
}

/// Why a typed amount is not a top-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    NotDecimal,
    NotWholeCents,
    OutOfRange { min: Nanos, max: Nanos },
}

/// Opens a top-up of `amount` for `account`: the Checkout Session at
/// Stripe, then its `open` payment record in the ledger. What
/// `POST /v1/topups` and the console's top-up form both do; `amount` is
/// already checked ([`check_amount`]).
pub async fn open_topup(
    state: &AppState,
    account: AccountId,
    amount: Nanos,
    returns: Option<&ReturnUrls>,
) -> Result<OpenedTopup, ApiError> {
    let stripe = configured(state)?;
    let session = open_session(stripe, account, amount, returns).await?;
    let url = session.url.clone().ok_or_else(|| ApiError::Unavailable {
        message: "Stripe created a Checkout Session without a URL; nothing was charged.".into(),
    })?;
    let id = session.id.as_str().to_owned();
    let record = PaymentRecord::open(&id, account, amount, &stripe.config().currency, now_ms());
    match state
        .services()
        .ledger
        .append(vec![WriteOp::PutPayment(record)])
        .await
    {
        Ok(_) => {}
        // The webhook got there first (it records the session itself).
        Err(error) if error.is_refusal() => {
            tracing::info!(session = %id, %error, "checkout session already recorded");
        }
        Err(_) => {
            return Err(ApiError::Unavailable {
                message:
                    "The ledger is unavailable; the Checkout Session was not recorded. Retry later."
                        .into(),
            });
        }
    }
    Ok(OpenedTopup { id, url })
}

/// A top-up amount from its exact decimal text (`10`, `10.5`): positive,
/// whole cents, within the configured bounds. Never a float.
pub fn check_amount(text: &str, stripe: &Stripe) -> Result<Nanos, AmountError> {
    let amount = Nanos::parse_usd(text.trim()).map_err(|_| AmountError::NotDecimal)?;
    if amount.get() % NANOS_PER_CENT != 0 {
        return Err(AmountError::NotWholeCents);
    }
    let (min, max) = (stripe.config().min_topup, stripe.config().max_topup);
    if amount < min || amount > max {
        return Err(AmountError::OutOfRange { min, max });
    }
    Ok(amount)
}

pub async fn list_payments(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let payments = state
        .services()
        .store
        .payments_for(caller.account)
        .map_err(|_| ApiError::Internal)?;
    let data: Vec<Value> = payments.iter().map(payment_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub(super) fn configured(state: &AppState) -> Result<&Stripe, ApiError> {
    state.stripe().ok_or_else(|| ApiError::NotImplemented {
        message: "Stripe top-ups are not configured on this server: the operator sets \
                  [stripe] secret_key and webhook_secret (see docs/stripe.md)."
            .into(),
    })
}

/// The amount from its exact JSON text (`10`, `10.5`, `"10.50"`): a
/// number or a decimal string, then [`check_amount`].
fn topup_amount(raw: &str, stripe: &Stripe) -> Result<Nanos, ApiError> {
    let bad = |message: String| ApiError::bad_request(message, Some("amount_usd"));
    let text = match raw.strip_prefix('"') {
        Some(_) => serde_json::from_str::<String>(raw)
            .map_err(|_| bad("`amount_usd` must be a number of dollars.".into()))?,
        None => raw.to_owned(),
    };
    check_amount(&text, stripe).map_err(|error| match error {
        AmountError::NotDecimal => bad(format!(
            "`amount_usd` must be a decimal number of dollars like 10 or 10.50, not {raw}."
        )),
        AmountError::NotWholeCents => bad("`amount_usd` must be a whole number of cents.".into()),
        AmountError::OutOfRange { min, max } => {
            bad(format!("`amount_usd` must be between {min} and {max}."))
        }
    })
}

async fn open_session(
    stripe: &Stripe,
    account: AccountId,
    amount: Nanos,
    returns: Option<&ReturnUrls>,
) -> Result<stripe_checkout::CheckoutSession, ApiError> {
    let config = stripe.config();
    let cents = amount.get() / NANOS_PER_CENT;
    let currency = config
        .currency
        .parse::<stripe_types::Currency>()
        .map_err(|_| ApiError::Internal)?;
    let mut price = CreateCheckoutSessionLineItemsPriceData::new(currency);
    price.unit_amount = Some(cents);
    price.product_data = Some(ProductData::new(format!("tokun credits (${amount})")));
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price_data = Some(price);
    item.quantity = Some(1);
    let metadata = HashMap::from([
        ("tokun_account".to_owned(), account.to_string()),
        ("tokun_amount_usd".to_owned(), amount.to_string()),
        ("tokun_amount_cents".to_owned(), cents.to_string()),
    ]);
    let request = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .line_items(vec![item])
        .client_reference_id(account.to_string())
        .metadata(metadata)
        .success_url(returns.map_or(&config.success_url, |r| &r.success))
        .cancel_url(returns.map_or(&config.cancel_url, |r| &r.cancel));
    request.send(stripe.client()).await.map_err(|error| {
        // The error may quote Stripe's answer but never the key (it is
        // a sensitive header value the client does not print).
        tracing::warn!(%account, error = %error, "Stripe refused to create a Checkout Session");
        ApiError::Unavailable {
            message:
                "Stripe could not create the Checkout Session; nothing was charged. Retry later."
                    .into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn stripe() -> Stripe {
        let text = "[stripe]\nsecret_key = \"sk_test\"\nwebhook_secret = \"whsec\"\nmax_topup_usd = 100.0\n";
        let config = Config::parse(text, |_| None).unwrap();
        Stripe::new(config.stripe.unwrap()).unwrap()
    }

    #[test]
    fn amounts_come_from_their_exact_text() {
        let stripe = stripe();
        let ok = |raw: &str| topup_amount(raw, &stripe).map(Nanos::get).ok();
        assert_eq!(ok("10"), Some(10_000_000_000));
        assert_eq!(ok("10.5"), Some(10_500_000_000));
        assert_eq!(ok("\"10.50\""), Some(10_500_000_000));
        assert_eq!(ok("5"), Some(5_000_000_000));
        assert_eq!(ok("100.00"), Some(100_000_000_000));
        // A float would round these to whole cents; the text does not.
        for bad in [
            "10.001",
            "10.0000000000000001",
            "\"10.005\"",
            "1e1",
            "-10",
            "4.99",
            "100.01",
            "\"ten\"",
            "null",
            "true",
            "[10]",
            "\"\"",
        ] {
            assert!(topup_amount(bad, &stripe).is_err(), "{bad} accepted");
        }
    }
}
