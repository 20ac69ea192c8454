//! The passkey endpoints: registration (`/account/passkeys/register/…`,
//! signed in, CSRF-checked), discoverable sign-in (`/login/passkey/…`) and
//! removal. JSON in and out for the script, except removal (a plain form);
//! a refusal is `{"error": "…"}` with a 4xx, shown in place by the page.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_storage::{PasskeyRecord, StorageError};
use webauthn_rs::prelude::{
    DiscoverableKey, Passkey, PublicKeyCredential, RegisterPublicKeyCredential,
};

use super::{Passkeys, from_hex, to_hex, user_handle};
use crate::console::{Client, Form, Signed, error_page, internal, session};
use crate::state::AppState;

/// Longest passkey name, in characters.
const NAME_CHARS: usize = 60;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfBody {
    csrf: String,
}

#[derive(Debug, Deserialize)]
pub struct RegisterFinish {
    csrf: String,
    #[serde(default)]
    name: String,
    credential: RegisterPublicKeyCredential,
}

#[derive(Debug, Deserialize)]
pub struct SignInFinish {
    id: String,
    credential: PublicKeyCredential,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RemoveForm {
    csrf: String,
    id: String,
}

fn enabled(state: &AppState) -> Result<&Passkeys, Box<Response>> {
    state.console().passkeys.as_ref().ok_or_else(|| {
        Box::new(refuse(
            StatusCode::NOT_FOUND,
            "Passkeys are off on this server.",
        ))
    })
}

/// A JSON refusal the page's script shows in place.
fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn store_failed(error: StorageError) -> Response {
    tracing::warn!(%error, "a passkey request failed");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side. Try again in a moment.",
    )
}

fn read_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|_| {
        Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "The browser's answer could not be read. Reload the page and try again.",
        ))
    })
}

/// `POST /account/passkeys/register/start` (CSRF): the creation options.
pub async fn register_start(State(state): State<AppState>, who: Signed, body: Bytes) -> Response {
    let passkeys = match enabled(&state) {
        Ok(passkeys) => passkeys,
        Err(refused) => return *refused,
    };
    let form: CsrfBody = match read_json(&body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let existing = match state.services().store.passkeys_of(who.account) {
        Ok(existing) => existing,
        Err(error) => return store_failed(error),
    };
    let exclude = existing
        .iter()
        .filter_map(|record| serde_json::from_str::<Passkey>(&record.passkey).ok())
        .map(|passkey| passkey.cred_id().clone())
        .collect();
    let shown = if who.profile.display_name.is_empty() {
        &who.email
    } else {
        &who.profile.display_name
    };
    let started = passkeys.webauthn.start_passkey_registration(
        user_handle(who.account),
        &who.email,
        shown,
        Some(exclude),
    );
    let (options, registration) = match started {
        Ok(started) => started,
        Err(error) => return internal_json(&error),
    };
    if !passkeys.registrations.keep(who.session_hash, registration) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too busy. Try again in a minute.",
        );
    }
    // A passkey must be discoverable to sign in with it alone; webauthn-rs
    // 0.5 asks for one only if the authenticator likes, so ask for it.
    let mut options = serde_json::to_value(options).unwrap_or(Value::Null);
    if let Some(selection) = options.pointer_mut("/publicKey/authenticatorSelection") {
        selection["residentKey"] = json!("required");
        selection["requireResidentKey"] = json!(true);
    }
    axum::Json(options).into_response()
}

/// `POST /account/passkeys/register/finish` (CSRF): checks and stores it.
pub async fn register_finish(State(state): State<AppState>, who: Signed, body: Bytes) -> Response {
    let passkeys = match enabled(&state) {
        Ok(passkeys) => passkeys,
        Err(refused) => return *refused,
    };
    let form: RegisterFinish = match read_json(&body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let name = form.name.trim();
    let name = if name.is_empty() { "Passkey" } else { name };
    if name.chars().count() > NAME_CHARS || name.chars().any(char::is_control) {
        let message = "Name the passkey in 60 characters or fewer, without control characters.";
        return refuse(StatusCode::BAD_REQUEST, message);
    }
    let Some(registration) = passkeys.registrations.take(&who.session_hash) else {
        let message = "This passkey request has expired. Try adding the passkey again.";
        return refuse(StatusCode::BAD_REQUEST, message);
    };
    let passkey = match passkeys
        .webauthn
        .finish_passkey_registration(&form.credential, &registration)
    {
        Ok(passkey) => passkey,
        Err(error) => {
            tracing::info!(%error, "a passkey registration was refused");
            let message = "This passkey could not be verified. Try adding it again.";
            return refuse(StatusCode::BAD_REQUEST, message);
        }
    };
    let store = &state.services().store;
    let credential_id = passkey.cred_id().to_vec();
    match store.passkey_by_credential(&credential_id) {
        Ok(None) => {}
        Ok(Some(_)) => {
            let message = "This passkey is already registered.";
            return refuse(StatusCode::BAD_REQUEST, message);
        }
        Err(error) => return store_failed(error),
    }
    let serialized = match serde_json::to_string(&passkey) {
        Ok(serialized) => serialized,
        Err(error) => return internal_json(&error),
    };
    let record = PasskeyRecord {
        account: who.account,
        credential_id,
        passkey: serialized,
        name: name.to_owned(),
        created_ms: tokun_providers::clock::unix_ms(),
        last_used_ms: None,
    };
    let saved = store.put_passkey(&record);
    if let Err(error) = saved {
        return store_failed(error);
    }
    if let Err(error) = store.flush_people().await {
        return store_failed(error);
    }
    axum::Json(json!({ "redirect": "/account?passkey=added#passkeys" })).into_response()
}

/// `POST /login/passkey/start`: the request options of a discoverable
/// sign-in, and the id to finish it with.
pub async fn sign_in_start(State(state): State<AppState>) -> Response {
    let passkeys = match enabled(&state) {
        Ok(passkeys) => passkeys,
        Err(refused) => return *refused,
    };
    let (options, authentication) = match passkeys.webauthn.start_discoverable_authentication() {
        Ok(started) => started,
        Err(error) => return internal_json(&error),
    };
    let id = ceremony_id();
    if !passkeys.sign_ins.keep(id.clone(), authentication) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too busy. Try again in a minute.",
        );
    }
    // The page asks on a click, not through autofill: no `mediation`.
    let mut options = serde_json::to_value(options).unwrap_or(Value::Null);
    if let Some(object) = options.as_object_mut() {
        object.remove("mediation");
    }
    axum::Json(json!({ "id": id, "options": options })).into_response()
}

