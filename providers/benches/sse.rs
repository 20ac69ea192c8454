//! The SSE hot path: parsing a recorded 64-chunk OpenAI stream from bytes into
//! chunks, and re-encoding each chunk as `data: {json}\n\n` for the client.
//! Throughput is counted in chunks, so criterion's time / 64 is the per-chunk cost.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt, stream};
use tokun_providers::ChatCompletionChunk;
use tokun_providers::error::ProviderError;
use tokun_providers::openai::parse_chunk_stream;

const BODY: &[u8] = include_bytes!("../src/openai/fixtures/long_64.sse");
const CHUNKS: u64 = 64;

/// Parses `pieces` as one body. The body is always ready, so no runtime is needed.
fn parse(pieces: Vec<Bytes>) -> Vec<ChatCompletionChunk> {
    let body = stream::iter(pieces.into_iter().map(Ok::<_, ProviderError>));
    let parsed = parse_chunk_stream(body).collect::<Vec<_>>().now_or_never();
    parsed
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .collect()
}

/// The body as the network usually delivers it: one read per event.
fn per_event(body: &[u8]) -> Vec<Bytes> {
    let text = Bytes::copy_from_slice(body);
    let mut pieces = Vec::new();
    let mut start = 0;
    while let Some(end) = body[start..].windows(2).position(|w| w == b"\n\n") {
        pieces.push(text.slice(start..start + end + 2));
        start += end + 2;
    }
    pieces
}

fn encode(chunks: &[ChatCompletionChunk], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    for chunk in chunks {
        out.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut *out, chunk)?;
        out.extend_from_slice(b"\n\n");
    }
    Ok(())
}

fn sse(c: &mut Criterion) {
    let whole = vec![Bytes::from_static(BODY)];
    let events = per_event(BODY);
    let chunks = parse(whole.clone());
    assert_eq!(chunks.len() as u64, CHUNKS, "the fixture has 64 chunks");

    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Elements(CHUNKS));
    group.bench_function("parse_64_chunks_one_read", |b| {
        b.iter(|| parse(black_box(whole.clone())))
    });
    group.bench_function("parse_64_chunks_read_per_event", |b| {
        b.iter(|| parse(black_box(events.clone())))
    });
    // Baseline: only the JSON decoding of the same 64 `data:` payloads.
    let payloads: Vec<&str> = std::str::from_utf8(BODY)
        .unwrap_or_default()
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| data.starts_with('{'))
        .collect();
    group.bench_function("json_only_64_chunks", |b| {
        b.iter(|| {
            let parsed = payloads.iter().filter_map(|data| {
                serde_json::from_str::<ChatCompletionChunk>(black_box(data)).ok()
            });
            parsed.count()
        })
    });
    let mut out = Vec::with_capacity(BODY.len());
    group.bench_function("encode_64_chunks", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&chunks), &mut out).map(|()| out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
