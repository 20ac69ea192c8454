//! `GET /admin/snapshots` (where Postgres snapshots stand: watermark, lag,
//! last success, last error) and `POST /admin/snapshots` (snapshot now and
//! return the report). Admin token required. Nothing shown here ever holds
//! the Postgres password.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tokun_actors::SnapshotHandle;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// How long `POST /admin/snapshots` waits for the snapshot.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn status(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(match &state.services().snapshots {
        Some(handle) => status_json(handle).await?,
        None => json!({ "configured": false }),
    }))
}

pub async fn trigger(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let Some(handle) = &state.services().snapshots else {
        return Err(ApiError::Conflict {
            message: "Postgres snapshots are not configured (add a [postgres] section).".into(),
        });
    };
    match handle.snapshot_now(TRIGGER_TIMEOUT).await {
        Ok(report) => Ok(Json(json!({
            "report": report,
            "status": status_json(handle).await?,
        }))),
        Err(error) => Err(ApiError::Unavailable {
            message: format!("The snapshot failed: {error}"),
        }),
    }
}

async fn status_json(handle: &SnapshotHandle) -> Result<Value, ApiError> {
    let view = handle.status();
    // Measuring the lag reads sled: keep it off the async workers.
    let measured = handle.clone();
    let lag = tokio::task::spawn_blocking(move || measured.lag())
        .await
        .map_err(|_| ApiError::Internal)?;
    let seconds = |ms: Option<u64>| ms.map(|ms| ms / 1000);
    Ok(json!({
        "configured": true,
        "target": view.target,
        "interval_secs": view.interval_secs,
        "watermark": view.watermark,
        "lag_entries": lag.entries,
        "lag_seconds": lag.seconds,
        "running": view.running,
        "last_success": seconds(view.last_success_ms),
        "last_report": view.last_report,
        "last_error": view.last_error,
        "last_error_at": seconds(view.last_error_ms),
        "consecutive_failures": view.consecutive_failures,
    }))
}
