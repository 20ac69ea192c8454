//! `POST {base}/embeddings` for OpenAI-compatible upstreams. The request is
//! relayed with floats forced (the HTTP edge encodes base64 itself); an answer
//! without usage is counted with o200k so embeddings are never free by accident.

use serde::Deserialize;
use serde_json::Value;

use super::{OpenAiAdapter, response};
use crate::embeddings::{EmbeddingRequest, EmbeddingResponse, EmbeddingUsage};
use crate::error::ProviderError;

impl OpenAiAdapter {
    /// Embeds `req.input` with `req.model` (already the upstream's model name).
    pub async fn embed(&self, req: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
        let url = embeddings_url(&self.endpoint);
        let body = encode(req)?;
        let answer = self.send(&url, body, "application/json").await?;
        let body = answer.bytes().await.map_err(response::body_error)?;
        parse(&body, req)
    }
}

/// The upstream's answer, with `usage` optional: some compatible servers omit it.
#[derive(Deserialize)]
struct WireResponse {
    data: Vec<crate::embeddings::Embedding>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
}

/// `{base}/embeddings`, next to `{base}/chat/completions` (the endpoint `new` built).
fn embeddings_url(chat_endpoint: &str) -> String {
    let base = chat_endpoint
        .strip_suffix("/chat/completions")
        .unwrap_or(chat_endpoint);
    format!("{base}/embeddings")
}

fn encode(req: &EmbeddingRequest) -> Result<Vec<u8>, ProviderError> {
    let mut body = serde_json::to_value(req).map_err(encode_error)?;
    if let Some(fields) = body.as_object_mut() {
        fields.insert("encoding_format".to_owned(), Value::from("float"));
    }
    serde_json::to_vec(&body).map_err(encode_error)
}

fn encode_error(err: serde_json::Error) -> ProviderError {
    ProviderError::Request {
        detail: format!("could not encode the embeddings request: {err}"),
    }
}

fn parse(body: &[u8], req: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
    let text = String::from_utf8_lossy(body);
    let wire: WireResponse = serde_json::from_slice(body).map_err(|err| {
        match response::upstream_error_message(&text) {
            Some(message) => ProviderError::Stream { message },
            None => ProviderError::Protocol {
                detail: format!(
                    "invalid embeddings body ({err}): {}",
                    response::truncate(&text, 120)
                ),
            },
        }
    })?;
    let usage_estimated = wire.usage.is_none();
    let usage = wire.usage.unwrap_or_else(|| {
        let tokens = req.input.count_tokens();
        EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        }
    });
    Ok(EmbeddingResponse {
        object: "list".to_owned(),
        data: wire.data,
        model: wire.model.unwrap_or_else(|| req.model.clone()),
        usage,
        usage_estimated,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> EmbeddingRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn url_sits_next_to_chat_completions() {
        assert_eq!(
            embeddings_url("https://api.openai.com/v1/chat/completions"),
            "https://api.openai.com/v1/embeddings"
        );
    }

    #[test]
    fn floats_are_always_requested_and_extras_relayed() {
        let req = request(
            json!({"model": "m", "input": "hi", "encoding_format": "base64", "user": "u1"}),
        );
        let body: Value = serde_json::from_slice(&encode(&req).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"model": "m", "input": "hi", "encoding_format": "float", "user": "u1"})
        );
    }

    #[test]
    fn answers_parse_with_or_without_usage() {
        let req = request(json!({"model": "m", "input": ["hello world"]}));
        let with = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}],"model":"m-2","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        let out = parse(with, &req).unwrap();
        assert_eq!((out.model.as_str(), out.usage.prompt_tokens), ("m-2", 3));
        assert!(!out.usage_estimated);
        assert_eq!(out.data[0].embedding, vec![0.5, -0.25]);
        let without = br#"{"data":[{"object":"embedding","index":0,"embedding":[1]}]}"#;
        let out = parse(without, &req).unwrap();
        assert_eq!((out.model.as_str(), out.usage.total_tokens), ("m", 2));
        assert!(out.usage_estimated);
        let error = br#"{"error":{"message":"model not found"}}"#;
        assert_eq!(parse(error, &req).unwrap_err().kind(), "stream_error");
        assert_eq!(parse(b"<html>", &req).unwrap_err().kind(), "protocol");
    }
}
