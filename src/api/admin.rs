//! The operator API under `/admin`, guarded by the admin token: accounts
//! (search, create, show, disable, credit/debit with a reason), keys (create
//! for an account, revoke), ledger verification and Stripe payments. Every
//! change is written to the audit log (`audited`) once it succeeded.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_storage::{ACTOR_ADMIN_TOKEN, AccountId, EntryKind, KeyId, Nanos};

use super::account::{KeyView, NewKey, account_json, revoke};
use super::{Query, parse_json, read_json_body};
use crate::audit::{self, Change};
use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

const ADMIN_BODY_LIMIT: usize = 64 * 1024;

fn account_id(id: &str) -> Result<AccountId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound {
        message: format!("No account `{id}`."),
        code: "account_not_found",
    })
}

/// Records an action done with the admin token (see `crate::audit`).
async fn audited(
    state: &AppState,
    action: &str,
    target: impl std::fmt::Display,
    change: Change,
    reason: &str,
) {
    let store = &state.services().store;
    audit::record(store, ACTOR_ADMIN_TOKEN, action, target, change, reason).await;
}

async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_json_body(headers, body, ADMIN_BODY_LIMIT).await?;
    parse_json(&bytes)
}

#[derive(Debug, Deserialize)]
pub struct Search {
    search: Option<String>,
    limit: Option<usize>,
}

