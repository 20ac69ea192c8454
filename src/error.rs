//! The one API error: every failure a client can see, with one exhaustive
//! mapping to an HTTP status and OpenAI's error body
//! `{"error":{"message","type","param","code"}}`. Logging happens in the
//! request middleware, never here; internal details never reach the body.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokun_actors::{RequestError, StreamFailure};
use tokun_providers::{ErrorSource, ProviderError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("insufficient credits: balance ${balance}, this request needs at least ${estimate}")]
    InsufficientCredits { balance: String, estimate: String },
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type; send application/json")]
    UnsupportedMediaType,
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Upstream(ProviderError),
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{message}")]
    NotImplemented { message: String },
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorObject<'a>,
}

/// OpenAI's error object; also the payload of mid-stream SSE error events.
#[derive(Serialize)]
pub struct ErrorObject<'a> {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<String>,
    pub code: Option<&'a str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        // A name is echoed back at most this long: the client sent it, but a
        // 100,000-character name is not worth sending back whole.
        const ECHOED: usize = 100;
        let shown: String = model.chars().take(ECHOED).collect();
        let more = if shown.len() < model.len() { "…" } else { "" };
        ApiError::NotFound {
            message: format!(
                "The model `{shown}{more}` does not exist or you do not have access to it."
            ),
            code: "model_not_found",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(error) => upstream_status(error),
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error object for this error (also used for SSE error events).
    pub fn object(&self) -> ErrorObject<'static> {
        let (kind, code, param) = match self {
            ApiError::BadRequest { param, code, .. } => {
                ("invalid_request_error", *code, param.clone())
            }
            ApiError::Unauthorized { .. } => {
                ("invalid_request_error", Some("invalid_api_key"), None)
            }
            ApiError::InsufficientCredits { .. } => {
                ("insufficient_credits", Some("insufficient_credits"), None)
            }
            ApiError::Forbidden { .. } => ("permission_error", Some("forbidden"), None),
            ApiError::NotFound { code, .. } => ("invalid_request_error", Some(*code), None),
            ApiError::MethodNotAllowed => {
                ("invalid_request_error", Some("method_not_allowed"), None)
            }
            ApiError::Conflict { .. } => ("invalid_request_error", Some("conflict"), None),
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", Some("payload_too_large"), None)
            }
            ApiError::UnsupportedMediaType => (
                "invalid_request_error",
                Some("unsupported_media_type"),
                None,
            ),
            ApiError::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded"), None),
            ApiError::Upstream(error) => match error.source() {
                ErrorSource::Client => ("invalid_request_error", Some(error.kind()), None),
                _ => ("upstream_error", Some(error.kind()), None),
            },
            ApiError::Unavailable { .. } => ("service_unavailable", Some("unavailable"), None),
            ApiError::NotImplemented { .. } => {
                ("invalid_request_error", Some("not_implemented"), None)
            }
            ApiError::Internal => ("server_error", None, None),
        };
        ErrorObject {
            message: self.public_message(),
            kind,
            param,
            code,
        }
    }

    /// What the client reads. Upstream errors are described by kind, so an
    /// upstream's body (which might echo a key or internal detail) is only
    /// relayed when the upstream rejected the request itself.
    fn public_message(&self) -> String {
        match self {
            ApiError::Upstream(error) => match error {
                ProviderError::Status {
                    status, message, ..
                } if error.source() == ErrorSource::Client => {
                    format!("The upstream provider rejected the request (HTTP {status}): {message}")
                }
                ProviderError::Status { status, .. } => {
                    format!("The upstream provider failed (HTTP {status}) on every route.")
                }
                ProviderError::Timeout { phase } => {
                    format!("The upstream provider timed out ({}).", phase.as_str())
                }
                ProviderError::Connect { .. } => "Could not reach the upstream provider.".into(),
                _ => format!("The upstream provider failed: {}.", error.kind()),
            },
            other => other.to_string(),
        }
    }
}

/// The status `ProviderError::answer_status` decides (the request log
/// records the same one).
fn upstream_status(error: &ProviderError) -> StatusCode {
    StatusCode::from_u16(error.answer_status()).unwrap_or(StatusCode::BAD_GATEWAY)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::Upstream(error) => error.retry_after(),
            _ => None,
        };
        // An error body is strings only: serializing it cannot fail.
        let body = serde_json::to_vec(&Body {
            error: self.object(),
        })
        .unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
            .extensions_mut()
            .insert(ErrorKind(self.kind_label()));
        response
    }
}

impl ApiError {
    /// A bounded label for logs and metrics.
    pub fn kind_label(&self) -> &'static str {
        match self {
            ApiError::Upstream(error) => error.kind(),
            // The error's code, else its type (`invalid_request_error`,
            // `server_error`): a client's mistake is never labelled internal.
            other => {
                let object = other.object();
                object.code.unwrap_or(object.kind)
            }
        }
    }
}

/// Marks an error response for the logging middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Upstream(error) => ApiError::Upstream(error),
            RequestError::Account(error) => error.into(),
        }
    }
}

impl From<StreamFailure> for ApiError {
    fn from(failure: StreamFailure) -> Self {
        match failure {
            StreamFailure::Upstream(error) => ApiError::Upstream(error),
        }
    }
}

impl From<tokun_actors::account::AccountError> for ApiError {
    fn from(error: tokun_actors::account::AccountError) -> Self {
        use tokun_actors::account::AccountError;
        match error {
            AccountError::Insufficient { available, needed } => ApiError::InsufficientCredits {
                balance: available.to_string(),
                estimate: needed.to_string(),
            },
            AccountError::KeyLimit { limit } => ApiError::Forbidden {
                message: format!("This API key reached its spend limit of ${limit}."),
            },
            AccountError::Disabled => ApiError::Forbidden {
                message: "This account is disabled.".into(),
            },
            AccountError::UnknownAccount => ApiError::NotFound {
                message: "Unknown account.".into(),
                code: "account_not_found",
            },
            AccountError::InvalidAmount(message) => {
                ApiError::bad_request(message, Some("amount_usd"))
            }
            AccountError::LedgerUnavailable => ApiError::Unavailable {
                message: "The ledger is unavailable; nothing was charged. Retry later.".into(),
            },
            AccountError::Busy => ApiError::Unavailable {
                message: "The account is busy; nothing was charged. Retry shortly.".into(),
            },
            AccountError::ActorFailed | AccountError::Ledger(_) | AccountError::UnknownHold(_) => {
                ApiError::Internal
            }
        }
    }
}
