//! The OpenAI-compatible HTTP API: routes, request parsing and the shared
//! body helpers. Handlers turn HTTP into domain calls and domain events back
//! into OpenAI shapes; they hold no business rules of their own.

mod account;
pub(crate) mod account_data;
mod admin;
mod audit;
mod chat;
pub mod completion;
pub(crate) mod debug;
mod embeddings;
mod health;
mod idempotent;
mod models;
mod ops;
mod policy;
mod snapshots;
pub mod sse;
pub(crate) mod ws;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
        .route("/v1/account", get(account::account))
        .route("/v1/account/export", get(account_data::export))
        .route("/v1/account/delete", post(account_data::delete))
        .route("/v1/usage", get(account::usage))
        .route(
            "/v1/keys",
            get(account::list_keys).post(account::create_key),
        )
        .route("/v1/keys/{id}", axum::routing::delete(account::revoke_key))
        .route("/v1/keys/{id}/debug", get(debug::list))
        .route("/v1/requests/{id}/cancel", post(account::cancel))
        .route("/v1/ws", get(ws::connect))
        .route("/v1/ws/ticket", post(ws::issue_ticket))
        .route("/v1/realtime", get(ws::realtime))
        .route(
            "/admin/accounts",
            get(admin::list_accounts).post(admin::create_account),
        )
        .route("/admin/accounts/{id}", get(admin::get_account))
        .route("/admin/accounts/{id}/disable", post(admin::disable_account))
        .route("/admin/accounts/{id}/credit", post(admin::credit))
        .route("/admin/accounts/{id}/debit", post(admin::debit))
        .route("/admin/accounts/{id}/keys", post(admin::create_key))
        .route("/admin/keys/{id}/revoke", post(admin::revoke_key))
        .route(
            "/admin/ledger/verify",
            get(admin::verify_ledger).post(admin::verify_ledger),
        )
        .route(
            "/admin/snapshots",
            get(snapshots::status).post(snapshots::trigger),
        )
        .route("/v1/topups", post(crate::stripe::checkout::create_topup))
        .route("/v1/payments", get(crate::stripe::checkout::list_payments))
        .route("/stripe/webhook", post(crate::stripe::webhook::receive))
        .route("/admin/payments", get(admin::list_payments))
        .route("/admin/audit", get(audit::list))
        .route("/admin/accounts/{id}/email", post(audit::set_email))
        .route("/admin/policy", get(policy::list).post(policy::create))
        .merge(operator_router())
        .merge(crate::console::router())
}

/// The operator views and probes, also served alone on `server.admin_listen`.
pub fn operator_router() -> Router<AppState> {
    Router::new()
        .route("/admin/actors", get(ops::actors))
        .route("/admin/providers", get(ops::providers))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
}

/// axum's `Query`, with a malformed query string answered as an
/// OpenAI-shaped 400 (axum's own rejection is plain text).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::BadRequest {
                message: format!("The query string is invalid: {}.", rejection.body_text()),
                param: None,
                code: Some("invalid_query"),
            }),
        }
    }
}

/// Reads a JSON request body up to `limit` bytes.
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        // A content type that is not visible ASCII matches nothing below: 415.
        let content_type = content_type
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        // curl's `-d` sends form-urlencoded by default; accept it as JSON text.
        let acceptable = content_type.starts_with("application/json")
            || content_type.contains("+json")
            || content_type.starts_with("application/x-www-form-urlencoded")
            || content_type.starts_with("text/plain");
        if !acceptable {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    read_body(headers, body, limit).await
}

/// Reads a request body of any type up to `limit` bytes: 413 when the
/// declared or the actual length is over it.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::bad_request("The request body could not be read.", None)
        }
    })
}

/// Parses JSON, turning serde's error into a 400 that names the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(error) if error.is_syntax() || error.is_eof() => Err(ApiError::BadRequest {
            message: format!("We could not parse the JSON body of your request: {error}."),
            param: None,
            code: Some("invalid_json"),
        }),
        Err(_) => {
            // Slow path, errors only: run again to learn the field path.
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let error = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(_) => return Err(ApiError::bad_request("Invalid request body.", None)),
                Err(error) => error,
            };
            let path = error.path().to_string();
            let param = (path != ".").then_some(path);
            Err(ApiError::BadRequest {
                message: format!("Invalid request body: {}.", error.inner()),
                param,
                code: Some("invalid_value"),
            })
        }
    }
}
