//! An OpenAI upstream's answer: the SSE body (cut at fuzzer-chosen points)
//! through the chunk parser, the same bytes as a non-streaming completion,
//! and as a non-2xx error body. Input layout: see `tokun_fuzz::Input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokun_fuzz::{Input, check_completion, check_status_error, check_stream};
use tokun_providers::{fuzzing, openai};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else {
        return;
    };
    check_stream(&input, openai::parse_chunk_stream, |_| {});
    check_completion(fuzzing::openai_completion(input.body));
    check_status_error(&input, false);
});
