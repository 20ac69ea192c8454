//! Deleting an account from `/account`: the "Delete account" section says
//! what happens, the person types their email (any case) to confirm, and
//! `POST /account/delete` does what `POST /v1/account/delete` does
//! (`api::account_data::delete_account`): keys revoked and sessions ended
//! at once, the account disabled and marked deleted so no sign-in method
//! works and the email never opens a new account. Then the cookie is
//! cleared and `/account/deleted` says so. Purging is not done here: the
//! retention sweeper does it 30 days later.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::account_data::{PURGE_AFTER_DAYS, delete_account, email_confirms};
use crate::console::layout::{Field, error_summary, page, respond};
use crate::console::{Form, Signed, internal, session};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeleteForm {
    csrf: String,
    confirm: String,
}

const MISMATCH: &str = "Type your email address exactly as shown to delete the account";

/// The "Delete account" section of `/account` (and of the 400 page when
/// the typed email did not match).
pub fn section(who: &Signed, typed: &str, error: Option<&str>) -> Markup {
    html! {
        section.danger-zone aria-labelledby="delete-account" {
            h2 id="delete-account" { "Delete account" }
            p { "Deleting your account is final. At once:" }
            ul {
                li { "every API key is revoked and every browser is signed out;" }
                li { "the account can no longer sign in by any method, and "
                     (who.email) " cannot be used to open a new account." }
            }
            p { "Then:" }
            ul {
                li { "your personal data is purged after " (PURGE_AFTER_DAYS) " days;" }
                li { "ledger entries are kept, pseudonymised, as accounting law requires;" }
                li { "remaining credit is not refunded automatically — contact support before deleting if you want it back." }
            }
            p { "You may want to " a href="/account/export.json" download { "download your data" } " first." }
            form method="post" action="/account/delete" novalidate {
                input type="hidden" name="csrf" value=(who.csrf);
                (Field {
                    name: "confirm",
                    label: "To confirm, type your email address",
                    hint: Some(&who.email),
                    kind: "text",
                    value: typed,
                    error,
                    autocomplete: "off",
                    inputmode: Some("email"),
                    class: None,
                }.render())
                button.danger type="submit" { "Delete my account" }
            }
        }
    }
}

/// `POST /account/delete`.
pub async fn delete(
    State(state): State<AppState>,
    who: Signed,
    Form(form): Form<DeleteForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    if !email_confirms(&who.email, &form.confirm) {
        let body = html! {
            h1 { "Delete account" }
            (error_summary([("confirm", MISMATCH)]))
            p { "Nothing was deleted. " a href="/account" { "Back to your account" } }
            (section(&who, form.confirm.trim(), Some(MISMATCH)))
        };
        return respond(
            StatusCode::BAD_REQUEST,
            page("Delete account", Some(&who), body),
        );
    }
    if let Err(error) = delete_account(&state, who.account).await {
        return internal(error, Some(&who));
    }
    let clear = session::clear_cookie(&state);
    (
        [(header::SET_COOKIE, clear)],
        Redirect::to("/account/deleted"),
    )
        .into_response()
}

/// `GET /account/deleted`: said to anyone, signed in or not.
pub async fn deleted() -> Response {
    let body = html! {
        h1 { "Your account is deleted" }
        p.notice role="status" { "Every API key is revoked and every browser is signed out." }
        p {
            "The account can no longer sign in, and its email address cannot sign in "
            "or open a new account: signing in with it is refused."
        }
        p {
            "Your personal data is purged after " (PURGE_AFTER_DAYS) " days. Ledger entries "
            "are kept, pseudonymised, as accounting law requires. Remaining credit is not "
            "refunded automatically: contact support if you want it back."
        }
        p { a href="/login" { "Go to the sign-in page" } }
    };
    respond(StatusCode::OK, page("Account deleted", None, body))
}
