//! `GET /keys/{id}/debug`: what request debugging kept of one key's
//! requests (the same bodies as `GET /v1/keys/{id}/debug`), newest first,
//! 20 to a page with a link to older ones: when, the model, the status, and
//! the request and its answer as pretty-printed JSON inside `<details>`
//! (escaped by maud like every other value). Another account's key is the
//! console's 404, like a key that does not exist.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;
use tokun_storage::{DebugBodyId, StoredDebugBody};

use super::super::format::datetime;
use super::super::layout::{page, respond};
use super::super::{Signed, internal};
use super::{not_found, owned_key};
use crate::api::debug::RETENTION_MS;
use crate::state::AppState;

/// Bodies per page.
const PAGE: usize = 20;

/// `GET /keys/{id}/debug`; `?before=<id>` shows the ones older than it.
pub async fn show(
    State(state): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let key = match owned_key(&state, &who, &id) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let before = match before_of(query.as_deref()) {
        Ok(before) => before,
        Err(()) => return not_found(&who),
    };
    let bodies = match state
        .services()
        .store
        .debug_bodies_of_key(key.id, before, PAGE)
    {
        Ok(page) => page,
        Err(error) => return internal(error, Some(&who)),
    };
    let older = bodies
        .rows
        .last()
        .filter(|_| bodies.has_more)
        .map(|row| format!("/keys/{}/debug?before={}", key.id, row.id));
    let body = html! {
        p { a href="/keys" { "← API keys" } }
        h1 { "Stored requests of “" (key.name) "”" }
        @if key.is_revoked() {
            p.lead { "This key is revoked: what debugging kept of it was deleted." }
        } @else if key.debug {
            p.lead { "Debugging is on: each request made with this key is kept here with its answer for 7 days." }
        } @else {
            p.lead { "Debugging is off: nothing new is kept. What was kept is deleted 7 days after its request." }
        }
        @if bodies.rows.is_empty() {
            p.muted { @if before.is_some() { "No older requests are kept." } @else { "No requests are kept for this key." } }
        } @else {
            ol.debug-list aria-label="Stored requests, newest first" {
                @for row in &bodies.rows {
                    li { (entry(row)) }
                }
            }
        }
        @if let Some(older) = older {
            p { a href=(older) { "Older requests" } }
        }
    };
    respond(StatusCode::OK, page("Keys", Some(&who), body))
}

/// One request: when, which model, how it ended, and both bodies.
fn entry(row: &StoredDebugBody) -> Markup {
    let body = &row.body;
    html! {
        article.debug-body id=(row.id.to_string()) {
            h2 { (datetime(body.at_ms)) " · " (body.model) " · " (status_text(body.status)) }
            dl.facts {
                dt { "Request id" } dd { code { (body.request_id) } }
                dt { "Transport" } dd { (body.transport) }
                dt { "Deleted on" } dd { (datetime(body.at_ms.saturating_add(RETENTION_MS))) }
            }
            details {
                summary { "Request" }
                pre { code { (pretty(&body.request)) } }
            }
            details {
                summary { "Response" }
                pre { code { (pretty(&body.response)) } }
            }
        }
    }
}

fn status_text(status: u16) -> String {
    match status {
        200 => "200 OK".to_owned(),
        499 => "client left".to_owned(),
        other => format!("error {other}"),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The `before` of the query string: `None` without one, `Err` when it is
/// not a body's id.
fn before_of(query: Option<&str>) -> Result<Option<DebugBodyId>, ()> {
    let Some(query) = query else { return Ok(None) };
    match query
        .split('&')
        .find_map(|pair| pair.strip_prefix("before="))
    {
        Some(id) => id.parse().map(Some).map_err(|_| ()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_a_body_or_nothing() {
        assert_eq!(before_of(None), Ok(None));
        assert_eq!(before_of(Some("x=1")), Ok(None));
        let id: DebugBodyId = "dbg_5_1".parse().unwrap();
        assert_eq!(before_of(Some("x=1&before=dbg_5_1")), Ok(Some(id)));
        assert_eq!(before_of(Some("before=<script>")), Err(()));
    }
}
