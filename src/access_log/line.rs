//! One access log line as JSON, and the one rule for what of a URL may be
//! written: the path, and of the query only tokun's own non-secret
//! parameters (`QUERY_KEPT`). Every other parameter — a `/v1/ws` ticket, an
//! OIDC `code` and `state`, a Stripe `session_id`, a `key=` some client
//! sends, an admin `search` for an email — is dropped whole, name and value.
//! An allow-list rather than a list of secret-looking names, because a
//! secret can hide under any name, and a new parameter should have to be
//! declared harmless before it is logged.

use std::borrow::Cow;
use std::net::IpAddr;

use axum::http::{HeaderValue, Uri};
use jiff::Timestamp;
use serde::Serialize;

use super::{Kind, Record};

/// The query parameters whose names and values are logged; all others are
/// dropped. Each is one of tokun's own filters or page cursors.
pub const QUERY_KEPT: &[&str] = &[
    "all",
    "before",
    "format",
    "from",
    "kind",
    "limit",
    "max_tokens",
    "model",
    "month",
    "status",
    "temperature",
    "to",
    "top",
];

/// Longest path (with its kept query) and user agent written, in bytes.
const MAX_PATH_BYTES: usize = 2048;
const MAX_USER_AGENT_BYTES: usize = 512;

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    ip: Option<IpAddr>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    user_agent: Option<Cow<'a, str>>,
    request_id: Option<Cow<'a, str>>,
    kind: &'static str,
}

/// Appends `record` to `out` as one JSON object and a newline.
pub fn write_line(record: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let path = loggable_path(&record.uri);
    let line = Line {
        ts: timestamp(record.ts_ms),
        ip: record.ip,
        method: record.method.as_str(),
        path: clip(&path, MAX_PATH_BYTES),
        status: record.status,
        bytes: record.bytes,
        // Microseconds as fractional milliseconds: most requests take less than one.
        duration_ms: record.duration.as_micros() as f64 / 1000.0,
        user_agent: record
            .user_agent
            .as_ref()
            .map(|v| text(v, MAX_USER_AGENT_BYTES)),
        request_id: record.request_id.as_ref().map(|v| text(v, 64)),
        kind: match record.kind {
            Kind::Http => "http",
            Kind::WebSocket => "websocket",
        },
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

/// The path and, of the query, only the parameters in [`QUERY_KEPT`], as
/// received (still percent-encoded). A parameter whose name is encoded
/// (`tick%65t`) matches nothing and is dropped too.
pub fn loggable_path(uri: &Uri) -> Cow<'_, str> {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return Cow::Borrowed(path);
    };
    let mut out = String::with_capacity(path.len() + query.len() + 1);
    out.push_str(path);
    let mut separator = '?';
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if QUERY_KEPT.contains(&name) {
            out.push(separator);
            out.push_str(pair);
            separator = '&';
        }
    }
    Cow::Owned(out)
}

/// RFC 3339 in UTC with milliseconds: `2025-01-02T03:04:05.678Z`.
fn timestamp(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX);
    format!("{ts:.3}")
}

/// A header's text (invalid UTF-8 replaced), at most `max` bytes.
fn text(value: &HeaderValue, max: usize) -> Cow<'_, str> {
    match String::from_utf8_lossy(value.as_bytes()) {
        Cow::Borrowed(text) => Cow::Borrowed(clip(text, max)),
        Cow::Owned(text) => Cow::Owned(clip(&text, max).to_owned()),
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
