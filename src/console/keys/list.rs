//! The list half of `/keys`: live keys as cards (facts, what each spent in
//! its current limit period, rename, debugging, revoke), the create form
//! below them, and the revoked keys greyed in a table of their own.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use tokun_storage::{KeyId, KeyRecord, LimitReset, Nanos};

use super::super::format::{MS_PER_DAY, date, datetime, usd};
use super::super::layout::{error_summary, page, respond};
use super::super::{Signed, internal};
use super::RenameError;
use super::create::{self, Draft, Errors};
use crate::state::AppState;

/// The configured models, in config order: the create form's choices.
pub fn model_ids(state: &AppState) -> Vec<String> {
    state
        .config()
        .models
        .iter()
        .map(|model| model.id.clone())
        .collect()
}

/// What each limited key spent in its current period, from the usage
/// records since the earliest period start (one pass over the log).
fn period_spend(
    state: &AppState,
    who: &Signed,
    keys: &[KeyRecord],
    now_ms: u64,
) -> Result<HashMap<KeyId, Nanos>, tokun_storage::StorageError> {
    let starts: HashMap<KeyId, u64> = keys
        .iter()
        .filter(|k| k.spend_limit.is_some() && !k.is_revoked())
        .map(|k| (k.id, k.limit_reset.period_start_ms(now_ms)))
        .collect();
    let mut spent: HashMap<KeyId, Nanos> = starts.keys().map(|k| (*k, Nanos::ZERO)).collect();
    let Some(&earliest) = starts.values().min() else {
        return Ok(spent);
    };
    for record in state
        .services()
        .store
        .usage_for(who.account, earliest, u64::MAX)
    {
        let record = record?;
        let Some(key) = record.key else { continue };
        if starts.get(&key).is_some_and(|&start| record.at_ms >= start) {
            let total = spent.entry(key).or_insert(Nanos::ZERO);
            *total = total.saturating_add(record.cost);
        }
    }
    Ok(spent)
}

