//! `POST /stripe/webhook`: Stripe's events, verified before anything else.
//!
//! The raw body is read (at most `WEBHOOK_BODY_LIMIT`, else 413), its
//! `Stripe-Signature` checked (unsigned, forged, altered or stale: 400,
//! nothing changes), and only then parsed. Paid sessions and refunds go to
//! the account's actor, which applies them exactly once; money tokun cannot
//! match to a live account (unknown or deleted account, no account in the
//! session, another currency, a refund of a charge tokun never credited) is
//! recorded `orphaned` for an operator and answered 200, so Stripe stops
//! retrying. Unknown event types: 200, ignored. A temporary failure answers
//! 503, so Stripe retries; the retry finds what was already done.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokun_actors::account::{PaidSession, PaymentCommand, PaymentOutcome, StripeRefund};
use tokun_storage::{AccountId, Nanos, PaymentRecord, PaymentStatus, WriteOp};

use super::Stripe;
use super::checkout::configured;
use super::event::{Event, Handling, Session, cents_to_nanos};
use super::signature::{self, TOLERANCE};
use crate::error::ApiError;
use crate::state::AppState;
use tokun_providers::clock::unix_ms as now_ms;

/// Stripe's events are a few KiB; anything much larger is not one.
pub const WEBHOOK_BODY_LIMIT: usize = 64 * 1024;

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let stripe = configured(&state)?;
    let payload = crate::api::read_body(&headers, body, WEBHOOK_BODY_LIMIT).await?;
    let header = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok());
    let now_secs = i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
    let secret = stripe.config().webhook_secret.expose();
    signature::verify(header, &payload, secret, now_secs, TOLERANCE).map_err(|error| {
        ApiError::BadRequest {
            message: format!("Webhook signature refused: {error}."),
            param: None,
            code: Some("invalid_signature"),
        }
    })?;
    let event: Event = serde_json::from_slice(&payload).map_err(|_| ApiError::BadRequest {
        message: "The webhook body is not a Stripe event.".into(),
        param: None,
        code: Some("invalid_event"),
    })?;
    let outcome = dispatch(&state, stripe, &event).await?;
    tracing::info!(event = %event.id, kind = %event.kind, outcome = outcome.label(), "stripe webhook");
    Ok(Json(json!({"received": true, "outcome": outcome.label()})))
}

/// What the webhook did with an event (the response says it, logs too).
enum Done {
    Applied(PaymentOutcome),
    Orphaned,
    Duplicate,
    Ignored,
}

impl Done {
    fn label(&self) -> &'static str {
        match self {
            Done::Applied(PaymentOutcome::Credited { .. }) => "credited",
            Done::Applied(PaymentOutcome::Refunded { .. }) => "refunded",
            Done::Applied(PaymentOutcome::Marked(status)) => status.as_str(),
            Done::Applied(PaymentOutcome::Duplicate) | Done::Duplicate => "duplicate",
            Done::Applied(PaymentOutcome::Orphaned { .. }) | Done::Orphaned => "orphaned",
            Done::Applied(PaymentOutcome::Ignored { .. }) | Done::Ignored => "ignored",
        }
    }
}

async fn dispatch(state: &AppState, stripe: &Stripe, event: &Event) -> Result<Done, ApiError> {
    let malformed = |what: &str| ApiError::BadRequest {
        message: format!("The {what} in this `{}` event does not parse.", event.kind),
        param: None,
        code: Some("invalid_event"),
    };
    let handling = event.handling();
    match handling {
        Handling::Ignored => Ok(Done::Ignored),
        Handling::Refunded => {
            let charge = event.charge().map_err(|_| malformed("charge"))?;
            refund(state, event, charge).await
        }
        Handling::Completed
        | Handling::AsyncSucceeded
        | Handling::AsyncFailed
        | Handling::Expired => {
            let session = event.session().map_err(|_| malformed("Checkout Session"))?;
            let paid = session.payment_status.as_deref() == Some("paid");
            match handling {
                Handling::Completed if !paid => Ok(Done::Ignored),
                Handling::AsyncFailed => close(state, event, &session, PaymentStatus::Failed).await,
                Handling::Expired => close(state, event, &session, PaymentStatus::Expired).await,
                _ => credit(state, stripe, event, &session).await,
            }
        }
    }
}

