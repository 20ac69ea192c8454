//! The account API, authenticated by an API key: `GET /v1/account`,
//! `GET /v1/usage` (JSON or CSV), `GET/POST /v1/keys`, `DELETE /v1/keys/{id}`,
//! and `POST /v1/requests/{id}/cancel`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokun_storage::{AccountId, KeyId, KeyRecord, LimitReset, Nanos, UsageRecord};

use super::{Query, parse_json, read_json_body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::KeyOptions;
use crate::state::AppState;

pub async fn account(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(account_json(&state, caller.account).await?))
}

pub async fn account_json(state: &AppState, account: AccountId) -> Result<Value, ApiError> {
    let view = state.services().accounts.view(account).await?;
    let record = &view.record;
    Ok(json!({
        "id": record.id.to_string(),
        "object": "account",
        "email": record.email,
        "created": record.created_ms / 1000,
        "disabled": record.disabled,
        "balance": view.balance.to_string(),
        "held": view.held.to_string(),
        "available": view.spendable.to_string(),
        "balance_nanos": view.balance.get(),
        "held_nanos": view.held.get(),
        "available_nanos": view.spendable.get(),
        "floor": record.floor.to_string(),
        "open_holds": view.open_holds,
    }))
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    /// Unix seconds, inclusive.
    from: Option<u64>,
    /// Unix seconds, exclusive.
    to: Option<u64>,
    model: Option<String>,
    key: Option<String>,
    format: Option<String>,
    limit: Option<usize>,
}

pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<UsageQuery>,
) -> Result<Response, ApiError> {
    let records = usage_records(&state, caller.account, &query)?;
    let csv = query.format.as_deref() == Some("csv")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"));
    if csv {
        let mut response = Response::new(Body::from(usage_csv(&records)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(response);
    }
    let total: Nanos = records
        .iter()
        .fold(Nanos::ZERO, |sum, r| sum.saturating_add(r.cost));
    let data: Vec<Value> = records.iter().map(usage_json).collect();
    Ok(
        Json(json!({"object": "list", "data": data, "total_cost": total.to_string()}))
            .into_response(),
    )
}

pub fn usage_records(
    state: &AppState,
    account: AccountId,
    query: &UsageQuery,
) -> Result<Vec<UsageRecord>, ApiError> {
    let from_ms = query.from.unwrap_or(0).saturating_mul(1000);
    let to_ms = query.to.map_or(u64::MAX, |t| t.saturating_mul(1000));
    if from_ms > to_ms {
        return Err(ApiError::bad_request(
            "`from` must not be after `to`.",
            Some("from"),
        ));
    }
    let key = match &query.key {
        Some(key) => Some(
            key.parse::<KeyId>()
                .map_err(|_| ApiError::bad_request("`key` must look like key_123.", Some("key")))?,
        ),
        None => None,
    };
    let limit = query.limit.unwrap_or(10_000).min(100_000);
    let mut records = Vec::new();
    for record in state.services().store.usage_for(account, from_ms, to_ms) {
        let record = record.map_err(|_| ApiError::Internal)?;
        let model_ok = query.model.as_ref().is_none_or(|m| *m == record.model);
        let key_ok = key.is_none_or(|k| record.key == Some(k));
        if model_ok && key_ok {
            records.push(record);
            if records.len() >= limit {
                break;
            }
        }
    }
    Ok(records)
}

fn usage_json(record: &UsageRecord) -> Value {
    json!({
        "request_id": record.request_id,
        "created": record.at_ms / 1000,
        "key": record.key.map(|k| k.to_string()),
        "model": record.model,
        "served_model": record.served_model,
        "provider": record.provider,
        "route": record.route,
        "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "completion_tokens": record.completion_tokens,
        "cost": record.cost.to_string(),
        "estimated": record.estimated,
        "status": record.status,
        "transport": record.transport,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "error": record.error_kind,
    })
}

fn usage_csv(records: &[UsageRecord]) -> String {
    let mut out = String::from(
        "request_id,created,key,model,provider,prompt_tokens,completion_tokens,cost_usd,estimated,status,transport,latency_ms,ttft_ms,cached_tokens,route\n",
    );
    for r in records {
        // Absent values are empty CSV cells.
        let key = r.key.map(|k| k.to_string()).unwrap_or_default();
        let ttft = r.ttft_ms.map(|t| t.to_string()).unwrap_or_default();
        let route = r.route.map(|route| route.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&r.request_id),
            r.at_ms / 1000,
            key,
            csv_field(&r.model),
            csv_field(&r.provider),
            r.prompt_tokens,
            r.completion_tokens,
            r.cost,
            r.estimated,
            r.status,
            r.transport,
            r.latency_ms,
            ttft,
            r.cached_tokens,
            route
        ));
    }
    out
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    id: String,
    object: &'static str,
    name: String,
    prefix: String,
    created: u64,
    last_used: Option<u64>,
    revoked: bool,
    spend_limit: Option<String>,
    /// `total`, `daily` or `monthly`: when the spend limit starts over.
    spend_limit_reset: &'static str,
    rpm_limit: Option<u32>,
    allowed_models: Vec<String>,
    debug: bool,
    /// Unix seconds after which the key is refused.
    expires_at: Option<u64>,
    /// Only in the response that created the key; never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl KeyView {
    pub fn new(record: &KeyRecord, secret: Option<String>) -> Self {
        KeyView {
            id: record.id.to_string(),
            object: "api_key",
            name: record.name.clone(),
            prefix: record.prefix.clone(),
            created: record.created_ms / 1000,
            last_used: record.last_used_ms.map(|t| t / 1000),
            revoked: record.is_revoked(),
            spend_limit: record.spend_limit.map(|l| l.to_string()),
            spend_limit_reset: record.limit_reset.as_str(),
            rpm_limit: record.rpm_limit,
            allowed_models: record.allowed_models.clone(),
            debug: record.debug,
            expires_at: record.expires_ms.map(|t| t / 1000),
            key: secret,
        }
    }
}

pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let keys = state
        .services()
        .store
        .keys_for(caller.account)
        .map_err(|_| ApiError::Internal)?;
    let data: Vec<KeyView> = keys.iter().map(|k| KeyView::new(k, None)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    spend_limit_usd: Option<String>,
    /// `total` (the default), `daily` or `monthly`.
    #[serde(default)]
    spend_limit_reset: Option<String>,
    #[serde(default)]
    rpm_limit: Option<u32>,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    debug: bool,
    /// Unix seconds; must be in the future.
    #[serde(default)]
    expires_at: Option<u64>,
}

impl NewKey {
    pub fn into_options(self, state: &AppState) -> Result<KeyOptions, ApiError> {
        let name = self.name.unwrap_or_else(|| "unnamed".into());
        if name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "`name` must not contain control characters (line breaks, tabs, NUL).",
                Some("name"),
            ));
        }
        if name.len() > 100 {
            return Err(ApiError::bad_request(
                "`name` is longer than 100 characters.",
                Some("name"),
            ));
        }
        let spend_limit = match self.spend_limit_usd {
            Some(usd) => {
                let limit = Nanos::parse_usd(&usd)
                    .map_err(|e| ApiError::bad_request(e.to_string(), Some("spend_limit_usd")))?;
                if limit.get() <= 0 {
                    return Err(ApiError::bad_request(
                        "`spend_limit_usd` must be positive.",
                        Some("spend_limit_usd"),
                    ));
                }
                Some(limit)
            }
            None => None,
        };
        if let Some(unknown) = self
            .allowed_models
            .iter()
            .find(|m| state.model(m).is_none())
        {
            return Err(ApiError::bad_request(
                format!("Unknown model `{unknown}`."),
                Some("allowed_models"),
            ));
        }
        let limit_reset = match self.spend_limit_reset.as_deref() {
            None => LimitReset::Total,
            Some(text) => LimitReset::parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    "`spend_limit_reset` must be \"total\", \"daily\" or \"monthly\".",
                    Some("spend_limit_reset"),
                )
            })?,
        };
        let now_secs = tokun_providers::clock::unix_ms() / 1000;
        if self.expires_at.is_some_and(|at| at <= now_secs) {
            return Err(ApiError::bad_request(
                "`expires_at` must be in the future (Unix seconds).",
                Some("expires_at"),
            ));
        }
        Ok(KeyOptions {
            name,
            spend_limit,
            rpm_limit: self.rpm_limit.filter(|r| *r > 0),
            allowed_models: self.allowed_models,
            debug: self.debug,
            limit_reset,
            expires_ms: self.expires_at.map(|at| at.saturating_mul(1000)),
        })
    }
}

pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(&headers, body, 64 * 1024).await?;
    let request: NewKey = if bytes.is_empty() {
        NewKey::default()
    } else {
        parse_json(&bytes)?
    };
    let options = request.into_options(&state)?;
    refuse_disabled(&state, caller.account).await?;
    let (record, secret) = state
        .services()
        .create_key(caller.account, options)
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(KeyView::new(&record, Some(secret))),
    )
        .into_response())
}

/// A disabled (or deleted) account may read what it has but start nothing
/// new: no keys, no tickets, no requests (the hold refuses those).
pub async fn refuse_disabled(state: &AppState, account: AccountId) -> Result<(), ApiError> {
    let view = state.services().accounts.view(account).await?;
    if view.record.disabled || view.record.deleted_ms.is_some() {
        return Err(ApiError::from(
            tokun_actors::account::AccountError::Disabled,
        ));
    }
    Ok(())
}

pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
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
        .is_some_and(|k| k.account == caller.account);
    if !owned {
        return Err(not_found());
    }
    revoke(&state, key).await?.ok_or_else(not_found).map(Json)
}

/// Revokes a key and drops it from the auth cache at once.
pub async fn revoke(state: &AppState, key: KeyId) -> Result<Option<KeyView>, ApiError> {
    match state
        .services()
        .revoke_key(key)
        .await
        .map_err(|_| ApiError::Internal)?
    {
        Some((hash, record)) => {
            let view = KeyView::new(&record, None);
            state.keys().update(hash, record);
            Ok(Some(view))
        }
        None => Ok(None),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = crate::auth::caller_if_billed(&state, &headers)?;
    let account = caller.map(|c| c.account);
    if state.inflight().cancel(&id, account) {
        Ok(Json(
            json!({"id": id, "object": "request.cancel", "cancelled": true}),
        ))
    } else {
        Err(ApiError::NotFound {
            message: format!("No running request `{id}`."),
            code: "request_not_found",
        })
    }
}
