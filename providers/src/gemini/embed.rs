//! OpenAI embeddings ↔ Gemini `:batchEmbedContents`: one `EmbedContentRequest`
//! per input text, `dimensions` as `outputDimensionality`. Gemini reports no
//! usage for embeddings, so prompt tokens are counted with o200k and marked
//! `usage_estimated` — a guess, but never zero for a non-empty input.

use serde::Deserialize;
use serde_json::{Value, json};

use super::GeminiAdapter;
use crate::embeddings::{EmbeddingRequest, EmbeddingResponse};
use crate::error::ProviderError;
use crate::openai::response::{self as wire, truncate, upstream_error_message};

impl GeminiAdapter {
    /// Embeds `req.input` (texts only; Gemini takes no token arrays).
    pub async fn embed(&self, req: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
        let url = self.method_url(&req.model, "batchEmbedContents")?;
        let body = encode(req)?;
        let answer = self.send(&url, body, "application/json").await?;
        let body = answer.bytes().await.map_err(wire::body_error)?;
        parse(&body, req)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEmbeddings {
    #[serde(default)]
    embeddings: Vec<WireEmbedding>,
    /// Not documented for embeddings today; read if Gemini starts sending it.
    #[serde(default)]
    usage_metadata: Option<WireEmbeddingUsage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    values: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEmbeddingUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
}

pub(super) fn encode(req: &EmbeddingRequest) -> Result<Vec<u8>, ProviderError> {
    let texts = req.input.texts().ok_or_else(|| ProviderError::Request {
        detail: "Gemini embeds text only, not token arrays".to_owned(),
    })?;
    let model = format!(
        "models/{}",
        req.model.strip_prefix("models/").unwrap_or(&req.model)
    );
    let requests: Vec<Value> = texts
        .into_iter()
        .map(|text| {
            let mut one = json!({"model": model, "content": {"parts": [{"text": text}]}});
            if let Some(dimensions) = req.dimensions {
                one["outputDimensionality"] = json!(dimensions);
            }
            one
        })
        .collect();
    serde_json::to_vec(&json!({ "requests": requests })).map_err(|err| ProviderError::Request {
        detail: format!("could not encode the embeddings request: {err}"),
    })
}

pub(super) fn parse(
    body: &[u8],
    req: &EmbeddingRequest,
) -> Result<EmbeddingResponse, ProviderError> {
    let text = String::from_utf8_lossy(body);
    if let Some(message) = upstream_error_message(&text) {
        return Err(ProviderError::Stream { message });
    }
    let wire: WireEmbeddings =
        serde_json::from_slice(body).map_err(|err| ProviderError::Protocol {
            detail: format!("invalid embeddings body ({err}): {}", truncate(&text, 120)),
        })?;
    let expected = req.input.texts().map_or(0, |texts| texts.len());
    if wire.embeddings.len() != expected {
        return Err(ProviderError::Protocol {
            detail: format!(
                "asked for {expected} embeddings, got {}",
                wire.embeddings.len()
            ),
        });
    }
    let reported = wire
        .usage_metadata
        .and_then(|usage| usage.prompt_token_count);
    let prompt_tokens = reported.unwrap_or_else(|| req.input.count_tokens());
    let vectors = wire.embeddings.into_iter().map(|e| e.values).collect();
    Ok(EmbeddingResponse {
        usage_estimated: reported.is_none(),
        ..EmbeddingResponse::new(&req.model, vectors, prompt_tokens)
    })
}