/// A paid session: the account's actor credits what Stripe reports paid.
async fn credit(
    state: &AppState,
    stripe: &Stripe,
    event: &Event,
    session: &Session,
) -> Result<Done, ApiError> {
    let reported = reported_amount(session);
    // Stripe always names the currency of a Checkout Session; an absent one
    // is recorded as empty, never guessed.
    let currency = session.currency.clone().unwrap_or_default().to_lowercase();
    let target = match session_account(state, session)? {
        Ok(account) => account,
        Err(reason) => return orphan(state, event, session, reported, reason).await,
    };
    let amount = match reported {
        Some(amount) if amount.get() > 0 => amount,
        _ => {
            return orphan(
                state,
                event,
                session,
                reported,
                "Stripe reported no amount paid".into(),
            )
            .await;
        }
    };
    if currency != stripe.config().currency {
        let reason = format!(
            "paid in `{currency}`, tokun takes `{}`",
            stripe.config().currency
        );
        return orphan(state, event, session, reported, reason).await;
    }
    let command = PaymentCommand::Credit(PaidSession {
        session: session.id.clone(),
        event: event.id.clone(),
        amount,
        currency,
        payment_intent: session.payment_intent.as_ref().map(|pi| pi.id().to_owned()),
    });
    apply(state, target, command).await
}

async fn close(
    state: &AppState,
    event: &Event,
    session: &Session,
    status: PaymentStatus,
) -> Result<Done, ApiError> {
    let amount = reported_amount(session);
    let target = match session_account(state, session)? {
        Ok(account) => account,
        Err(reason) => return orphan(state, event, session, amount, reason).await,
    };
    let command = PaymentCommand::Close {
        session: session.id.clone(),
        event: event.id.clone(),
        status,
        amount: amount.unwrap_or(Nanos::ZERO),
        currency: session.currency.clone().unwrap_or_default().to_lowercase(),
    };
    apply(state, target, command).await
}

/// `charge.refunded`: found through the PaymentIntent tokun credited.
async fn refund(
    state: &AppState,
    event: &Event,
    charge: super::event::Charge,
) -> Result<Done, ApiError> {
    let store = &state.services().store;
    let intent = charge.payment_intent.as_ref().map(|pi| pi.id().to_owned());
    let payment = match &intent {
        Some(intent) => store
            .payment_by_intent(intent)
            .map_err(|_| ApiError::Internal)?,
        None => None,
    };
    let refunded = cents_to_nanos(charge.amount_refunded).filter(|n| !n.is_negative());
    let (Some(payment), Some(refunded_total)) = (payment, refunded) else {
        let note = format!(
            "{} ({}): a refund of {} on charge {} (payment intent {}) matches no payment tokun credited",
            event.kind,
            event.id,
            refunded.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            charge.id,
            intent.as_deref().unwrap_or("none"),
        );
        let currency = charge.currency.clone().unwrap_or_default();
        let amount = refunded.unwrap_or(Nanos::ZERO);
        let record = PaymentRecord::orphan(&charge.id, None, amount, currency, note, now_ms());
        tracing::warn!(charge = %charge.id, event = %event.id, "stripe refund orphaned; an operator must look at it");
        return record_orphan(state, event, record).await;
    };
    let Some(account) = payment.account else {
        return Ok(Done::Ignored);
    };
    let command = PaymentCommand::Refund(StripeRefund {
        session: payment.session_id,
        event: event.id.clone(),
        charge: charge.id,
        refunded_total,
    });
    apply(state, account, command).await
}

async fn apply(
    state: &AppState,
    account: AccountId,
    command: PaymentCommand,
) -> Result<Done, ApiError> {
    match state.services().accounts.payment(account, command).await {
        Ok(outcome) => Ok(Done::Applied(outcome)),
        // Stripe retries a 503; the retry finds what was already done. (An
        // account actor that cannot start is reported as an unknown
        // account, but the account was just found in the store: retry too.)
        Err(error) => {
            tracing::warn!(%account, %error, "stripe payment not applied; Stripe will retry");
            Err(ApiError::Unavailable {
                message: "The payment could not be recorded now; retry later.".into(),
            })
        }
    }
}

