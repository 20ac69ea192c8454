//! `GET /account/export.json`: everything held about the signed-in
//! account as one JSON download, streamed in bounded batches. The document
//! and its producer are the API's (`api::account_data`), so the console
//! and `GET /v1/account/export` give the same content.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use crate::api::account_data::export_response;
use crate::console::{Signed, internal};
use crate::state::AppState;

/// `GET /account/export.json`.
pub async fn download(State(state): State<AppState>, who: Signed) -> Response {
    match export_response(&state, who.account) {
        Ok(response) => response,
        Err(error) => internal(error, Some(&who)),
    }
}

/// The page's "Your data" section: the download link.
pub fn section() -> Markup {
    html! {
        section.account-data aria-labelledby="your-data" {
            h2 id="your-data" { "Your data" }
            p {
                "One JSON file with your profile, sign-ins, sessions, passkeys, API key "
                "details (never their secrets), every request, every ledger entry and your "
                "payments. Prompts and completions are not stored, so they are not in it."
            }
            p { a.button href="/account/export.json" download { "Download everything we hold about you (JSON)" } }
        }
    }
}
