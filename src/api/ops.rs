//! Operator views: `GET /metrics` (Prometheus text), `GET /admin/actors`
//! (the live supervision tree with per-kind counts and the busiest actors)
//! and `GET /admin/providers` (configured providers and their routes). All
//! are cheap enough to poll every couple of seconds under load: they read
//! atomics and one directory map, never an actor's mailbox.

use std::collections::HashMap;

use axum::extract::State;
use axum::{Extension, Json};

use super::Query;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_actors::instrument::directory;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::listener::Listener;
use crate::state::AppState;

/// On the API listener `/metrics` asks for the admin token unless
/// `[metrics] public = true`; the operator listener is private by design.
pub async fn metrics(
    State(state): State<AppState>,
    listener: Option<Extension<Listener>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let operator = listener.is_some_and(|Extension(l)| l == Listener::Operator);
    if !operator && !state.config().metrics.public {
        crate::auth::check_admin(&headers, &state.services().admin_token_hash)?;
    }
    let handle = state.metrics().ok_or(ApiError::NotImplemented {
        message: "Metrics are not enabled.".into(),
    })?;
    let live = state.streams().stats().live();
    let body = crate::metrics::render(handle, state.services(), live);
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct ActorsQuery {
    /// How many of the busiest actors to list (default 20).
    top: Option<usize>,
    /// List every live actor (the whole tree) instead of only the busiest.
    all: Option<bool>,
}

pub async fn actors(_: Admin, Query(query): Query<ActorsQuery>) -> Result<Json<Value>, ApiError> {
    let survey = directory().survey(query.top.unwrap_or(20).min(1000));
    let kinds: Vec<Value> = directory()
        .counts()
        .into_iter()
        .map(|(kind, counts)| {
            let load = survey.per_kind.iter().find(|k| k.kind == kind);
            let (alive, depth, messages) =
                load.map_or((0, 0, 0), |k| (k.alive, k.mailbox_depth, k.messages));
            json!({"kind": kind, "alive": alive, "started": counts.started, "stopped": counts.stopped,
                   "restarted": counts.restarted, "mailbox_depth": depth, "messages": messages})
        })
        .collect();
    let describe = |stats: &tokun_actors::instrument::ActorStats| {
        json!({
            "kind": stats.kind(),
            "id": stats.id().map(|id| id.to_string()),
            "name": stats.label(),
            "parent": stats.parent().map(|id| id.to_string()),
            "mailbox_depth": stats.mailbox_depth(),
            "messages": stats.handled(),
            "last_handler_us": stats.last_handler_micros(),
            "uptime_s": stats.uptime_secs(),
        })
    };
    let top: Vec<Value> = survey.busiest.iter().map(|s| describe(s)).collect();
    let mut body =
        json!({"object": "actors", "total": survey.total, "kinds": kinds, "busiest": top});
    if query.all.unwrap_or(false) {
        body["actors"] = directory().live().iter().map(|s| describe(s)).collect();
    }
    Ok(Json(body))
}

pub async fn providers(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let config = state.config();
    let mut health = HashMap::new();
    for provider in &config.providers {
        if let Some(limiter) = state.limiter(&provider.name) {
            health.insert(provider.name.as_str(), limiter.health().await);
        }
    }
    let data: Vec<Value> = config
        .providers
        .iter()
        .map(|p| {
            let health = health.get(p.name.as_str()).cloned().flatten();
            let models: Vec<&str> = config
                .models
                .iter()
                .filter(|m| m.routes.iter().any(|r| r.provider == p.name))
                .map(|m| m.id.as_str())
                .collect();
            json!({
                "name": p.name,
                "kind": format!("{:?}", p.kind).to_lowercase(),
                "base_url": p.base_url,
                "models": models,
                "circuit": health.as_ref().map(|h| h.circuit.as_str()),
                "in_flight": health.as_ref().map(|h| h.in_flight),
                "waiting": health.as_ref().map(|h| h.waiting),
                "headroom": health.as_ref().map(|h| json!({
                    "requests": h.requests_available,
                    "tokens": h.tokens_available,
                    "concurrency": p.limits.max_concurrency.map(|max| max.saturating_sub(h.in_flight)),
                    "paused_ms": h.paused_for.as_millis() as u64,
                })),
                "limits": {
                    "rpm": p.limits.rpm,
                    "tpm": p.limits.tpm,
                    "max_concurrency": p.limits.max_concurrency,
                    "max_wait_ms": p.limits.max_wait.as_millis() as u64,
                },
                "timeouts_ms": {
                    "connect": p.connect_timeout.as_millis() as u64,
                    "first_byte": p.timeouts.first_byte.as_millis() as u64,
                    "idle": p.timeouts.idle.as_millis() as u64,
                    "total": p.timeouts.total.as_millis() as u64,
                },
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
