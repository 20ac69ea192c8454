//! `/activity.csv` and `/activity.json`: every request matching the same
//! filters as the page (all pages, not one), streamed. The body is built a
//! chunk at a time from the keyset query on a blocking thread, so a log of
//! a million rows never sits in memory. CSV follows RFC 4180 and defuses
//! spreadsheet formulas; times carry the account's zone, named in the CSV
//! header and the JSON document; costs are exact decimal USD.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use futures_util::stream;
use serde_json::json;
use tokun_storage::{
    AccountId, KeyId, StatusClass, Store, UsageCursor, UsageFilter, UsageRecord, UsageRow,
};

use super::filters::{ActivityQuery, Filters, Zone};
use super::unreadable;
use crate::console::layout::error_page;
use crate::console::{Signed, internal};
use crate::state::AppState;

/// Rows per chunk of the body.
const CHUNK_ROWS: usize = 1_000;
/// Records one chunk may read looking for matches before it yields.
const CHUNK_SCAN: usize = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Json,
}

/// Everything a chunk needs, moved to the blocking thread and back.
struct Export {
    store: Store,
    account: AccountId,
    filter: UsageFilter,
    zone: Zone,
    keys: Arc<HashMap<KeyId, (String, String)>>,
    format: Format,
    /// Where the next chunk starts; `None` once the log is read to the end.
    next: Option<Option<UsageCursor>>,
    /// Rows written so far (the JSON commas).
    written: usize,
}

/// `GET /activity.csv`.
pub async fn csv(state: State<AppState>, who: Signed, uri: Uri) -> Response {
    export(state, who, uri, Format::Csv).await
}

/// `GET /activity.json`.
pub async fn json(state: State<AppState>, who: Signed, uri: Uri) -> Response {
    export(state, who, uri, Format::Json).await
}

