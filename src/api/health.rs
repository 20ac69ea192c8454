//! `/healthz` (the process answers) and `/readyz` (it can take traffic:
//! providers configured, the ledger writable).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let models = state.config().models.len();
    let streams = state.streams().stats().live();
    let ledger = state.services().ledger.is_healthy();
    let ready = models > 0 && ledger;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "ready": ready, "models": models, "ledger_writable": ledger, "live_streams": streams }),
        ),
    )
}
