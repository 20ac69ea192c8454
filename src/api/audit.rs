//! The audit log and audited corrections in the admin API (admin token):
//! `GET /admin/audit` lists the log oldest first, a page at a time after a
//! seq (`?after=&limit=`, optionally `target=acct_7` or `action=account.`),
//! and `POST /admin/accounts/{id}/email` corrects an account's email with a
//! required reason (`src/corrections.rs`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_storage::{ACTOR_ADMIN_TOKEN, AccountId, AuditFilter};

use super::account::account_json;
use super::{Query, parse_json, read_json_body};
use crate::auth::Admin;
use crate::corrections::{CorrectionError, change_email};
use crate::error::ApiError;
use crate::state::AppState;

const BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
    target: Option<String>,
    action: Option<String>,
}

/// `GET /admin/audit`: `{"object":"list","data":[…],"next_after":seq|null}`;
/// `next_after` is the `after` of the next page, null on the last.
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = AuditFilter {
        target: q.target.filter(|t| !t.is_empty()),
        action: q.action.filter(|a| !a.is_empty()),
    };
    let records = state
        .services()
        .store
        .audit_after(q.after.unwrap_or(0), &filter, limit)
        .map_err(|_| ApiError::Internal)?;
    let next_after = (records.len() == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({
        "object": "list", "data": records, "next_after": next_after,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChange {
    email: String,
    reason: Option<String>,
}

/// `POST /admin/accounts/{id}/email` `{"email", "reason"}`: the account as
/// `GET /admin/accounts/{id}` shows it, with its new email.
pub async fn set_email(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound {
        message: format!("No account `{id}`."),
        code: "account_not_found",
    };
    let account: AccountId = id.parse().map_err(|_| not_found())?;
    let bytes = read_json_body(&headers, body, BODY_LIMIT).await?;
    let request: EmailChange = parse_json(&bytes)?;
    let services = state.services();
    let changed = change_email(
        services,
        account,
        &request.email,
        request.reason.as_deref(),
        ACTOR_ADMIN_TOKEN,
    )
    .await;
    match changed {
        Ok(_) => Ok(Json(account_json(&state, account).await?)),
        Err(error) => Err(refused(error)),
    }
}

fn refused(error: CorrectionError) -> ApiError {
    let message = error.to_string();
    match error {
        CorrectionError::InvalidEmail => ApiError::bad_request(message, Some("email")),
        CorrectionError::Reason(_) => ApiError::bad_request(message, Some("reason")),
        CorrectionError::NoAccount(_) => ApiError::NotFound {
            message,
            code: "account_not_found",
        },
        CorrectionError::Deleted(_) | CorrectionError::Taken { .. } => {
            ApiError::Conflict { message }
        }
        CorrectionError::Failed(cause) => {
            tracing::warn!(%cause, "an email correction failed");
            ApiError::Internal
        }
    }
}
