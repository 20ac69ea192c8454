//! Per-event cost of translating provider streams into OpenAI chunks: a
//! 64-delta Anthropic text stream, the recorded Anthropic tool-use stream, and
//! a 64-chunk Gemini stream, each parsed from bytes delivered one read per
//! event (as the network usually does). Throughput is counted in SSE events,
//! so criterion's time per element is the per-event cost (target ≤ 2 µs).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt, stream};
use tokun_providers::error::ProviderError;
use tokun_providers::{ChatCompletionChunk, ChunkStream, anthropic, gemini};

const ANTHROPIC_TOOL_USE: &[u8] = include_bytes!("../src/anthropic/fixtures/tool_use.sse");
const DELTAS: usize = 64;
const WORDS: [&str; 8] = [
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy dög 🦊",
];

/// A realistic Anthropic text stream with `DELTAS` text deltas.
fn anthropic_body() -> String {
    let mut body = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
         event: ping\ndata: {\"type\": \"ping\"}\n\n",
    );
    for word in WORDS.iter().cycle().take(DELTAS) {
        body.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{word}\"}}}}\n\n"
        ));
    }
    body.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":64}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    body
}

/// A realistic Gemini stream with `DELTAS` chunks, each repeating usage.
fn gemini_body() -> String {
    let mut body = String::new();
    for (index, word) in WORDS.iter().cycle().take(DELTAS).enumerate() {
        let finish = if index + 1 == DELTAS {
            ",\"finishReason\": \"STOP\""
        } else {
            ""
        };
        body.push_str(&format!(
            "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{word}\"}}],\"role\": \"model\"}}{finish},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 9,\"candidatesTokenCount\": {},\"totalTokenCount\": {},\"thoughtsTokenCount\": 28}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"v2Y1aPyxO5G6nvgP4N6WuQM\"}}\r\n\r\n",
            index + 1,
            index + 38,
        ));
    }
    body
}

/// The body split into one piece per SSE event (`\n\n` or `\r\n\r\n` ends one).
fn per_event(body: &[u8]) -> Vec<Bytes> {
    let text = Bytes::copy_from_slice(body);
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index + 1 < body.len() {
        let end = if body[index..].starts_with(b"\r\n\r\n") {
            Some(index + 4)
        } else if body[index..].starts_with(b"\n\n") {
            Some(index + 2)
        } else {
            None
        };
        match end {
            Some(end) => {
                pieces.push(text.slice(start..end));
                start = end;
                index = end;
            }
            None => index += 1,
        }
    }
    pieces
}

/// Drains a chunk stream whose body is always ready, so no runtime is needed.
fn collect(chunks: ChunkStream) -> Vec<ChatCompletionChunk> {
    let parsed = chunks.collect::<Vec<_>>().now_or_never();
    parsed
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .collect()
}

fn body_of(pieces: Vec<Bytes>) -> impl futures_util::Stream<Item = Result<Bytes, ProviderError>> {
    stream::iter(pieces.into_iter().map(Ok::<_, ProviderError>))
}

fn translate(c: &mut Criterion) {
    let anthropic_text = per_event(anthropic_body().as_bytes());
    let anthropic_tools = per_event(ANTHROPIC_TOOL_USE);
    let gemini_text = per_event(gemini_body().as_bytes());
    let cases = [
        ("anthropic_text_stream", &anthropic_text, true),
        ("anthropic_tool_use_stream", &anthropic_tools, true),
        ("gemini_text_stream", &gemini_text, false),
    ];
    let mut group = c.benchmark_group("translate");
    for (name, events, is_anthropic) in cases {
        let translate = |pieces: Vec<Bytes>| {
            if is_anthropic {
                collect(anthropic::parse_chunk_stream(body_of(pieces), "claude"))
            } else {
                collect(gemini::parse_chunk_stream(body_of(pieces), "gemini"))
            }
        };
        assert!(
            translate(events.clone())
                .last()
                .is_some_and(|c| c.usage.is_some()),
            "{name} ends with usage"
        );
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(name, |b| b.iter(|| translate(black_box(events.clone()))));
    }
    group.finish();
}

criterion_group!(benches, translate);
criterion_main!(benches);
