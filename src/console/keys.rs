//! The keys page (`/keys`), its handlers: the list (`keys/list.rs`: live
//! keys with their limits, what each spent in its current limit period and
//! when it was last used, the revoked ones apart), create (`keys/create.rs`:
//! the form and the page that shows a new secret once), rename, debugging
//! on or off (and what it kept: `keys/debug.rs`), and revoke after a
//! confirmation page. Keys are created,
//! changed and revoked through the services, as the API does, and every
//! change reaches the auth cache at once. A key id that is not the
//! account's is a 404.

mod create;
mod debug;
mod list;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use tokun_storage::{KeyId, KeyRecord};

use super::layout::{error_page, page, respond};
use super::{Form, Signed, internal};
use crate::services::KeyChange;
use crate::state::AppState;
use create::{Draft, Errors, NAME_CHARS};
use list::{model_ids, render};

pub use debug::show as stored_requests;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RenameForm {
    csrf: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DebugForm {
    csrf: String,
    /// `on` or `off`: what debugging becomes.
    debug: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// A rename that was refused: which key, what was typed and why.
pub struct RenameError<'a> {
    key: KeyId,
    name: &'a str,
    message: &'static str,
}

/// `GET /keys`.
pub async fn list(
    State(state): State<AppState>,
    who: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    let notice = match query.as_deref() {
        Some("done=renamed") => Some("The key is renamed."),
        Some("done=debug-on") => Some("Request debugging is on for the key."),
        Some("done=debug-off") => Some("Request debugging is off for the key."),
        Some("done=revoked") => Some("The key is revoked. Requests made with it are refused."),
        _ => None,
    };
    let draft = Draft {
        reset: "total".into(),
        ..Draft::default()
    };
    render(&state, &who, &draft, &Errors::default(), None, notice)
}

/// `POST /keys`: creates a key and shows its secret, once.
pub async fn create(
    State(state): State<AppState>,
    who: Signed,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let draft = Draft::from_pairs(pairs);
    if let Err(refused) = who.check(&draft.csrf) {
        return *refused;
    }
    let models = model_ids(&state);
    let options = match draft.check(&models, tokun_providers::clock::unix_ms()) {
        Ok(options) => options,
        Err(errors) => return render(&state, &who, &draft, &errors, None, None),
    };
    // A disabled account may look, not create (the API refuses it too).
    let disabled = match state.services().store.account(who.account) {
        Ok(account) => account.is_none_or(|a| a.disabled || a.deleted_ms.is_some()),
        Err(error) => return internal(error, Some(&who)),
    };
    if disabled {
        let errors = Errors {
            form: Some("This account is disabled, so it cannot create keys."),
            ..Errors::default()
        };
        return render(&state, &who, &draft, &errors, None, None);
    }
    match state.services().create_key(who.account, options).await {
        Ok((record, secret)) => create::secret_page(&who, &record, &secret),
        Err(error) => internal(error, Some(&who)),
    }
}

/// `POST /keys/{id}/rename`.
pub async fn rename(
    State(state): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Form(form): Form<RenameForm>,
) -> Response {
    let key = match checked_key(&state, &who, &id, &form.csrf) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let name = form.name.trim();
    let message = if name.is_empty() {
        Some("Enter a name for the key")
    } else if name.chars().count() > NAME_CHARS {
        Some("The name must be 100 characters or fewer")
    } else if name.chars().any(char::is_control) {
        Some("The name must not contain control characters")
    } else {
        None
    };
    if let Some(message) = message {
        let refused = RenameError {
            key: key.id,
            name: &form.name,
            message,
        };
        let draft = Draft {
            reset: "total".into(),
            ..Draft::default()
        };
        return render(
            &state,
            &who,
            &draft,
            &Errors::default(),
            Some(&refused),
            None,
        );
    }
    change(
        &state,
        &who,
        key.id,
        KeyChange::Rename(name.to_owned()),
        "renamed",
    )
    .await
}

/// `POST /keys/{id}/debug`: turns request debugging on or off.
pub async fn debug(
    State(state): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Form(form): Form<DebugForm>,
) -> Response {
    let key = match checked_key(&state, &who, &id, &form.csrf) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let on = match form.debug.as_str() {
        "on" => true,
        "off" => false,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The form could not be read. Go back, reload the page and try again.",
                Some(&who),
            );
        }
    };
    let done = if on { "debug-on" } else { "debug-off" };
    change(&state, &who, key.id, KeyChange::Debug(on), done).await
}

/// `GET /keys/{id}/revoke`: asks before revoking.
pub async fn confirm_revoke(
    State(state): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
) -> Response {
    let key = match owned_key(&state, &who, &id) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    if key.is_revoked() {
        return Redirect::to("/keys").into_response();
    }
    let body = html! {
        div.narrow {
            h1 { "Revoke “" (key.name) "”?" }
            p {
                "Requests made with the key "
                code { (key.prefix) "…" }
                " will be refused from now on, by every program that uses it. This cannot be undone: to use the API again from those programs, create a new key."
            }
            form method="post" action=(format!("/keys/{}/revoke", key.id)) {
                input type="hidden" name="csrf" value=(who.csrf);
                button.danger type="submit" { "Revoke the key" }
                " "
                a.cancel href="/keys" { "Cancel" }
            }
        }
    };
    respond(StatusCode::OK, page("Keys", Some(&who), body))
}

/// `POST /keys/{id}/revoke`: revokes for good.
pub async fn revoke(
    State(state): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let key = match checked_key(&state, &who, &id, &form.csrf) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    match state.services().revoke_key(key.id).await {
        Ok(Some((hash, record))) => {
            state.keys().update(hash, record);
            Redirect::to("/keys?done=revoked").into_response()
        }
        Ok(None) => not_found(&who),
        Err(error) => internal(error, Some(&who)),
    }
}

/// Applies a change through the services and the auth cache, then goes
/// back to the list with a notice.
async fn change(
    state: &AppState,
    who: &Signed,
    key: KeyId,
    change: KeyChange,
    done: &str,
) -> Response {
    match state.services().update_key(key, change).await {
        Ok(Some((hash, record))) => {
            state.keys().update(hash, record);
            Redirect::to(&format!("/keys?done={done}")).into_response()
        }
        Ok(None) => not_found(who),
        Err(error) => internal(error, Some(who)),
    }
}

/// The key `id` if it is this account's; the console's 404 otherwise,
/// whether it belongs to someone else or to nobody.
/// What every change to a key starts with: the form's CSRF token, then
/// the key, which must be this account's (anything else is the 404 page).
fn checked_key(
    state: &AppState,
    who: &Signed,
    id: &str,
    csrf: &str,
) -> Result<KeyRecord, Box<Response>> {
    who.check(csrf)?;
    owned_key(state, who, id)
}

fn owned_key(state: &AppState, who: &Signed, id: &str) -> Result<KeyRecord, Box<Response>> {
    let Ok(key) = id.parse::<KeyId>() else {
        return Err(Box::new(not_found(who)));
    };
    match state.services().store.key(key) {
        Ok(Some(record)) if record.account == who.account => Ok(record),
        Ok(_) => Err(Box::new(not_found(who))),
        Err(error) => Err(Box::new(internal(error, Some(who)))),
    }
}

fn not_found(who: &Signed) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "There is no such page. If you followed a link, it may be out of date.",
        Some(who),
    )
}
