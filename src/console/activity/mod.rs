//! The activity page (`/activity`): the account's request log, newest
//! first, a page of 50 at a time read with keyset paging from the store
//! (`Store::usage_page`: never the whole log), filtered by date range in the
//! account's time zone, key, model and status (a GET form, so the filters
//! live in the URL); the detail of one request (`detail.rs`) and the CSV
//! and JSON exports of exactly the filtered rows (`export.rs`). The query
//! string and the time zone are read in `filters.rs`.

mod detail;
mod export;
mod filters;

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use tokun_storage::{KeyId, KeyRecord, StatusClass, UsagePage, UsageRecord, UsageRow};

pub use detail::show as detail;
pub use export::{csv, json};

use super::format::{count, usd};
use super::layout::{Field, error_page, error_summary, page, respond};
use super::{Signed, internal};
use crate::state::AppState;
use filters::{ActivityQuery, Filters, Zone, percent_encode};

/// Rows on a page.
pub const PAGE_ROWS: usize = 50;
/// Records one page may read before it stops and offers to go on: a sparse
/// filter costs at most this much per page.
pub const PAGE_SCAN: usize = 5_000;

/// `GET /activity`.
pub async fn list(State(state): State<AppState>, who: Signed, uri: Uri) -> Response {
    let Some(query) = ActivityQuery::from_uri(&uri) else {
        return unreadable(&who);
    };
    let store = &state.services().store;
    let keys = match store.keys_for(who.account) {
        Ok(keys) => keys,
        Err(error) => return internal(error, Some(&who)),
    };
    let zone = Zone::named(&who.profile.time_zone);
    let filters = Filters::check(query, who.account, &keys, &zone);
    if !filters.errors.is_empty() {
        let body = body(&state, &filters, &keys, &zone, None);
        return respond(StatusCode::BAD_REQUEST, page("Activity", Some(&who), body));
    }
    let found = store.usage_page(
        who.account,
        &filters.filter,
        filters.before,
        PAGE_ROWS,
        PAGE_SCAN,
    );
    match found {
        Ok(found) => {
            let body = body(&state, &filters, &keys, &zone, Some(&found));
            respond(StatusCode::OK, page("Activity", Some(&who), body))
        }
        Err(error) => internal(error, Some(&who)),
    }
}

/// A query string that is not a form at all (say, a field given twice).
fn unreadable(who: &Signed) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "These filters could not be read. Start again from the activity page.",
        Some(who),
    )
}

/// A key as people know it: its name and the start of its secret.
fn key_label(key: Option<KeyId>, names: &HashMap<KeyId, &KeyRecord>) -> String {
    match key.and_then(|id| names.get(&id)) {
        Some(record) if record.name.is_empty() => format!("{}…", record.prefix),
        Some(record) => format!("{} ({}…)", record.name, record.prefix),
        None => key.map_or_else(|| "—".to_owned(), |id| id.to_string()),
    }
}

/// `OK`, or `Failed` with why: the words carry it, not only the colour.
fn status_text(record: &UsageRecord) -> (bool, String) {
    match StatusClass::of(record) {
        StatusClass::Ok => (false, format!("{} OK", record.status)),
        StatusClass::Error => (
            true,
            format!(
                "Failed: ended early ({})",
                record.error_kind.as_deref().unwrap_or("error")
            ),
        ),
        _ => (
            true,
            match &record.error_kind {
                Some(kind) => format!("Failed: {} ({kind})", record.status),
                None => format!("Failed: {}", record.status),
            },
        ),
    }
}

fn status_label(class: StatusClass) -> &'static str {
    match class {
        StatusClass::Ok => "OK",
        StatusClass::ClientError => "Failed: 4xx",
        StatusClass::ServerError => "Failed: 5xx",
        StatusClass::Error => "Failed: ended early",
    }
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or_else(|| "—".to_owned(), |ms| format!("{} ms", count(ms)))
}

/// Where a row's detail page is: its request id, and its place in the log
/// so the page reads one record.
fn detail_href(row: &UsageRow) -> String {
    format!(
        "/activity/{}?at={}",
        percent_encode(&row.record.request_id),
        row.cursor.to_text()
    )
}

fn body(
    state: &AppState,
    filters: &Filters,
    keys: &[KeyRecord],
    zone: &Zone,
    found: Option<&UsagePage>,
) -> Markup {
    let error = |field: &str| {
        filters
            .errors
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, message)| *message)
    };
    html! {
        h1 { "Activity" }
        p.muted {
            "Every request made with your keys, newest first. Times are in "
            strong { (zone.name()) } " ("
            a href="/account" { "change" } ")."
        }
        (error_summary(filters.errors.iter().copied()))
        (filter_form(state, filters, keys, &error))
        @if let Some(found) = found {
            (results(filters, keys, zone, found))
        }
    }
}

