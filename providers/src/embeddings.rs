//! OpenAI `/v1/embeddings` wire types — the one embeddings shape every adapter
//! speaks towards the rest of tokun — and the echo provider's deterministic
//! pseudo-embeddings. It sends nothing; the adapters do.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ProviderError;
use crate::tokens;

/// Vector length the echo provider returns when the request names none.
const ECHO_DIMENSIONS: u32 = 8;
/// The longest vector tokun will make up; more is a client mistake, not a test.
const ECHO_MAX_DIMENSIONS: u32 = 4096;

/// A `POST /v1/embeddings` request body.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` or `base64`. Adapters always fetch floats; the HTTP edge encodes
    /// (see [`Embedding::base64`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// `user` and any other parameter, relayed as is to OpenAI-compatible upstreams.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What to embed: OpenAI accepts text, texts, one token array or many.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The inputs as texts, or `None` if they are token arrays.
    pub fn texts(&self) -> Option<Vec<&str>> {
        match self {
            EmbeddingInput::Text(text) => Some(vec![text.as_str()]),
            EmbeddingInput::Texts(texts) => Some(texts.iter().map(String::as_str).collect()),
            EmbeddingInput::Tokens(_) | EmbeddingInput::TokenBatches(_) => None,
        }
    }

    /// How many inputs: one text or token array, or the items of a batch.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(texts) => texts.len(),
            EmbeddingInput::TokenBatches(batches) => batches.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prompt tokens of the whole input: o200k counts for text, lengths for token arrays.
    pub fn count_tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(text) => tokens::count_text(text),
            EmbeddingInput::Texts(texts) => texts.iter().map(|text| tokens::count_text(text)).sum(),
            EmbeddingInput::Tokens(ids) => ids.len() as u64,
            EmbeddingInput::TokenBatches(batches) => {
                batches.iter().map(|ids| ids.len() as u64).sum()
            }
        }
    }
}

/// A `list` of embeddings, as OpenAI answers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
    /// Whether `usage` is tokun's own o200k count rather than the upstream's
    /// (Gemini reports no embedding usage; some OpenAI-compatible servers omit
    /// it), so billing can tell a guess from an exact count. Not on the wire.
    #[serde(skip)]
    pub usage_estimated: bool,
}

impl EmbeddingResponse {
    /// A response holding `vectors` in order, with exact usage.
    pub fn new(model: &str, vectors: Vec<Vec<f32>>, prompt_tokens: u64) -> Self {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| Embedding {
                object: "embedding".to_owned(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                embedding,
            })
            .collect();
        Self {
            object: "list".to_owned(),
            data,
            model: model.to_owned(),
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
            usage_estimated: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Embedding {
    pub object: String,
    pub index: u32,
    pub embedding: Vec<f32>,
}

impl Embedding {
    /// The vector as OpenAI's `encoding_format: "base64"` sends it: the
    /// little-endian bytes of each `f32`, in standard base64 with padding.
    pub fn base64(&self) -> String {
        let bytes: Vec<u8> = self
            .embedding
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        base64_encode(&bytes)
    }
}

/// Embeddings bill prompt tokens only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

/// The echo provider's answer: for each input, a unit vector of `dimensions`
/// (default 8) floats derived from a hash of the input, so equal inputs get
/// equal vectors; usage is the input's real o200k token count.
pub(crate) fn echo(req: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
    let dimensions = req.dimensions.unwrap_or(ECHO_DIMENSIONS);
    if dimensions == 0 || dimensions > ECHO_MAX_DIMENSIONS {
        return Err(ProviderError::Request {
            detail: format!("dimensions must be between 1 and {ECHO_MAX_DIMENSIONS}"),
        });
    }
    let seeds: Vec<u64> = match &req.input {
        EmbeddingInput::Text(text) => vec![fnv1a(text.as_bytes())],
        EmbeddingInput::Texts(texts) => texts.iter().map(|t| fnv1a(t.as_bytes())).collect(),
        EmbeddingInput::Tokens(ids) => vec![fnv1a(&token_bytes(ids))],
        EmbeddingInput::TokenBatches(batches) => {
            batches.iter().map(|ids| fnv1a(&token_bytes(ids))).collect()
        }
    };
    let vectors = seeds
        .into_iter()
        .map(|seed| unit_vector(seed, dimensions))
        .collect();
    Ok(EmbeddingResponse::new(
        &req.model,
        vectors,
        req.input.count_tokens(),
    ))
}

fn token_bytes(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// `dimensions` floats from a splitmix64 sequence seeded by `seed`, scaled to length 1.
fn unit_vector(mut seed: u64, dimensions: u32) -> Vec<f32> {
    let mut next = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // The top 24 bits make an exact f32 in [0, 1), mapped to [-1, 1).
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| (next() >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return raw;
    }
    raw.into_iter().map(|x| x / norm).collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (position, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if position <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> EmbeddingRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn all_four_input_forms_parse() {
        let forms = [
            (json!("hi"), 1),
            (json!(["hi", "there"]), 2),
            (json!([1, 2, 3]), 1),
            (json!([[1, 2], [3]]), 2),
        ];
        for (input, count) in forms {
            let req = request(json!({"model": "m", "input": input}));
            assert_eq!(echo(&req).unwrap().data.len(), count, "{input}");
        }
    }

    #[test]
    fn echo_is_deterministic_unit_length_with_real_usage() {
        let req = request(json!({"model": "e", "input": ["hello world", "hello world", "bye"]}));
        let out = echo(&req).unwrap();
        assert_eq!(out.object, "list");
        assert_eq!(out.data[0].embedding, out.data[1].embedding);
        assert_ne!(out.data[0].embedding, out.data[2].embedding);
        assert_eq!(out.data[2].index, 2);
        assert_eq!(out.data[0].embedding.len(), 8);
        let norm: f32 = out.data[0].embedding.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(
            out.usage,
            EmbeddingUsage {
                prompt_tokens: 5,
                total_tokens: 5
            }
        );

        let tokens = request(json!({"model": "e", "input": [[1, 2, 3]], "dimensions": 3}));
        let out = echo(&tokens).unwrap();
        assert_eq!(
            (out.data[0].embedding.len(), out.usage.prompt_tokens),
            (3, 3)
        );
        let zero = request(json!({"model": "e", "input": "x", "dimensions": 0}));
        assert_eq!(echo(&zero).unwrap_err().kind(), "request");
    }

    #[test]
    fn base64_matches_openai_encoding() {
        let embedding = Embedding {
            object: "embedding".into(),
            index: 0,
            embedding: vec![1.0, -2.5],
        };
        // 1.0 = 00 00 80 3f, -2.5 = 00 00 20 c0 (little-endian f32).
        assert_eq!(embedding.base64(), "AACAPwAAIMA=");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
    }
}
