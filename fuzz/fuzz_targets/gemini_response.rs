//! A Gemini upstream's answer: the `streamGenerateContent` SSE body (cut at
//! fuzzer-chosen points) through the translator, the same bytes as a
//! non-streaming answer and as a non-2xx error body (with Google's
//! `RetryInfo`). Input layout: see `tokun_fuzz::Input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokun_fuzz::{Input, MODEL, check_completion, check_error, check_status_error, check_stream};
use tokun_providers::{fuzzing, gemini};

/// The prefix of ids tokun makes up when Gemini sent no `responseId`.
const GENERATED_ID: &str = "chatcmpl-gemini-";

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else {
        return;
    };
    check_stream(
        &input,
        |body| gemini::parse_chunk_stream(body, MODEL),
        // A generated id is read off the clock, so two parses differ there.
        |chunk| {
            if chunk.id.starts_with(GENERATED_ID) {
                chunk.id = GENERATED_ID.to_owned();
            }
        },
    );
    let (completion, instead_of_stream) = fuzzing::gemini_completion(input.body, MODEL);
    check_completion(completion);
    check_error(&instead_of_stream);
    check_status_error(&input, true);
});