pub fn render(
    state: &AppState,
    who: &Signed,
    draft: &Draft,
    errors: &Errors,
    rename: Option<&RenameError<'_>>,
    notice: Option<&str>,
) -> Response {
    let keys = match state.services().store.keys_for(who.account) {
        Ok(keys) => keys,
        Err(error) => return internal(error, Some(who)),
    };
    let now = tokun_providers::clock::unix_ms();
    let spent = match period_spend(state, who, &keys, now) {
        Ok(spent) => spent,
        Err(error) => return internal(error, Some(who)),
    };
    let (revoked, live): (Vec<&KeyRecord>, Vec<&KeyRecord>) =
        keys.iter().rev().partition(|k| k.is_revoked());
    let status = if errors.form.is_some() {
        StatusCode::FORBIDDEN
    } else if errors.any() || rename.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut summary: Vec<(String, &str)> = errors
        .summary()
        .into_iter()
        .map(|(field, message)| (field.to_owned(), message))
        .collect();
    if let Some(refused) = rename {
        summary.insert(0, (format!("{}-rename", refused.key), refused.message));
    }
    let body = html! {
        h1 { "API keys" }
        p.lead { "Programs call the API with a key: " code { "Authorization: Bearer sk-tokun-…" } ". A key’s secret is shown once, when it is created." }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        (error_summary(summary.iter().map(|(field, message)| (field.as_str(), *message))))
        @if live.is_empty() {
            p.muted { "You have no active keys. Create one below." }
        } @else {
            ul.key-list aria-label="Active keys" {
                @for key in &live {
                    li { (key_card(who, key, spent.get(&key.id).copied(), rename, now, kept(state, key))) }
                }
            }
        }
        h2 id="create" { "Create a key" }
        (create::form(who, draft, errors, &model_ids(state)))
        @if !revoked.is_empty() {
            h2 { "Revoked" }
            p.muted { "Revoked keys stay refused forever. They are listed so the activity log can name them." }
            div.table-wrap.revoked {
                table {
                    caption.visually-hidden { "Revoked keys, newest first" }
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Prefix" }
                        th scope="col" { "Created" }
                        th scope="col" { "Revoked" }
                        th scope="col" { "Last used" }
                    } }
                    tbody {
                        @for key in &revoked {
                            tr {
                                td { (key.name) }
                                td { code { (key.prefix) "…" } }
                                td { (datetime(key.created_ms)) }
                                td { (key.revoked_ms.map_or_else(String::new, datetime)) }
                                td { (key.last_used_ms.map_or_else(|| "Never".to_owned(), datetime)) }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(status, page("Keys", Some(who), body))
}

/// One live key: its facts, and rename, debugging and revoke.
fn key_card(
    who: &Signed,
    key: &KeyRecord,
    spent: Option<Nanos>,
    rename: Option<&RenameError<'_>>,
    now_ms: u64,
    kept: bool,
) -> Markup {
    let id = key.id.to_string();
    let refused = rename.filter(|r| r.key == key.id);
    let expired = key.is_expired(now_ms);
    html! {
        article.key-card.expired[expired] id=(id) aria-labelledby=(format!("{id}-name")) {
            h3 id=(format!("{id}-name")) {
                (key.name)
                " " code.prefix { (key.prefix) "…" }
                @if expired { " " span.tag { "Expired" } }
                @if key.debug { " " span.tag.debug { "Debugging on" } }
            }
            dl.facts {
                dt { "Created" } dd { (datetime(key.created_ms)) }
                dt { "Last used" } dd { (key.last_used_ms.map_or_else(|| "Never".to_owned(), datetime)) }
                dt { "Spend limit" } dd { (describe_limit(key, spent)) }
                dt { "Requests per minute" } dd { (key.rpm_limit.map_or_else(|| "No limit".to_owned(), |r| r.to_string())) }
                dt { "Models" } dd { (describe_models(&key.allowed_models)) }
                dt { "Expires" } dd { (expiry_text(key.expires_ms)) }
            }
            div.key-actions {
                details.rename open[refused.is_some()] {
                    summary { "Rename" }
                    form method="post" action=(format!("/keys/{id}/rename")) novalidate {
                        input type="hidden" name="csrf" value=(who.csrf);
                        div.field.field-error[refused.is_some()] {
                            label for=(format!("{id}-rename")) { "New name" }
                            @if let Some(refused) = refused {
                                span.message id=(format!("{id}-rename-error")) { span.visually-hidden { "Error: " } (refused.message) }
                            }
                            input id=(format!("{id}-rename")) name="name" type="text" maxlength="200"
                                value=(refused.map_or(key.name.as_str(), |r| r.name))
                                aria-invalid=[refused.map(|_| "true")]
                                aria-describedby=[refused.map(|_| format!("{id}-rename-error"))];
                        }
                        button.secondary type="submit" { "Save name" }
                    }
                }
                form.inline method="post" action=(format!("/keys/{id}/debug")) {
                    input type="hidden" name="csrf" value=(who.csrf);
                    @if key.debug {
                        input type="hidden" name="debug" value="off";
                        button.secondary type="submit" { "Turn debugging off" }
                    } @else {
                        input type="hidden" name="debug" value="on";
                        button.secondary type="submit" { "Turn debugging on" }
                    }
                }
                a.button.danger-outline href=(format!("/keys/{id}/revoke")) { "Revoke…" }
            }
            @if key.debug {
                p.hint.debug-note { "Debugging keeps this key’s request and response bodies for 7 days." }
            }
            @if key.debug || kept {
                p.debug-note { a href=(format!("/keys/{id}/debug")) { "Stored requests" } }
            }
        }
    }
}

/// Whether request debugging kept anything of the key (its page is linked).
fn kept(state: &AppState, key: &KeyRecord) -> bool {
    state
        .services()
        .store
        .has_debug_bodies(key.id)
        .unwrap_or(false)
}

/// `$5.00 a day · $0.12 spent today`, or `No limit`.
pub fn describe_limit(key: &KeyRecord, spent: Option<Nanos>) -> String {
    let Some(limit) = key.spend_limit else {
        return "No limit".to_owned();
    };
    let (per, period) = match key.limit_reset {
        LimitReset::Total => ("in total", "so far"),
        LimitReset::Daily => ("a day (UTC)", "today"),
        LimitReset::Monthly => ("a month (UTC)", "this month"),
    };
    match spent {
        Some(spent) => format!("{} {per} · {} spent {period}", usd(limit), usd(spent)),
        None => format!("{} {per}", usd(limit)),
    }
}

pub fn describe_models(models: &[String]) -> String {
    if models.is_empty() {
        "All models".to_owned()
    } else {
        models.join(", ")
    }
}

/// `Never`, or the UTC date and time it stops working.
pub fn expiry_text(expires_ms: Option<u64>) -> String {
    match expires_ms {
        None => "Never".to_owned(),
        Some(at) if at % MS_PER_DAY == 0 => format!("{} 00:00 UTC", date(at / MS_PER_DAY)),
        Some(at) => datetime(at),
    }
}
