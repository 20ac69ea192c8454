//! One statement line's ledger entries (`/billing/entries?month=YYYY-MM&kind=…`):
//! seq, time, kind, amount, balance after and reason, newest first, 50 a
//! page (`before=SEQ` for the next), from the same walk as the statement.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use tokun_storage::{LedgerEntry, Nanos};

use super::super::format::{count, datetime, usd};
use super::super::layout::{page, respond};
use super::super::{Signed, error_page, internal};
use super::statement::{Group, Month, signed};
use crate::state::AppState;

/// Entries per page of `/billing/entries`.
const PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EntriesQuery {
    month: String,
    kind: String,
    /// Show entries with a seq below this one (the next page).
    before: String,
}

/// `GET /billing/entries?month=YYYY-MM&kind=…&before=SEQ`: one line's
/// ledger entries, newest first, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    who: Signed,
    Query(query): Query<EntriesQuery>,
) -> Response {
    let month = Month::parse(&query.month);
    let group = Group::parse(query.kind.trim());
    let before = match query.before.trim() {
        "" => Some(u64::MAX),
        text => text.parse::<u64>().ok(),
    };
    let (Some(month), Some(group), Some(before)) = (month, group, before) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This list needs a month like 2026-12 and a kind of entry. Open it from a statement.",
            Some(&who),
        );
    };
    let mut found: Vec<LedgerEntry> = Vec::new();
    let mut total = (0u64, Nanos::ZERO);
    let walked = state.services().store.period(
        who.account,
        month.start_ms(),
        month.end_ms(),
        |entry, change| {
            if Group::of(entry) != group {
                return;
            }
            total = (total.0 + 1, total.1.saturating_add(change.balance));
            if entry.seq < before && found.len() <= PAGE {
                found.push(entry.clone());
            }
        },
    );
    if let Err(error) = walked {
        return internal(error, Some(&who));
    }
    let more = found.len() > PAGE;
    found.truncate(PAGE);
    let next = more
        .then(|| found.last().map(|e| e.seq))
        .flatten()
        .map(|seq| {
            format!(
                "/billing/entries?month={month}&kind={}&before={seq}",
                group.slug()
            )
        });
    let body = html! {
        h1 { (group.label()) ", " (month.label()) }
        p.lead { (group.explanation()) " UTC times." }
        p { (count(total.0)) " " (if total.0 == 1 { "entry" } else { "entries" })
            ", changing the balance by " strong.nowrap { (signed(total.1)) } "." }
        @if found.is_empty() {
            p.empty { "No entries of this kind in " (month.label()) "." }
        } @else {
            (entries_table(&found))
        }
        nav.pager aria-label="Pages" {
            @if before != u64::MAX {
                a href=(format!("/billing/entries?month={month}&kind={}", group.slug())) { "Newest entries" }
            }
            @if let Some(next) = next { a rel="next" href=(next) { "Older entries" } }
        }
        p { a href=(format!("/billing/statement?month={month}")) { "Back to the statement for " (month.label()) } }
    };
    respond(StatusCode::OK, page("Billing", Some(&who), body))
}

fn entries_table(entries: &[LedgerEntry]) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr {
                    th.num scope="col" { "Seq" }
                    th scope="col" { "Time" }
                    th scope="col" { "Kind" }
                    th.num scope="col" { "Amount" }
                    th.num scope="col" { "Balance after" }
                    th scope="col" { "Reason" }
                } }
                tbody {
                    @for entry in entries {
                        tr {
                            td.num { (entry.seq) }
                            td { (datetime(entry.at_ms)) }
                            td { (entry.kind.as_str()) @if entry.estimated { " (est.)" } }
                            td.num { (usd(entry.amount)) }
                            td.num { (usd(entry.balance_after)) }
                            td.reason {
                                @match (&entry.reference, &entry.request_id) {
                                    (Some(reference), _) => (reference),
                                    (None, Some(request)) => {
                                        "request "
                                        @if request.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                                            a href=(format!("/activity/{request}")) { (request) }
                                        } @else { (request) }
                                    },
                                    (None, None) => "",
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
