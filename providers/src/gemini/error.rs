//! Classifying Gemini's non-2xx answers. The shared OpenAI classifier reads
//! Google's envelope (`{"error":{"code","message","status","details"}}`) for
//! the message; this adds the back-off hint Google puts in the body
//! (`google.rpc.RetryInfo.retryDelay`) when no `retry-after` header came.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::ProviderError;
use crate::openai::response as wire;

/// The error for a non-2xx answer; its message never contains `api_key`.
pub(crate) fn status_error(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    api_key: Option<&str>,
) -> ProviderError {
    let mut err = wire::status_error(status, headers, body, api_key);
    if let ProviderError::Status { retry_after, .. } = &mut err {
        if retry_after.is_none() {
            *retry_after = retry_delay(body);
        }
    }
    err
}

/// `retryDelay` (like `"34s"` or `"1.5s"`) of a `RetryInfo` detail, if any.
/// Google sends the envelope alone or, for streaming calls, in a one-element list.
fn retry_delay(body: &[u8]) -> Option<Duration> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error").or_else(|| value.get(0)?.get("error"))?;
    let details = error.get("details")?.as_array()?;
    let info = details.iter().find(|detail| {
        detail
            .get("@type")
            .and_then(Value::as_str)
            .is_some_and(|kind| kind.ends_with("google.rpc.RetryInfo"))
    })?;
    let seconds = info.get("retryDelay")?.as_str()?.strip_suffix('s')?;
    let seconds: f64 = seconds.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    const QUOTA: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"34s"}]}}"#;

    #[test]
    fn retry_info_in_the_body_is_the_fallback_hint() {
        let err = status_error(429, &HeaderMap::new(), QUOTA.as_bytes(), None);
        assert_eq!((err.kind(), err.retryable()), ("rate_limited", true));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(34)));
        assert_eq!(
            err.to_string(),
            "the upstream answered HTTP 429: You exceeded your current quota."
        );

        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        let header_wins = status_error(429, &headers, QUOTA.as_bytes(), None);
        assert_eq!(header_wins.retry_after(), Some(Duration::from_secs(2)));

        let listed = format!("[{QUOTA}]");
        let err = status_error(429, &HeaderMap::new(), listed.as_bytes(), None);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(34)));
    }

    #[test]
    fn odd_delays_are_ignored() {
        for delay in ["\"soon\"", "\"-1s\"", "\"1e400s\"", "5"] {
            let body = format!(
                r#"{{"error":{{"message":"x","details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":{delay}}}]}}}}"#
            );
            assert_eq!(retry_delay(body.as_bytes()), None, "{delay}");
        }
        assert_eq!(retry_delay(b"{\"error\":{\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"0.25s\"}]}}"), Some(Duration::from_millis(250)));
    }
}
