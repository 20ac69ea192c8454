//! One `/v1/ws` text frame through the client-message decoder (and the
//! `id` peek used for frames over the rate limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokun::fuzzing;

fuzz_target!(|data: &[u8]| {
    // A text frame is valid UTF-8 by the time the socket reads it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = fuzzing::ws_peek_id(text);
    match fuzzing::ws_client_message(text) {
        Ok(Some(request)) => {
            serde_json::to_vec(&request).expect("a decoded request serializes");
        }
        Ok(None) => {}
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