fn filter_form<'a>(
    state: &AppState,
    filters: &Filters,
    keys: &[KeyRecord],
    error: &dyn Fn(&str) -> Option<&'a str>,
) -> Markup {
    let query = &filters.query;
    html! {
        form.activity-filters method="get" action="/activity" novalidate {
            (Field { name: "from", label: "From", hint: None, kind: "date", value: query.from.trim(), error: error("from"), autocomplete: "off", inputmode: None, class: None }.render())
            (Field { name: "to", label: "To", hint: None, kind: "date", value: query.to.trim(), error: error("to"), autocomplete: "off", inputmode: None, class: None }.render())
            div.field.field-error[error("key").is_some()] {
                label for="key" { "Key" }
                @if let Some(message) = error("key") {
                    span.message id="key-error" { span.visually-hidden { "Error: " } (message) }
                }
                select id="key" name="key" {
                    option value="" { "All keys" }
                    @for key in keys {
                        @let id = key.id.to_string();
                        option value=(id) selected[query.key.trim() == id] {
                            (if key.name.is_empty() { key.prefix.clone() } else { format!("{} ({}…)", key.name, key.prefix) })
                        }
                    }
                }
            }
            div.field.field-error[error("model").is_some()] {
                label for="model" { "Model" }
                @if let Some(message) = error("model") {
                    span.message id="model-error" { span.visually-hidden { "Error: " } (message) }
                }
                input id="model" name="model" type="text" value=(query.model) list="models" autocomplete="off"
                    aria-invalid=[error("model").map(|_| "true")];
                datalist id="models" {
                    @for model in &state.config().models { option value=(model.id) {} }
                }
            }
            div.field.field-error[error("status").is_some()] {
                label for="status" { "Status" }
                @if let Some(message) = error("status") {
                    span.message id="status-error" { span.visually-hidden { "Error: " } (message) }
                }
                select id="status" name="status" {
                    option value="" { "Any status" }
                    @for class in StatusClass::ALL {
                        option value=(class.as_str()) selected[query.status.trim() == class.as_str()] { (status_label(class)) }
                    }
                }
            }
            @if let Some(message) = error("before") {
                p.message id="before" { (message) " " a href=(query.link("/activity", None)) { "Newest requests" } }
            }
            div.filter-actions {
                button type="submit" { "Filter" }
                @if query.is_filtered() { a href="/activity" { "Clear filters" } }
            }
        }
    }
}

fn results(filters: &Filters, keys: &[KeyRecord], zone: &Zone, found: &UsagePage) -> Markup {
    let names: HashMap<KeyId, &KeyRecord> = keys.iter().map(|k| (k.id, k)).collect();
    let query = &filters.query;
    html! {
        p.exports {
            "Download these filtered requests, all pages: "
            a href=(query.link("/activity.csv", None)) download { "CSV" }
            " · "
            a href=(query.link("/activity.json", None)) download { "JSON" }
        }
        @if found.rows.is_empty() && !found.stopped_early {
            div.empty {
                @if filters.before.is_some() {
                    p { "No older requests match." }
                } @else if query.is_filtered() {
                    p { "No requests match these filters." }
                    p { a href="/activity" { "Clear filters" } }
                } @else {
                    p { "No requests yet. Requests made with your API keys appear here within a moment of finishing." }
                }
            }
        } @else {
            div.table-wrap {
                table.activity {
                    caption.visually-hidden { "Requests, newest first" }
                    thead { tr {
                        th scope="col" { "Time (" (zone.name()) ")" }
                        th scope="col" { "Key" }
                        th scope="col" { "Model" }
                        th scope="col" { "Provider" }
                        th scope="col" class="num" { "Tokens in / out" }
                        th scope="col" class="num" { "Cost" }
                        th scope="col" class="num" { "Latency" }
                        th scope="col" class="num" { "TTFT" }
                        th scope="col" { "Status" }
                        th scope="col" { "Transport" }
                    } }
                    tbody {
                        @for row in &found.rows { (table_row(row, &names, zone)) }
                    }
                }
            }
        }
        @if found.stopped_early {
            p.notice role="status" {
                "Searched " (count(found.scanned as u64)) " requests"
                @if found.rows.is_empty() { " without a match" }
                ". Older requests are not searched yet: "
                "“Older” goes on from there."
            }
        }
        nav.pager aria-label="Pages" {
            @if filters.before.is_some() {
                a href=(query.link("/activity", None)) { "← Newest" }
            }
            @if let Some(older) = found.older {
                a href=(query.link("/activity", Some(older))) rel="next" { "Older →" }
            }
        }
    }
}

fn table_row(row: &UsageRow, names: &HashMap<KeyId, &KeyRecord>, zone: &Zone) -> Markup {
    let record = &row.record;
    let (failed, status) = status_text(record);
    let key = record.key.and_then(|id| names.get(&id));
    html! {
        tr {
            td data-label=(format!("Time ({})", zone.name())) {
                a href=(detail_href(row)) { time datetime=(zone.rfc3339(record.at_ms)) { (zone.display(record.at_ms)) } }
            }
            td data-label="Key" { span {
                @match key {
                    Some(key) if !key.name.is_empty() => { (key.name) br; span.muted { (key.prefix) "…" } }
                    _ => { (key_label(record.key, names)) }
                }
            } }
            td data-label="Model" { span {
                (record.model)
                @if !record.served_model.is_empty() && record.served_model != record.model {
                    br; span.muted { "→ " (record.served_model) }
                }
            } }
            td data-label="Provider" { span { @if record.provider.is_empty() { "—" } @else { (record.provider) } } }
            td.num data-label="Tokens in / out" { span { (count(record.prompt_tokens)) " / " (count(record.completion_tokens)) } }
            td.num data-label="Cost" { span {
                (usd(record.cost))
                @if record.estimated { br; span.muted { "estimated" } }
            } }
            td.num data-label="Latency" { span { (millis(Some(record.latency_ms))) } }
            td.num data-label="TTFT" { span { (millis(record.ttft_ms)) } }
            td data-label="Status" { span { @if failed { strong.status-failed { (status) } } @else { (status) } } }
            td data-label="Transport" { span { (record.transport) } }
        }
    }
}
