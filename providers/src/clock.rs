//! The wall clock, in the two units tokun stamps things with: Unix seconds
//! (OpenAI's `created`) and Unix milliseconds (ledger entries, the request
//! log, sign-ins). It lives in the lowest crate so every other one uses this
//! one copy; durations and deadlines use `tokio::time` instead, which tests
//! can pause.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, for comparing with times an upstream sends (rate-limit resets).
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_seconds() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_ms() -> u64 {
    now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Nanoseconds since the Unix epoch, for ids that must differ between calls.
pub fn unix_nanos() -> u128 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}