/// `POST /login/passkey/finish`: checks the assertion and signs in.
pub async fn sign_in_finish(
    State(state): State<AppState>,
    client: Client,
    body: Bytes,
) -> Response {
    let passkeys = match enabled(&state) {
        Ok(passkeys) => passkeys,
        Err(refused) => return *refused,
    };
    let form: SignInFinish = match read_json(&body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let Some(authentication) = passkeys.sign_ins.take(&form.id) else {
        let message = "This sign-in has expired. Try again.";
        return refuse(StatusCode::BAD_REQUEST, message);
    };
    let unknown = "This passkey is not registered here (it may have been removed). Sign in with an email code.";
    let Ok((handle, credential_id)) = passkeys
        .webauthn
        .identify_discoverable_authentication(&form.credential)
    else {
        return refuse(StatusCode::BAD_REQUEST, unknown);
    };
    let store = &state.services().store;
    let mut record = match store.passkey_by_credential(credential_id) {
        Ok(Some(record)) if user_handle(record.account) == handle => record,
        Ok(_) => return refuse(StatusCode::BAD_REQUEST, unknown),
        Err(error) => return store_failed(error),
    };
    let mut passkey = match serde_json::from_str::<Passkey>(&record.passkey) {
        Ok(passkey) => passkey,
        Err(error) => return internal_json(&error),
    };
    let key = DiscoverableKey::from(&passkey);
    let verified = passkeys.webauthn.finish_discoverable_authentication(
        &form.credential,
        authentication,
        &[key],
    );
    let result = match verified {
        Ok(result) => result,
        Err(error) => {
            tracing::info!(%error, "a passkey sign-in was refused");
            let message =
                "This passkey could not be verified. Try again, or sign in with an email code.";
            return refuse(StatusCode::BAD_REQUEST, message);
        }
    };
    passkey.update_credential(&result);
    if let Ok(serialized) = serde_json::to_string(&passkey) {
        record.passkey = serialized;
    }
    record.last_used_ms = Some(tokun_providers::clock::unix_ms());
    if let Err(error) = store.put_passkey(&record) {
        return store_failed(error);
    }
    let account = match store.account(record.account) {
        Ok(Some(account)) if !account.disabled && account.deleted_ms.is_none() => account,
        Ok(_) => {
            let message = "This account is disabled, so it cannot sign in. Contact support.";
            return refuse(StatusCode::FORBIDDEN, message);
        }
        Err(error) => return store_failed(error),
    };
    match session::start(&state, account.id, "passkey", &client).await {
        Ok(cookie) => {
            let mut response = axum::Json(json!({ "redirect": "/" })).into_response();
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(error) => store_failed(error),
    }
}

/// `POST /account/passkeys/remove` (CSRF): forgets one of the person's
/// passkeys (their authenticator still holds it, but it no longer works).
pub async fn remove(
    State(state): State<AppState>,
    who: Signed,
    Form(form): Form<RemoveForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let store = &state.services().store;
    let removed = match from_hex(&form.id) {
        Some(id) => store.delete_passkey(who.account, &id),
        None => Ok(false),
    };
    match removed {
        Ok(true) => {}
        Ok(false) => {
            let message = "There is no such passkey on your account.";
            return error_page(StatusCode::NOT_FOUND, message, Some(&who));
        }
        Err(error) => return internal(error, Some(&who)),
    }
    if let Err(error) = store.flush_people().await {
        return internal(error, Some(&who));
    }
    Redirect::to("/account?passkey=removed#passkeys").into_response()
}

fn internal_json(error: &dyn std::fmt::Display) -> Response {
    tracing::warn!(%error, "a passkey request failed");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side. Try again in a moment.",
    )
}

/// 16 random bytes as hex: names a sign-in in progress.
fn ceremony_id() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    to_hex(&bytes)
}