pub async fn list_accounts(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<Search>,
) -> Result<Json<Value>, ApiError> {
    let store = &state.services().store;
    let accounts = store
        .accounts(q.search.as_deref(), q.limit.unwrap_or(100).min(1000))
        .map_err(|_| ApiError::Internal)?;
    let mut data = Vec::with_capacity(accounts.len());
    for account in accounts {
        let books = store.books(account.id).map_err(|_| ApiError::Internal)?;
        data.push(json!({
            "id": account.id.to_string(), "email": account.email, "disabled": account.disabled,
            "created": account.created_ms / 1000, "balance": books.balance.to_string(), "held": books.held.to_string(),
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    email: String,
    #[serde(default)]
    credit_usd: Option<String>,
}

pub async fn create_account(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: NewAccount = json_body(&headers, body).await?;
    let email = request.email.trim();
    if !crate::console::is_email(email) {
        return Err(ApiError::bad_request(
            "`email` is not an email address.",
            Some("email"),
        ));
    }
    let services = state.services();
    if services
        .store
        .account_by_email(email)
        .map_err(|_| ApiError::Internal)?
        .is_some()
    {
        return Err(ApiError::Conflict {
            message: format!("An account with email `{email}` exists."),
        });
    }
    let credit = match request.credit_usd {
        Some(usd) => positive_usd(&usd, "credit_usd")?,
        None => state.config().billing.signup_credit,
    };
    let (record, secret) = services
        .create_account(email, credit, "signup credit")
        .await
        .map_err(|_| ApiError::Internal)?;
    let after = json!({"email": record.email, "credit_usd": credit.to_string()});
    let change = Change::new(Value::Null, after);
    audited(&state, "account.create", record.id, change, "").await;
    let mut body = account_json(&state, record.id).await?;
    body["api_key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn get_account(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(account_json(&state, account_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disable {
    #[serde(default = "yes")]
    disabled: bool,
    /// Why, for the audit log (optional).
    #[serde(default)]
    reason: Option<String>,
}

fn yes() -> bool {
    true
}

pub async fn disable_account(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = account_id(&id)?;
    let bytes = read_json_body(&headers, body, ADMIN_BODY_LIMIT).await?;
    let request: Disable = if bytes.is_empty() {
        Disable {
            disabled: true,
            reason: None,
        }
    } else {
        parse_json(&bytes)?
    };
    let reason = audit::reason(request.reason.as_deref(), false)
        .map_err(|message| ApiError::bad_request(message, Some("reason")))?;
    let store = &state.services().store;
    let before = store.account(id).map_err(|_| ApiError::Internal)?;
    let after = state
        .services()
        .accounts
        .set_disabled(id, request.disabled)
        .await?;
    if before.is_some_and(|before| before.disabled != after.disabled) {
        let (action, change) = audit::disabling(after.disabled);
        audited(&state, action, id, change, &reason).await;
    }
    Ok(Json(account_json(&state, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    amount_usd: String,
    reason: String,
}

pub async fn credit(
    state: State<AppState>,
    _: Admin,
    headers: HeaderMap,
    id: Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    adjust(state, headers, id, body, 1).await
}

pub async fn debit(
    state: State<AppState>,
    _: Admin,
    headers: HeaderMap,
    id: Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    adjust(state, headers, id, body, -1).await
}

async fn adjust(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
    sign: i64,
) -> Result<Json<Value>, ApiError> {
    let id = account_id(&id)?;
    let request: Adjust = json_body(&headers, body).await?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::bad_request(
            "`reason` must be 1 to 500 characters.",
            Some("reason"),
        ));
    }
    let amount = positive_usd(&request.amount_usd, "amount_usd")?;
    let signed = Nanos::new(amount.get().saturating_mul(sign));
    let balance = state
        .services()
        .accounts
        .transfer(id, EntryKind::Adjustment, signed, reason)
        .await
        .map_err(adjustment_refused)?;
    let (action, change) = audit::adjustment(balance, signed);
    audited(&state, action, id, change, reason).await;
    Ok(Json(account_json(&state, id).await?))
}

/// Why an adjustment was refused, in the words of what was asked.
fn adjustment_refused(error: tokun_actors::account::AccountError) -> ApiError {
    use tokun_actors::account::AccountError;
    use tokun_storage::ledger::LedgerError;
    match error {
        AccountError::Ledger(LedgerError::BelowFloor { .. }) => ApiError::bad_request(
            "The debit would take the account below its floor.",
            Some("amount_usd"),
        ),
        AccountError::Ledger(LedgerError::Overflow { .. }) => ApiError::bad_request(
            "The credit would take the balance past the largest amount tokun keeps.",
            Some("amount_usd"),
        ),
        other => other.into(),
    }
}

/// A positive USD amount with at most nano precision and at most $1,000,000.
fn positive_usd(usd: &str, field: &str) -> Result<Nanos, ApiError> {
    let amount =
        Nanos::parse_usd(usd).map_err(|e| ApiError::bad_request(e.to_string(), Some(field)))?;
    let max = Nanos::from_whole_usd(1_000_000).unwrap_or(Nanos::ZERO);
    if amount.get() <= 0 || amount > max {
        return Err(ApiError::bad_request(
            format!("`{field}` must be more than 0 and at most 1000000."),
            Some(field),
        ));
    }
    Ok(amount)
}

pub async fn create_key(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = account_id(&id)?;
    if state
        .services()
        .store
        .account(id)
        .map_err(|_| ApiError::Internal)?
        .is_none()
    {
        return Err(ApiError::NotFound {
            message: format!("No account `{id}`."),
            code: "account_not_found",
        });
    }
    let bytes = read_json_body(&headers, body, ADMIN_BODY_LIMIT).await?;
    let request: NewKey = if bytes.is_empty() {
        NewKey::default()
    } else {
        parse_json(&bytes)?
    };
    let options = request.into_options(&state)?;
    let (record, secret) = state
        .services()
        .create_key(id, options)
        .await
        .map_err(|_| ApiError::Internal)?;
    let after = json!({"account": id.to_string(), "name": record.name});
    let change = Change::new(Value::Null, after);
    audited(&state, "key.create", record.id, change, "").await;
    Ok((
        StatusCode::CREATED,
        Json(KeyView::new(&record, Some(secret))),
    )
        .into_response())
}

pub async fn revoke_key(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let not_found = || ApiError::NotFound {
        message: format!("No key `{id}`."),
        code: "key_not_found",
    };
    let key: KeyId = id.parse().map_err(|_| not_found())?;
    let store = &state.services().store;
    let before = store.key(key).map_err(|_| ApiError::Internal)?;
    let view = revoke(&state, key).await?.ok_or_else(not_found)?;
    let after = store.key(key).map_err(|_| ApiError::Internal)?;
    if let (Some(before), Some(after)) = (before, after) {
        if let Some(change) = audit::revocation(&before, &after) {
            audited(&state, "key.revoke", key, change, "").await;
        }
    }
    Ok(Json(view))
}

pub async fn verify_ledger(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let services = state.services().clone();
    // Everything sent so far is on disk before the replay starts.
    let _ = services.ledger.barrier().await;
    let report = tokio::task::spawn_blocking(move || services.store.verify())
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(json!({
        "clean": report.is_clean(), "entries": report.entries, "accounts": report.accounts,
        "open_holds": report.open_holds, "problems": report.problems,
        "pruned_through": report.pruned_through,
    })))
}

#[derive(Debug, Deserialize)]
pub struct PaymentQuery {
    /// `open`, `paid`, `failed`, `expired`, `refunded`,
    /// `partially_refunded` or `orphaned`; all without it.
    status: Option<String>,
    limit: Option<usize>,
}

/// Stripe payments, newest first; `?status=orphaned` lists the money an
/// operator must match by hand.
pub async fn list_payments(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<PaymentQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(name) => Some(crate::stripe::parse_status(name).ok_or_else(|| {
            ApiError::bad_request(format!("`{name}` is not a payment status."), Some("status"))
        })?),
    };
    let payments = state
        .services()
        .store
        .payments(status, q.limit.unwrap_or(100).min(1000))
        .map_err(|_| ApiError::Internal)?;
    let data: Vec<Value> = payments.iter().map(crate::stripe::payment_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use tokun_actors::account::AccountError;
    use tokun_storage::{EntryKind, Nanos, ledger::LedgerError};

    use super::adjustment_refused;

    #[test]
    fn an_overflowing_credit_is_not_called_a_debit() {
        let overflow = AccountError::Ledger(LedgerError::Overflow {
            kind: EntryKind::Adjustment,
        });
        let message = adjustment_refused(overflow).object().message;
        assert!(message.contains("credit"), "{message}");
        let floor = AccountError::Ledger(LedgerError::BelowFloor {
            kind: EntryKind::Adjustment,
            available: Nanos::new(-1),
            floor: Nanos::ZERO,
        });
        let message = adjustment_refused(floor).object().message;
        assert!(message.contains("below its floor"), "{message}");
    }
}
