//! The playground (`/playground`): pick a model, write a prompt, and watch
//! the completion stream in over `/v1/ws`, then its usage and cost as the
//! server settled them; Stop cancels it, billed for what was generated.
//! The page is server-rendered; `assets/playground.js` (served here, no
//! inline script) drives the socket. This module owns the page, the script
//! and the session's WebSocket ticket; it does not start completions — the
//! socket does, through `completion::launch`, as for every caller.
//!
//! **How a console caller is represented.** `/v1/ws` bills a [`Caller`]: an
//! account and one of its keys (the key id is in every usage record, and
//! its limits apply). A person in the console has no key in hand, so each
//! account gets one *playground key*, named [`PLAYGROUND_KEY`], created
//! through `Services::create_key` the first time a ticket is asked for and
//! found by that name afterwards (the live one with the lowest id). Its
//! secret is dropped at once, never shown nor logged: the key can only be
//! used through a ticket issued to a signed-in session, so it is not a
//! credential anyone holds. Spend through it is the account's, held and
//! settled by the same meter as any request, and shows in the activity log
//! under the key's name; a spend limit or allowed models set on it apply as
//! on any key. Revoked or renamed, it is replaced by a new one on the next
//! ticket.
//!
//! `POST /playground/ticket` needs the session (the `Signed` extractor) and
//! the session's CSRF token, in the `X-CSRF-Token` header or a `csrf` form
//! field; it answers `201 {ticket, expires_in}` (the ticket is the same
//! single-use, short-lived kind `POST /v1/ws/ticket` issues), or a JSON
//! error with a 403 (CSRF) or 429 (too many open tickets).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;
use tokun_storage::{AccountId, KeyRecord};

use super::format::usd;
use super::layout::{page, respond};
use super::{Signed, internal};
use crate::auth::Caller;
use crate::config::ModelConfig;
use crate::services::KeyOptions;
use crate::state::AppState;

/// The name of every account's playground key (see the module doc).
pub const PLAYGROUND_KEY: &str = "Console playground";
/// The header the page's script sends the CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";
/// The page's script, compiled in; served at `/assets/playground.js`.
const SCRIPT: &str = include_str!("assets/playground.js");
/// The max tokens field's value unless the URL asks for another.
const DEFAULT_MAX_TOKENS: u32 = 256;

/// Where the script is served; the query changes with the file, so the
/// year-long cache never serves a stale one (as for the stylesheet).
fn script_href() -> String {
    format!("/assets/playground.js?v={}", SCRIPT.len())
}

/// `?model=&max_tokens=&temperature=`: what "open in playground" links
/// carry. Never a prompt.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PlaygroundQuery {
    model: Option<String>,
    max_tokens: Option<String>,
    temperature: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// `GET /playground`.
pub async fn show(
    State(state): State<AppState>,
    who: Signed,
    query: Result<Query<PlaygroundQuery>, QueryRejection>,
) -> Response {
    // A malformed query is ignored: the page opens with its defaults.
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let models = &state.config().models;
    let selected = query
        .model
        .as_deref()
        .filter(|id| models.iter().any(|m| m.id == *id))
        .or_else(|| models.first().map(|m| m.id.as_str()));
    let max_tokens = query
        .max_tokens
        .as_deref()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let temperature = query
        .temperature
        .as_deref()
        .map(str::trim)
        .filter(|text| is_temperature(text))
        .unwrap_or("1");
    let body = render(&who, models, selected, max_tokens, temperature);
    respond(StatusCode::OK, page("Playground", Some(&who), body))
}

/// `POST /playground/ticket`: a single-use `/v1/ws` ticket for the
/// session's account, paid through its playground key.
pub async fn ticket(
    State(state): State<AppState>,
    who: Signed,
    headers: HeaderMap,
    form: Result<axum::Form<CsrfForm>, FormRejection>,
) -> Response {
    let from_header = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let csrf = from_header
        .or_else(|| form.ok().map(|axum::Form(form)| form.csrf))
        .unwrap_or_default();
    if who.check(&csrf).is_err() {
        return json_error(
            StatusCode::FORBIDDEN,
            "This page has expired or did not come from this site. Reload it and try again.",
        );
    }
    let key = match playground_key(&state, who.account).await {
        Ok(key) => key,
        Err(error) => return internal(error, Some(&who)),
    };
    let caller = Caller {
        account: who.account,
        key: Arc::new(key),
    };
    // As `POST /v1/ws/ticket` does: an RPM limit set on the key counts tickets too.
    let ticket = match state
        .keys()
        .check_rpm(&caller.key)
        .and_then(|()| state.tickets().issue(&caller))
    {
        Ok(ticket) => ticket,
        Err(error) => return json_error(error.status(), &error.to_string()),
    };
    crate::api::ws::ticket_response(&state, &ticket)
}