/// Whose session this is: the account tokun recorded when it opened the
/// session, else `client_reference_id`, else the metadata. `Err` says why
/// it belongs to nobody live.
fn session_account(
    state: &AppState,
    session: &Session,
) -> Result<Result<AccountId, String>, ApiError> {
    let store = &state.services().store;
    let recorded = store
        .payment(&session.id)
        .map_err(|_| ApiError::Internal)?
        .and_then(|p| p.account);
    let claimed = session
        .client_reference_id
        .as_deref()
        .or_else(|| session.metadata("tokun_account"));
    let account = match (recorded, claimed) {
        (Some(account), _) => account,
        (None, Some(text)) => match text.parse::<AccountId>() {
            Ok(account) => account,
            Err(_) => {
                return Ok(Err(format!(
                    "`{}` is not a tokun account id",
                    text.chars().take(64).collect::<String>()
                )));
            }
        },
        (None, None) => {
            return Ok(Err(
                "no tokun account in client_reference_id or metadata".into()
            ));
        }
    };
    match store.account(account).map_err(|_| ApiError::Internal)? {
        None => Ok(Err(format!("unknown account {account}"))),
        Some(record) if record.deleted_ms.is_some() => {
            Ok(Err(format!("account {account} is deleted")))
        }
        Some(_) => Ok(Ok(account)),
    }
}

async fn orphan(
    state: &AppState,
    event: &Event,
    session: &Session,
    amount: Option<Nanos>,
    reason: String,
) -> Result<Done, ApiError> {
    let store = &state.services().store;
    let before = store.payment(&session.id).map_err(|_| ApiError::Internal)?;
    if before.as_ref().is_some_and(|p| p.status.is_credited()) {
        return Ok(Done::Duplicate);
    }
    let now = now_ms();
    let note = format!("{} ({}): {reason}", event.kind, event.id);
    let record = match before {
        Some(mut record) => {
            record.amount = amount.unwrap_or(record.amount);
            record.status = PaymentStatus::Orphaned;
            record.updated_ms = now;
            record.note = Some(note);
            record
        }
        None => {
            let claimed = session
                .client_reference_id
                .as_deref()
                .and_then(|id| id.parse::<AccountId>().ok());
            let currency = session.currency.clone().unwrap_or_default().to_lowercase();
            let amount = amount.unwrap_or(Nanos::ZERO);
            PaymentRecord::orphan(&session.id, claimed, amount, currency, note, now)
        }
    };
    tracing::warn!(session = %session.id, event = %event.id, %reason, "stripe payment orphaned; an operator must look at it");
    record_orphan(state, event, record).await
}

/// Writes an orphan with its event mark; a refusal means a concurrent
/// delivery of the same event wrote it first.
async fn record_orphan(
    state: &AppState,
    event: &Event,
    record: PaymentRecord,
) -> Result<Done, ApiError> {
    let store = &state.services().store;
    if store
        .is_processed(&event.id)
        .map_err(|_| ApiError::Internal)?
    {
        return Ok(Done::Duplicate);
    }
    let ops = vec![
        WriteOp::PutPayment(record),
        WriteOp::MarkProcessed {
            key: event.id.clone(),
            at_ms: now_ms(),
        },
    ];
    match state.services().ledger.append(ops).await {
        Ok(_) => Ok(Done::Orphaned),
        Err(error) if error.is_refusal() => Ok(Done::Duplicate),
        Err(_) => Err(ApiError::Unavailable {
            message: "The payment could not be recorded now; retry later.".into(),
        }),
    }
}

/// What Stripe reports the session charged, if it is a sane amount.
fn reported_amount(session: &Session) -> Option<Nanos> {
    session
        .amount_total
        .and_then(cents_to_nanos)
        .filter(|amount| !amount.is_negative())
}
