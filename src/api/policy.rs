//! Policy changes in the admin API (admin token): `POST /admin/policy`
//! announces one (`{"effective": "YYYY-MM-DD", "summary", "url"}`, at least
//! 14 days ahead, else 400 naming the earliest date allowed) and wakes the
//! mailing; `GET /admin/policy` lists every announcement with how far its
//! emails have got. The rules are `crate::policy`'s.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_storage::ACTOR_ADMIN_TOKEN;

use super::{parse_json, read_json_body};
use crate::auth::Admin;
use crate::error::ApiError;
use crate::policy::{Announcement, PolicyError, announce, policy_json};
use crate::state::AppState;

const BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    effective: String,
    summary: String,
    #[serde(default)]
    url: Option<String>,
}

/// `POST /admin/policy`: 201 with the announcement.
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(&headers, body, BODY_LIMIT).await?;
    let request: NewPolicy = parse_json(&bytes)?;
    let announcement = Announcement {
        effective: request.effective,
        summary: request.summary,
        url: request.url,
    };
    let now = tokun_providers::clock::unix_ms();
    let store = &state.services().store;
    match announce(store, ACTOR_ADMIN_TOKEN, announcement, now).await {
        Ok(record) => {
            state.console().policy_mail().wake();
            Ok((StatusCode::CREATED, Json(policy_json(&record))).into_response())
        }
        Err(PolicyError::Storage(_)) => Err(ApiError::Internal),
        Err(error) => Err(ApiError::bad_request(error.to_string(), error.field())),
    }
}

/// `GET /admin/policy`: every announcement, oldest first, each with
/// `mail: {"sent", "done"}`.
pub async fn list(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let store = &state.services().store;
    let policies = store.policies().map_err(|_| ApiError::Internal)?;
    let mut data = Vec::with_capacity(policies.len());
    for record in &policies {
        let progress = store
            .mail_progress(record.id)
            .map_err(|_| ApiError::Internal)?;
        let mut policy = policy_json(record);
        policy["mail"] = json!({
            "sent": progress.sent, "done": progress.done_ms.is_some(),
        });
        data.push(policy);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}