async fn export(State(state): State<AppState>, who: Signed, uri: Uri, format: Format) -> Response {
    let Some(query) = ActivityQuery::from_uri(&uri) else {
        return unreadable(&who);
    };
    let store = state.services().store.clone();
    let keys = match store.keys_for(who.account) {
        Ok(keys) => keys,
        Err(error) => return internal(error, Some(&who)),
    };
    let zone = Zone::named(&who.profile.time_zone);
    let filters = Filters::check(query, who.account, &keys, &zone);
    if let Some((_, message)) = filters.errors.first() {
        return error_page(StatusCode::BAD_REQUEST, &format!("{message}."), Some(&who));
    }
    let names = keys
        .iter()
        .map(|k| (k.id, (k.name.clone(), k.prefix.clone())))
        .collect();
    let head = match format {
        Format::Csv => csv_header(&zone),
        Format::Json => json_head(&zone, &filters.query),
    };
    let export = Export {
        store,
        account: who.account,
        filter: filters.filter,
        zone,
        keys: Arc::new(names),
        format,
        next: Some(filters.before),
        written: 0,
    };
    let chunks = stream::unfold(Some(export), |export| async move {
        let mut export = export?;
        let before = export.next?;
        let joined = tokio::task::spawn_blocking(move || {
            let chunk = export.chunk(before);
            (export, chunk)
        })
        .await;
        match joined {
            Ok((export, Ok(bytes))) => Some((Ok(bytes), Some(export))),
            Ok((_, Err(error))) => {
                tracing::warn!(%error, "an activity export failed part way");
                Some((Err(std::io::Error::other("the export failed")), None))
            }
            Err(error) => {
                tracing::warn!(%error, "an activity export chunk panicked");
                Some((Err(std::io::Error::other("the export failed")), None))
            }
        }
    });
    let body = stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(head)) });
    let mut response = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        body, chunks,
    )));
    let (content_type, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "tokun-activity.csv"),
        Format::Json => ("application/json", "tokun-activity.json"),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl Export {
    /// The next rows as bytes (the JSON document's end after the last).
    fn chunk(&mut self, before: Option<UsageCursor>) -> Result<Bytes, tokun_storage::StorageError> {
        let page =
            self.store
                .usage_page(self.account, &self.filter, before, CHUNK_ROWS, CHUNK_SCAN)?;
        let mut out = String::with_capacity(page.rows.len() * 256);
        for row in &page.rows {
            match self.format {
                Format::Csv => self.csv_row(row, &mut out),
                Format::Json => {
                    out.push_str(if self.written == 0 { "\n" } else { ",\n" });
                    out.push_str(&self.json_row(row).to_string());
                }
            }
            self.written += 1;
        }
        self.next = page.older.map(Some);
        if self.next.is_none() && self.format == Format::Json {
            out.push_str("\n]}\n");
        }
        Ok(Bytes::from(out))
    }

    fn key_parts(&self, record: &UsageRecord) -> (String, String) {
        let id = record.key.map(|k| k.to_string()).unwrap_or_default();
        let name = record
            .key
            .and_then(|k| self.keys.get(&k))
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        (id, name)
    }

    fn csv_row(&self, row: &UsageRow, out: &mut String) {
        let r = &row.record;
        let (key, key_name) = self.key_parts(r);
        let fields = [
            r.request_id.clone(),
            self.zone.rfc3339(r.at_ms),
            key,
            key_name,
            r.model.clone(),
            r.served_model.clone(),
            r.provider.clone(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
            r.cost.to_string(),
            if r.estimated { "estimated" } else { "exact" }.to_owned(),
            r.status.to_string(),
            StatusClass::of(r).as_str().to_owned(),
            r.transport.clone(),
            r.latency_ms.to_string(),
            r.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
            r.error_kind.clone().unwrap_or_default(),
            r.cached_tokens.to_string(),
            r.route.map(|route| route.to_string()).unwrap_or_default(),
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&csv_field(field));
        }
        out.push_str("\r\n");
    }

    fn json_row(&self, row: &UsageRow) -> serde_json::Value {
        let r = &row.record;
        let (key, key_name) = self.key_parts(r);
        json!({
            "request_id": r.request_id,
            "time": self.zone.rfc3339(r.at_ms),
            "at_ms": r.at_ms,
            "key": (!key.is_empty()).then_some(key),
            "key_name": key_name,
            "model": r.model,
            "served_model": r.served_model,
            "provider": r.provider,
            "prompt_tokens": r.prompt_tokens,
            "cached_tokens": r.cached_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_usd": r.cost.to_string(),
            "usage": if r.estimated { "estimated" } else { "exact" },
            "status": r.status,
            "status_class": StatusClass::of(r).as_str(),
            "transport": r.transport,
            "latency_ms": r.latency_ms,
            "ttft_ms": r.ttft_ms,
            "error_kind": r.error_kind,
            "route": r.route,
        })
    }
}

/// The CSV header row; the time column names the zone.
fn csv_header(zone: &Zone) -> String {
    let time = format!("time ({})", zone.name());
    let names = [
        "request_id",
        time.as_str(),
        "key",
        "key_name",
        "model",
        "served_model",
        "provider",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "usage",
        "status",
        "status_class",
        "transport",
        "latency_ms",
        "ttft_ms",
        "error_kind",
        // Appended, so the columns before them keep their places.
        "cached_tokens",
        "route",
    ];
    let fields: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
    fields.join(",") + "\r\n"
}

/// The JSON document up to its rows: the zone and the filters it holds.
fn json_head(zone: &Zone, query: &ActivityQuery) -> String {
    let filters = json!({
        "from": query.from.trim(),
        "to": query.to.trim(),
        "key": query.key.trim(),
        "model": query.model.trim(),
        "status": query.status.trim(),
    });
    format!(
        "{{\"object\":\"list\",\"time_zone\":{},\"filters\":{},\"data\":[",
        json!(zone.name()),
        filters
    )
}

/// One RFC 4180 field: quoted when it holds a comma, a quote or a line
/// break (quotes doubled), and a leading `=`, `+`, `-` or `@` defused with
/// `'` so a spreadsheet shows it as text instead of running it.
pub fn csv_field(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(
            csv_field("=HYPERLINK(\"x\",\"y\")"),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_field("0.000123"), "0.000123");
    }

    #[test]
    fn the_header_names_the_zone() {
        let header = csv_header(&Zone::named("Europe/Paris"));
        assert!(header.starts_with("request_id,time (Europe/Paris),key,"));
        assert!(header.ends_with("error_kind,cached_tokens,route\r\n"));
    }
}