/// `GET /assets/playground.js`: cached for a year (the URL carries a version).
pub async fn script() -> Response {
    super::layout::asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// The account's live playground key, created on first use. Creations are
/// serialized, so two tabs asking at once make one key, not two.
async fn playground_key(state: &AppState, account: AccountId) -> anyhow::Result<KeyRecord> {
    static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let services = state.services();
    let find = || -> anyhow::Result<Option<KeyRecord>> {
        let now = tokun_providers::clock::unix_ms();
        let keys = services.store.keys_for(account)?;
        Ok(keys
            .into_iter()
            .filter(|key| key.name == PLAYGROUND_KEY && !key.is_revoked() && !key.is_expired(now))
            .min_by_key(|key| key.id.get()))
    };
    if let Some(key) = find()? {
        return Ok(key);
    }
    let _creating = CREATING.lock().await;
    if let Some(key) = find()? {
        return Ok(key);
    }
    let options = KeyOptions {
        name: PLAYGROUND_KEY.to_owned(),
        ..KeyOptions::default()
    };
    // The secret is dropped here: the key is reached only through tickets.
    let (record, _secret) = services.create_key(account, options).await?;
    Ok(record)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": { "message": message } });
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A temperature as OpenAI takes it: a number from 0 to 2.
fn is_temperature(text: &str) -> bool {
    text.len() <= 8
        && text.parse::<f64>().is_ok_and(|t| (0.0..=2.0).contains(&t))
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
}

fn render(
    who: &Signed,
    models: &[ModelConfig],
    selected: Option<&str>,
    max_tokens: u32,
    temperature: &str,
) -> Markup {
    html! {
        h1 { "Playground" }
        p.lead {
            "Try a model. Each completion is billed to your account like any API request, "
            "under the key “" (PLAYGROUND_KEY) "”."
        }
        noscript {
            p.notice.pg-noscript {
                "The playground needs JavaScript: it streams the completion over a WebSocket "
                "as the model writes it. Turn JavaScript on for this site, or call the API "
                "with a key from the " a href="/keys" { "Keys" } " page."
            }
        }
        @if models.is_empty() {
            p { "No models are configured on this gateway yet." }
        } @else {
            div.playground {
                (request_form(who, models, selected, max_tokens, temperature))
                section.pg-result aria-labelledby="pg-output-title" {
                    h2 #pg-output-title { "Output" }
                    div #pg-output .pg-output aria-live="polite" {}
                    p #pg-status .pg-status role="status" { "Nothing sent yet." }
                    div #pg-error .pg-error role="alert" hidden {}
                }
            }
            script src=(script_href()) defer {}
        }
    }
}

fn request_form(
    who: &Signed,
    models: &[ModelConfig],
    selected: Option<&str>,
    max_tokens: u32,
    temperature: &str,
) -> Markup {
    html! {
        form #pg-form .pg-form data-ticket-url="/playground/ticket" data-ws-path="/v1/ws" {
            input type="hidden" name="csrf" value=(who.csrf);
            // Enabled by the script: without it nothing here can work.
            fieldset #pg-fields disabled {
                legend.visually-hidden { "Request" }
                div.field {
                    label for="pg-model" { "Model" }
                    span.hint id="pg-model-hint" { "Prices are USD per million tokens, input / output." }
                    select #pg-model name="model" aria-describedby="pg-model-hint" {
                        @for model in models {
                            option value=(model.id) selected[selected == Some(model.id.as_str())] {
                                (model.id) " — " (usd(model.price.input())) " / " (usd(model.price.output()))
                            }
                        }
                    }
                }
                div.field {
                    label for="pg-system" { "System prompt" }
                    span.hint id="pg-system-hint" { "Optional." }
                    textarea #pg-system name="system" rows="2" aria-describedby="pg-system-hint" {}
                }
                div.field {
                    label for="pg-message" { "Message" }
                    textarea #pg-message name="message" rows="5" required {}
                }
                div.pg-params {
                    div.field {
                        label for="pg-max-tokens" { "Max tokens" }
                        input #pg-max-tokens type="number" name="max_tokens" min="1" step="1"
                            inputmode="numeric" value=(max_tokens);
                    }
                    div.field {
                        label for="pg-temperature" { "Temperature" }
                        input #pg-temperature type="number" name="temperature" min="0" max="2"
                            step="0.1" inputmode="decimal" value=(temperature);
                    }
                }
                div.pg-actions {
                    button #pg-send type="submit" { "Send" }
                    button #pg-stop .secondary type="button" disabled { "Stop" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures_are_numbers_from_zero_to_two() {
        for ok in ["0", "1", "0.7", "2", "2.0"] {
            assert!(is_temperature(ok), "{ok}");
        }
        for bad in ["", "-1", "2.1", "abc", "1e0", "NaN", "inf", "1.0000000"] {
            assert!(!is_temperature(bad), "{bad}");
        }
    }
}
