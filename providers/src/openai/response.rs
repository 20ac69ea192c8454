//! Reading what an OpenAI-compatible upstream answered: classifying failures
//! (transport, HTTP status, error envelopes) into [`ProviderError`] and parsing
//! non-streaming bodies. It neither sends requests nor parses event streams.

use std::error::Error as StdError;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::{ProviderError, TimeoutPhase};
use crate::types::ChatCompletion;

/// The most of an error body tokun reads; enough for any real error message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// Upstream messages are cut to this many characters before they travel on.
const MESSAGE_CHARS: usize = 300;
/// Non-JSON bodies (HTML pages from proxies) are cut shorter: they rarely say more.
const TEXT_CHARS: usize = 200;

/// The error for a non-2xx answer. The message never contains `api_key`, even
/// if the upstream echoed it.
pub(crate) fn status_error(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    api_key: Option<&str>,
) -> ProviderError {
    ProviderError::Status {
        status,
        message: redact(error_message(body), api_key),
        retry_after: retry_after(headers),
    }
}

/// Reads (a bounded prefix of) a non-2xx answer: its status, headers and body.
/// A read error only shortens the body; the status is what matters.
pub(crate) async fn read_error_body(mut response: reqwest::Response) -> (u16, HeaderMap, Vec<u8>) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = ERROR_BODY_LIMIT.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    (status, headers, body)
}

/// How long the upstream asked to wait: `retry-after-ms` (OpenAI's precise
/// form) wins over `retry-after` in seconds. HTTP dates are ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    header("retry-after-ms")
        .and_then(|text| parse_duration(text, Duration::from_millis(1)))
        .or_else(|| {
            header("retry-after").and_then(|text| parse_duration(text, Duration::from_secs(1)))
        })
}

/// A short human message for an error body: the upstream's `error.message` when
/// the body is an OpenAI error envelope, else the body's text, shortened.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Some(message) = upstream_error_message(&text) {
        return message;
    }
    let text = if text.trim_start().starts_with('<') {
        strip_tags(&text)
    } else {
        text.into_owned()
    };
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        "(empty body)".to_owned()
    } else {
        truncate(&collapsed, TEXT_CHARS)
    }
}

/// The message of an error envelope (`{"error": {"message": …}}`, `{"error": "…"}`,
/// or the `[{"error": …}]` some compatible servers send), if `body` is one.
pub(crate) fn upstream_error_message(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let error = value.get("error").or_else(|| value.get(0)?.get("error"))?;
    let message = match error {
        Value::Object(fields) => match fields.get("message").and_then(Value::as_str) {
            Some(message) if !message.trim().is_empty() => message.to_owned(),
            _ => error.to_string(),
        },
        Value::String(message) if !message.trim().is_empty() => message.clone(),
        _ => return None,
    };
    Some(truncate(&message, MESSAGE_CHARS))
}

/// Parses a 2xx non-streaming body. An error envelope with a 2xx status is the
/// upstream's failure (`Stream`); anything else that is not a completion is `Protocol`.
pub(crate) fn parse_completion(body: &[u8]) -> Result<ChatCompletion, ProviderError> {
    match serde_json::from_slice::<ChatCompletion>(body) {
        Ok(completion) => match completion.extra.get("error") {
            Some(error) if !error.is_null() => Err(ProviderError::Stream {
                message: upstream_error_message(&serde_json::json!({ "error": error }).to_string())
                    .unwrap_or_else(|| "the upstream reported an error".to_owned()),
            }),
            _ => Ok(completion),
        },
        Err(err) => {
            let text = String::from_utf8_lossy(body);
            if let Some(message) = upstream_error_message(&text) {
                return Err(ProviderError::Stream { message });
            }
            let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
            Err(ProviderError::Protocol {
                detail: format!(
                    "invalid completion body ({err}): {}",
                    truncate(&collapsed, 120)
                ),
            })
        }
    }
}

/// Classifies a failure to send the request or to receive response headers.
/// Nothing reached the client yet, so the connect-like cases stay retryable.
pub(crate) fn send_error(err: reqwest::Error) -> ProviderError {
    // The URL is dropped: a base URL may carry credentials in its query.
    let err = err.without_url();
    if err.is_builder() {
        return ProviderError::Request {
            detail: chain(&err),
        };
    }
    if err.is_timeout() {
        let phase = if err.is_connect() {
            TimeoutPhase::Connect
        } else {
            TimeoutPhase::FirstByte
        };
        return ProviderError::Timeout { phase };
    }
    ProviderError::Connect {
        detail: chain(&err),
    }
}

/// Classifies a failure while reading a response body (after the headers).
pub(crate) fn body_error(err: reqwest::Error) -> ProviderError {
    let err = err.without_url();
    if err.is_timeout() {
        ProviderError::Timeout {
            phase: TimeoutPhase::Idle,
        }
    } else {
        ProviderError::Truncated
    }
}

/// Cuts `text` to at most `max_chars` characters, marking the cut with `…`.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Replaces every occurrence of the API key in `message`.
pub(crate) fn redact(message: String, api_key: Option<&str>) -> String {
    match api_key {
        Some(key) if !key.is_empty() && message.contains(key) => message.replace(key, "[redacted]"),
        _ => message,
    }
}

/// `text` as a non-negative decimal number of `unit`s ("7", "1.5"), or `None`.
fn parse_duration(text: &str, unit: Duration) -> Option<Duration> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let mut total = unit.checked_mul(whole.parse().ok()?)?;
    // Three decimals are plenty for a back-off hint.
    let fraction = fraction.get(..fraction.len().min(3)).unwrap_or("");
    if !fraction.is_empty() {
        let scale = 10u32.checked_pow(fraction.len() as u32)?;
        let part = unit
            .checked_mul(fraction.parse().ok()?)?
            .checked_div(scale)?;
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// The text of an HTML page, tags removed.
fn strip_tags(html: &str) -> String {
    let mut text = String::with_capacity(html.len().min(TEXT_CHARS * 4));
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// An error and its sources, joined, for `detail` fields.
fn chain(err: &dyn StdError) -> String {
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    truncate(&detail, MESSAGE_CHARS)
}
