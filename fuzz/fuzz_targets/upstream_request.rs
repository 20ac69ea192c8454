//! A client's chat request body, parsed as the edge parses it, then built
//! into each upstream's request (OpenAI streaming and not, Anthropic
//! streaming and not, Gemini). Every body built must be JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokun_providers::{ChatRequest, ProviderError, fuzzing};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = tokun::api::parse_json::<ChatRequest>(data) else {
        return;
    };
    for built in [
        fuzzing::openai_request(&request, false),
        fuzzing::openai_request(&request, true),
        fuzzing::anthropic_request(&request, false),
        fuzzing::anthropic_request(&request, true),
        fuzzing::gemini_request(&request),
    ] {
        check(built);
    }
});

fn check(built: Result<Vec<u8>, ProviderError>) {
    match built {
        Ok(body) => {
            serde_json::from_slice::<serde_json::Value>(&body).expect("a built body is JSON");
        }
        Err(err) => {
            let _ = (err.to_string(), err.kind());
        }
    }
}
