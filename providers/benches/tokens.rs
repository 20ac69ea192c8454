//! Token counting on the request path: a small chat prompt's estimate and
//! counting one streamed token piece, with the encoding already loaded.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tokun_providers::ChatRequest;
use tokun_providers::tokens::{count_text, estimate_prompt, warm_up};

fn small_prompt() -> Option<ChatRequest> {
    serde_json::from_str(
        r#"{"model":"gpt-4o","messages":[
            {"role":"system","content":"You are a helpful assistant. Answer briefly."},
            {"role":"user","content":"What is the capital of France, and why is it famous?"}
        ]}"#,
    )
    .ok()
}

fn tokens(c: &mut Criterion) {
    warm_up();
    let Some(prompt) = small_prompt() else { return };
    c.bench_function("tokens/estimate_small_prompt", |b| {
        b.iter(|| estimate_prompt(black_box(&prompt)))
    });
    c.bench_function("tokens/count_one_piece", |b| {
        b.iter(|| count_text(black_box(" Paris")))
    });
}

criterion_group!(benches, tokens);
criterion_main!(benches);
