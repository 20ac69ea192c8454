//! The built-in `echo` provider: a deterministic, network-free upstream that
//! answers in OpenAI's shapes, so tokun runs out of the box and tests and load
//! benchmarks need no real model. It does not simulate upstream failures.
//!
//! The reply is `echo:` followed by the words of the last user message, padded
//! from a fixed vocabulary. Every piece is exactly one o200k token, so one
//! content chunk is one completion token and the usage it reports is exact.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::time::Duration;

use futures_util::stream;
use serde_json::{Map, Value, json};

use crate::ChunkStream;
use crate::error::ProviderError;
use crate::tokens;
use crate::types::{
    ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChunkChoice, Delta, Role, Usage,
};

/// How the echo upstream behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoConfig {
    /// Pause before each content chunk (and, in total, before a non-streaming answer).
    pub delay: Duration,
    /// Length of the reply in tokens, unless the request's max tokens is lower.
    pub reply_tokens: u32,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            reply_tokens: 16,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EchoAdapter {
    config: EchoConfig,
}

/// Padding words; each, with its leading space, is a single o200k token
/// (asserted in the tests).
const VOCABULARY: [&str; 16] = [
    " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", " and", " runs",
    " far", " away", " from", " home", " again", " today",
];

/// The reply always opens with these pieces (one token each).
const OPENING: [&str; 2] = ["echo", ":"];

impl EchoAdapter {
    pub fn new(config: EchoConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &EchoConfig {
        &self.config
    }

    /// The whole reply as one `chat.completion`, after `delay` × its token count.
    pub async fn complete(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let reply = Reply::plan(&self.config, req);
        let pieces = u32::try_from(reply.pieces.len).unwrap_or(u32::MAX);
        sleep(self.config.delay.saturating_mul(pieces)).await;
        Ok(reply.completion())
    }

    /// The reply as OpenAI streams it: a role chunk, one chunk per token (each
    /// after `delay`), a `finish_reason` chunk, then the usage chunk.
    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let reply = Reply::plan(&self.config, req);
        let delay = self.config.delay;
        let chunks = stream::unfold((reply, 0usize), move |(reply, step)| async move {
            let is_token = step >= 1 && step <= reply.pieces.len;
            if is_token {
                sleep(delay).await;
            }
            let chunk = reply.chunk_at(step)?;
            Some((Ok(chunk), (reply, step + 1)))
        });
        Ok(Box::pin(chunks))
    }
}

/// Everything about one answer, decided before the first chunk.
struct Reply {
    id: String,
    created: u64,
    model: String,
    pieces: Pieces,
    finish_reason: &'static str,
    usage: Usage,
}

impl Reply {
    fn plan(config: &EchoConfig, req: &ChatRequest) -> Self {
        let text = last_user_text(req);
        let limit = req
            .requested_max_tokens()
            .map_or(config.reply_tokens, |max| max.min(config.reply_tokens));
        let pieces = Pieces::plan(&text, limit as usize);
        let finish_reason = if limit < config.reply_tokens {
            "length"
        } else {
            "stop"
        };
        let id = format!(
            "chatcmpl-echo-{:016x}",
            fnv1a(&[req.model.as_bytes(), text.as_bytes(), &limit.to_le_bytes()])
        );
        let usage = Usage::new(tokens::estimate_prompt(req), pieces.len as u64);
        Self {
            id,
            created: crate::clock::unix_seconds(),
            model: req.model.clone(),
            pieces,
            finish_reason,
            usage,
        }
    }

    fn content(&self) -> String {
        (0..self.pieces.len)
            .filter_map(|index| self.pieces.get(index))
            .collect()
    }

    fn completion(&self) -> ChatCompletion {
        ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: json!({"role": "assistant", "content": self.content(), "refusal": null}),
                logprobs: None,
                finish_reason: Some(self.finish_reason.to_owned()),
            }],
            usage: Some(self.usage),
            system_fingerprint: None,
            extra: Map::new(),
        }
    }

    /// Chunk number `step` of the stream, `None` past the end.
    fn chunk_at(&self, step: usize) -> Option<ChatCompletionChunk> {
        let tokens = self.pieces.len;
        if step == 0 {
            let mut extra = Map::new();
            extra.insert("refusal".to_owned(), Value::Null);
            let delta = Delta {
                role: Some("assistant".to_owned()),
                content: Some(String::new()),
                tool_calls: None,
                extra,
            };
            return Some(self.chunk(vec![choice(delta, None)], None));
        }
        if let Some(piece) = step.checked_sub(1).and_then(|index| self.pieces.get(index)) {
            let delta = Delta {
                content: Some(piece.to_owned()),
                ..Delta::default()
            };
            return Some(self.chunk(vec![choice(delta, None)], None));
        }
        if step == tokens + 1 {
            return Some(self.chunk(
                vec![choice(Delta::default(), Some(self.finish_reason))],
                None,
            ));
        }
        (step == tokens + 2).then(|| self.chunk(Vec::new(), Some(self.usage)))
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}

fn choice(delta: Delta, finish_reason: Option<&str>) -> ChunkChoice {
    ChunkChoice {
        index: 0,
        delta,
        logprobs: None,
        finish_reason: finish_reason.map(str::to_owned),
    }
}

/// The text of the last user message, parts joined by spaces.
fn last_user_text(req: &ChatRequest) -> String {
    req.messages
        .iter()
        .rev()
        .find(|message| message.role == Role::User)
        .and_then(|message| message.content.as_ref())
        .map(|content| content.text().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The reply's `len` one-token pieces: the opening, the user's words, then
/// the vocabulary cycled. Only the user's words are stored: a stream open for
/// 100 tokens keeps a few words, not 100 strings (10,000 open streams would
/// otherwise hold ≈ 24 MB of pieces).
struct Pieces {
    echoed: Vec<Cow<'static, str>>,
    len: usize,
}

impl Pieces {
    /// A user word is kept when it is alphanumeric and one token with its
    /// leading space; otherwise a vocabulary word picked by its hash stands in.
    fn plan(text: &str, limit: usize) -> Pieces {
        let words = text.split_whitespace().filter_map(|word| {
            let clean: String = word.chars().filter(char::is_ascii_alphanumeric).collect();
            (!clean.is_empty()).then_some(clean)
        });
        let echoed: Vec<Cow<'static, str>> = words
            .take(limit.saturating_sub(OPENING.len()))
            .map(|word| {
                let spaced = format!(" {word}");
                if tokens::count_text(&spaced) == 1 {
                    Cow::Owned(spaced)
                } else {
                    Cow::Borrowed(
                        VOCABULARY[(fnv1a(&[word.as_bytes()]) % VOCABULARY.len() as u64) as usize],
                    )
                }
            })
            .collect();
        Pieces { echoed, len: limit }
    }

    /// Piece number `index`, `None` past the end.
    fn get(&self, index: usize) -> Option<&str> {
        if index >= self.len {
            return None;
        }
        if let Some(opening) = OPENING.get(index) {
            return Some(opening);
        }
        let index = index - OPENING.len();
        match self.echoed.get(index) {
            Some(word) => Some(word),
            None => VOCABULARY
                .get((index - self.echoed.len()) % VOCABULARY.len())
                .copied(),
        }
    }
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}
