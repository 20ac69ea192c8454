//! One request's page (`/activity/{request_id}`): every field the log
//! keeps, whether its usage is exact (the upstream's count) or estimated
//! (tokun's own), why it failed, and a link to the playground with the same
//! model — never the prompt, which tokun does not keep. Another account's
//! request is a 404, like one that never was.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use tokun_storage::{StatusClass, UsageCursor, UsageRow};

use super::filters::{Zone, percent_encode};
use super::{key_label, millis, status_text};
use crate::console::format::{count, usd};
use crate::console::layout::{error_page, page, respond};
use crate::console::{Signed, internal};
use crate::state::AppState;

/// How far back a request id without its place in the log is looked for.
const FIND_SCAN: usize = 200_000;
/// Longer ids were never tokun's.
const ID_CHARS: usize = 128;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct At {
    at: String,
}

/// `GET /activity/{request_id}`; `?at=` (the row's place in the log, put
/// there by the activity table) makes it one read instead of a search.
pub async fn show(
    State(state): State<AppState>,
    who: Signed,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found(&who);
    };
    if id.is_empty() || id.chars().count() > ID_CHARS {
        return not_found(&who);
    }
    let store = &state.services().store;
    let at = axum::extract::Query::<At>::try_from_uri(&uri)
        .ok()
        .and_then(|q| UsageCursor::parse(q.0.at.trim()));
    let direct = match at {
        Some(cursor) => match store.usage_at(who.account, cursor) {
            Ok(found) => found
                .filter(|record| record.request_id == id)
                .map(|record| UsageRow { cursor, record }),
            Err(error) => return internal(error, Some(&who)),
        },
        None => None,
    };
    let row = match direct {
        Some(row) => Some(row),
        None => match store.find_usage(who.account, &id, FIND_SCAN) {
            Ok(found) => found,
            Err(error) => return internal(error, Some(&who)),
        },
    };
    let Some(row) = row else {
        return not_found(&who);
    };
    let keys = match store.keys_for(who.account) {
        Ok(keys) => keys,
        Err(error) => return internal(error, Some(&who)),
    };
    let names = keys.iter().map(|k| (k.id, k)).collect();
    let zone = Zone::named(&who.profile.time_zone);
    let record = &row.record;
    let (failed, status) = status_text(record);
    let playground = format!("/playground?model={}", percent_encode(&record.model));
    let route = match (record.provider.as_str(), record.served_model.as_str()) {
        ("", _) => "No route answered".to_owned(),
        (provider, "") => provider.to_owned(),
        (provider, served) => format!("{provider} / {served}"),
    };
    let position = match record.route {
        Some(0) => "The model's first route".to_owned(),
        Some(n) => format!(
            "Route {} of the model: the ones before it failed or do not serve this kind of request",
            n + 1
        ),
        None => "Not recorded".to_owned(),
    };
    let body = html! {
        p.breadcrumb { a href="/activity" { "← Activity" } }
        h1 { "Request " code { (record.request_id) } }
        dl.facts.request {
            dt { "Time" }
            dd { time datetime=(zone.rfc3339(record.at_ms)) { (zone.display(record.at_ms)) } " " (zone.name()) }
            dt { "Status" }
            dd { @if failed { strong.status-failed { (status) } } @else { (status) } }
            dt { "Status class" } dd { (StatusClass::of(record).as_str()) }
            @if let Some(kind) = &record.error_kind {
                dt { "Error kind" } dd { code { (kind) } }
            }
            dt { "Key" } dd { (key_label(record.key, &names)) }
            dt { "Model asked" } dd { (record.model) }
            dt { "Model served" } dd { @if record.served_model.is_empty() { "—" } @else { (record.served_model) } }
            dt { "Provider" } dd { @if record.provider.is_empty() { "—" } @else { (record.provider) } }
            dt { "Route that answered" } dd { (route) }
            dt { "Route position" } dd { (position) }
            dt { "Prompt tokens" } dd { (count(record.prompt_tokens)) }
            dt { "Cached prompt tokens" } dd { (count(record.cached_tokens)) }
            dt { "Completion tokens" } dd { (count(record.completion_tokens)) }
            dt { "Usage" }
            dd {
                @if record.estimated {
                    strong { "Estimated" } " — counted by tokun; the upstream reported no usage."
                } @else {
                    strong { "Exact" } " — as the upstream reported it."
                }
            }
            dt { "Cost" } dd { (usd(record.cost)) }
            dt { "Latency" } dd { (millis(Some(record.latency_ms))) }
            dt { "Time to first token" } dd { (millis(record.ttft_ms)) }
            dt { "Transport" } dd { (record.transport) }
        }
        p { a.button href=(playground) { "Open in playground" } }
        p.muted { "The playground opens with the same model. Prompts and completions are never stored, so they are not shown here." }
    };
    respond(StatusCode::OK, page("Activity", Some(&who), body))
}

fn not_found(who: &Signed) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "There is no request with this id in your activity.",
        Some(who),
    )
}
