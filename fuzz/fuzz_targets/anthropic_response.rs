//! An Anthropic upstream's answer: the Messages SSE body (cut at
//! fuzzer-chosen points) through the translator, the same bytes as a
//! non-streaming message and as a non-2xx error body. Input layout: see
//! `tokun_fuzz::Input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokun_fuzz::{Input, MODEL, check_completion, check_error, check_status_error, check_stream};
use tokun_providers::{anthropic, fuzzing};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else {
        return;
    };
    check_stream(
        &input,
        |body| anthropic::parse_chunk_stream(body, MODEL),
        |_| {},
    );
    let (completion, instead_of_stream) = fuzzing::anthropic_completion(input.body, MODEL);
    check_completion(completion);
    check_error(&instead_of_stream);
    check_status_error(&input, false);
});
