//! The parts of Stripe's webhook events tokun reads, parsed leniently (only
//! the fields it needs; everything else is ignored), so an API-version
//! difference in a field tokun does not use never rejects an event. The
//! event type names come from `async-stripe-webhook`'s `EventType`.

use std::collections::HashMap;
use std::str::FromStr;

use serde::Deserialize;
use stripe_webhook::EventType;
use tokun_storage::Nanos;

use crate::config::NANOS_PER_CENT;

/// A webhook event: `{"id", "type", "data": {"object": …}}`.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// What tokun does with an event, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// `checkout.session.completed`: credit if `payment_status` is `paid`.
    Completed,
    /// `checkout.session.async_payment_succeeded`: credit.
    AsyncSucceeded,
    /// `checkout.session.async_payment_failed`.
    AsyncFailed,
    /// `checkout.session.expired`.
    Expired,
    /// `charge.refunded`.
    Refunded,
    /// Any other type: acknowledged and ignored.
    Ignored,
}

/// A Checkout Session as events carry it.
#[derive(Debug, Deserialize)]
pub struct Session {
    pub id: String,
    #[serde(default)]
    pub payment_status: Option<String>,
    /// Cents actually charged, after discounts.
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<HashMap<String, serde_json::Value>>,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
}

/// A charge as `charge.refunded` carries it.
#[derive(Debug, Deserialize)]
pub struct Charge {
    pub id: String,
    /// Cents refunded so far, all refunds of this charge together.
    pub amount_refunded: i64,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
}

/// An id, or the object it names when the event expanded it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object { id: String },
}

impl Event {
    pub fn handling(&self) -> Handling {
        let Ok(kind) = EventType::from_str(&self.kind);
        match kind {
            EventType::CheckoutSessionCompleted => Handling::Completed,
            EventType::CheckoutSessionAsyncPaymentSucceeded => Handling::AsyncSucceeded,
            EventType::CheckoutSessionAsyncPaymentFailed => Handling::AsyncFailed,
            EventType::CheckoutSessionExpired => Handling::Expired,
            EventType::ChargeRefunded => Handling::Refunded,
            _ => Handling::Ignored,
        }
    }

    pub fn session(&self) -> Result<Session, serde_json::Error> {
        Session::deserialize(&self.data.object)
    }

    pub fn charge(&self) -> Result<Charge, serde_json::Error> {
        Charge::deserialize(&self.data.object)
    }
}

impl Session {
    /// A metadata value tokun set, if it is a string.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key)?.as_str()
    }
}

impl Expandable {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

/// Stripe's integer cents as nanos; `None` on overflow.
pub fn cents_to_nanos(cents: i64) -> Option<Nanos> {
    cents.checked_mul(NANOS_PER_CENT).map(Nanos::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: serde_json::Value) -> Event {
        let body = serde_json::json!({"id": "evt_1", "type": kind, "data": {"object": object}});
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn types_map_to_handlings() {
        let cases = [
            ("checkout.session.completed", Handling::Completed),
            (
                "checkout.session.async_payment_succeeded",
                Handling::AsyncSucceeded,
            ),
            (
                "checkout.session.async_payment_failed",
                Handling::AsyncFailed,
            ),
            ("checkout.session.expired", Handling::Expired),
            ("charge.refunded", Handling::Refunded),
            ("customer.created", Handling::Ignored),
            ("made.up.type", Handling::Ignored),
        ];
        for (kind, handling) in cases {
            assert_eq!(
                event(kind, serde_json::json!({})).handling(),
                handling,
                "{kind}"
            );
        }
    }

    #[test]
    fn reads_only_what_it_needs() {
        let session = event(
            "checkout.session.completed",
            serde_json::json!({"id": "cs_1", "amount_total": 1000, "currency": "usd",
                "metadata": {"tokun_account": "acct_1", "n": 3}, "payment_intent": {"id": "pi_1"},
                "unknown_field": [1, 2]}),
        )
        .session()
        .unwrap();
        assert_eq!(session.metadata("tokun_account"), Some("acct_1"));
        assert_eq!(session.metadata("n"), None);
        assert_eq!(
            session.payment_intent.as_ref().map(Expandable::id),
            Some("pi_1")
        );
        let bare = event(
            "checkout.session.completed",
            serde_json::json!({"id": "cs_2", "metadata": null}),
        );
        let bare = bare.session().unwrap();
        assert_eq!((bare.amount_total, bare.metadata("x")), (None, None));
        assert!(
            event("charge.refunded", serde_json::json!({"id": "ch_1"}))
                .charge()
                .is_err()
        );
        assert_eq!(cents_to_nanos(1_005), Some(Nanos::new(10_050_000_000)));
        assert_eq!(cents_to_nanos(i64::MAX), None);
    }
}
