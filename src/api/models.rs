//! `GET /v1/models` and `GET /v1/models/{id}`: the configured models in
//! OpenAI's list shape, with tokun's prices (USD per million tokens). Like
//! OpenAI's, they need a key (while billing is on; with billing off, as every
//! endpoint, they also answer without one).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize)]
pub struct ModelObject {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: String,
    context_window: u32,
    /// USD per million tokens, as decimal strings (exact).
    pricing: Pricing,
}

#[derive(Serialize)]
struct Pricing {
    input: String,
    output: String,
    cached_input: String,
}

#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    crate::auth::caller_if_billed(&state, &headers)?;
    let data = state.config().models.iter().map(model_object).collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

pub async fn retrieve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    crate::auth::caller_if_billed(&state, &headers)?;
    let model = state
        .config()
        .model(&id)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(model_object(model)))
}

fn model_object(model: &ModelConfig) -> ModelObject {
    ModelObject {
        id: model.id.clone(),
        object: "model",
        created: 0,
        // A model without routes (all its providers unknown) is owned by nobody.
        owned_by: model
            .routes
            .first()
            .map(|r| r.provider.clone())
            .unwrap_or_default(),
        context_window: model.context_window,
        pricing: Pricing {
            input: model.price.input().to_string(),
            output: model.price.output().to_string(),
            cached_input: model.price.cached_input().to_string(),
        },
    }
}
