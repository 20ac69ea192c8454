//! Request debugging (issue 20 item 2): `GET /v1/keys/{id}/debug` lists
//! what is kept of a key's requests while its `debug` flag is on — each
//! request as tokun read it and what it answered (a stream assembled into
//! one `chat.completion`), newest first, a page at a time (`?limit=`, 1 to
//! 100, default 20; `?after=<id>` continues after the last one seen), in
//! OpenAI's list shape. Only the key's own account may read them: any
//! other key id is the same 404 as a key that does not exist.
//!
//! Capturing is `debug/capture.rs` (the edge's relay), the assembly of
//! what was answered `debug/assemble.rs`, the trees
//! `storage/src/debug_bodies.rs`. Bodies are kept 7 days
//! ([`RETENTION_MS`]; the retention sweeper purges older ones) and deleted
//! at once when the key is revoked (`Services::revoke_key`).

pub(crate) mod assemble;
pub(crate) mod capture;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_storage::{DebugBodyId, KeyId, StoredDebugBody};

use super::Query;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a body is kept: 7 days, from when its request began.
pub const RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Bodies per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
pub struct DebugQuery {
    limit: Option<usize>,
    /// The id of the last body of the previous page.
    after: Option<String>,
}

/// `GET /v1/keys/{id}/debug`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<DebugQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = owned_key(&state, &caller, &id)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("`limit` must be between 1 and {MAX_LIMIT}."),
            Some("limit"),
        ));
    }
    let after = match query.after.as_deref() {
        Some(after) => Some(after.parse::<DebugBodyId>().map_err(|_| {
            ApiError::bad_request("`after` must be the id of a listed body.", Some("after"))
        })?),
        None => None,
    };
    let page = state
        .services()
        .store
        .debug_bodies_of_key(key, after, limit)
        .map_err(|error| {
            tracing::warn!(%error, "reading debug bodies failed");
            ApiError::Internal
        })?;
    let data: Vec<Value> = page.rows.iter().map(body_json).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": page.rows.first().map(|row| row.id.to_string()),
        "last_id": page.rows.last().map(|row| row.id.to_string()),
        "has_more": page.has_more,
    })))
}

/// One stored body as the API and the export show it.
pub(crate) fn body_json(row: &StoredDebugBody) -> Value {
    let body = &row.body;
    json!({
        "id": row.id.to_string(),
        "object": "request.debug",
        "request_id": body.request_id,
        "created": body.at_ms / 1000,
        "at_ms": body.at_ms,
        "expires_at": body.at_ms.saturating_add(RETENTION_MS) / 1000,
        "key": body.key.to_string(),
        "model": body.model,
        "transport": body.transport,
        "status": body.status,
        "request": body.request,
        "response": body.response,
    })
}

/// The key `id` if it is the caller's account's; 404 otherwise, whoever
/// it belongs to.
fn owned_key(state: &AppState, caller: &Caller, id: &str) -> Result<KeyId, ApiError> {
    let not_found = || ApiError::NotFound {
        message: format!("No key `{id}`."),
        code: "key_not_found",
    };
    let key: KeyId = id.parse().map_err(|_| not_found())?;
    let owned = state
        .services()
        .store
        .key(key)
        .map_err(|_| ApiError::Internal)?
        .is_some_and(|record| record.account == caller.account);
    if owned { Ok(key) } else { Err(not_found()) }
}
