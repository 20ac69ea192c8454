//! `POST /v1/embeddings`: one upstream call on the model's first route that
//! can embed, billed like a completion with input tokens only — a hold for the
//! counted input first, settled from the upstream's usage (or tokun's count,
//! marked estimated, when the upstream gives none).

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokun_actors::{Meter, MeterRecord, UsageSource};
use tokun_providers::{Adapter, EmbeddingRequest, ProviderError, Usage};

use super::chat::authenticate;
use super::completion::{Hold, hold_credit};
use super::{parse_json, read_json_body};
use crate::error::ApiError;
use crate::server::RequestId;
use crate::state::AppState;

pub async fn embeddings(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let caller = authenticate(&state, &headers)?;
    let bytes = read_json_body(&headers, body, state.config().server.max_body_bytes).await?;
    let mut request: EmbeddingRequest = parse_json(&bytes)?;
    let model = state
        .model(&request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    if let Some(caller) = &caller {
        if !caller.key.allowed_models.is_empty()
            && !caller.key.allowed_models.contains(&model.config.id)
        {
            return Err(ApiError::Forbidden {
                message: format!("This API key may not use the model `{}`.", model.config.id),
            });
        }
    }
    let input_tokens = request.input.count_tokens();
    if input_tokens == 0 {
        return Err(ApiError::bad_request(
            "`input` must not be empty.",
            Some("input"),
        ));
    }
    let route = model
        .routes
        .iter()
        .find(|r| !matches!(r.adapter, Adapter::Anthropic(_)))
        .ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "The model `{}` has no route that can embed.",
                    model.config.id
                ),
                Some("model"),
            )
        })?;
    let meter = match &caller {
        Some(caller) => {
            let hold = Hold {
                request_id: &request_id.0,
                model,
                prompt_tokens: input_tokens,
                increment_tokens: 1,
                max_output_tokens: 1,
            };
            hold_credit(&state, caller, hold, "http").await?.0
        }
        None => Meter::Log,
    };
    let base64 = request.encoding_format.as_deref() == Some("base64");
    request.model = route.upstream_model.to_string();
    let answer =
        match tokio::time::timeout(route.timeouts.total, route.adapter.embed(&request)).await {
            Ok(answer) => answer,
            Err(_) => Err(ProviderError::Timeout {
                phase: tokun_providers::TimeoutPhase::Total,
            }),
        };
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            meter.release().await;
            return Err(ApiError::Upstream(error));
        }
    };
    let source = if response.usage_estimated {
        UsageSource::Estimated
    } else {
        UsageSource::Exact
    };
    let record = MeterRecord {
        request_id: request_id.0.clone(),
        model: Arc::from(model.config.id.as_str()),
        provider: Some(route.provider.clone()),
        usage: Usage::new(response.usage.prompt_tokens, 0),
        source,
        outcome: "completed",
        status: 200,
        error_kind: None,
        latency_ms: started.elapsed().as_millis() as u64,
        ttft_ms: None,
    };
    let settlement = meter.settle(record).await?;
    let cost = tokun_storage::Nanos::new(settlement.cost_nanos).to_string();
    let data: Vec<Value> = response
        .data
        .iter()
        .map(|e| {
            let embedding = if base64 {
                json!(e.base64())
            } else {
                json!(e.embedding)
            };
            json!({"object": "embedding", "index": e.index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model.config.id,
        "usage": {"prompt_tokens": response.usage.prompt_tokens, "total_tokens": response.usage.prompt_tokens, "cost": cost},
    });
    let mut http = axum::Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&cost) {
        http.headers_mut().insert("x-tokun-cost", value);
    }
    if let Ok(value) = HeaderValue::from_str(&route.provider) {
        http.headers_mut().insert("x-tokun-route", value);
    }
    Ok(http)
}
