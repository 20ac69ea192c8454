//! The policy-change banner: every announced change (`crate::policy`) the
//! signed-in account has not dismissed, on the dashboard, with its summary,
//! effective date and link, and a "Dismiss" button (`POST
//! /policy/{id}/dismiss`, CSRF-checked) that hides it from that account for
//! good. Dismissals are kept per account in the store
//! (`storage/src/policy.rs`), so they follow the person to every browser.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tokun_storage::Store;

use super::{Form, Signed, error_page, internal};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DismissForm {
    csrf: String,
}

/// The banners `who` has not dismissed, oldest first; nothing when there
/// are none (or the store cannot say: the dashboard still shows).
pub fn banner(store: &Store, who: &Signed) -> Markup {
    let policies = match store.undismissed_policies(who.account) {
        Ok(policies) => policies,
        Err(error) => {
            tracing::warn!(%error, "the policy banner could not be read");
            Vec::new()
        }
    };
    html! {
        @for policy in &policies {
            @let heading = format!("policy-{}", policy.id);
            section.notice.policy aria-labelledby=(heading) {
                h2 id=(heading) { "Our policies change on " (policy.effective) }
                p { (policy.summary) }
                @if let Some(url) = &policy.url {
                    p { a href=(url) { "Read the changes" } }
                }
                form method="post" action=(format!("/policy/{}/dismiss", policy.id)) {
                    input type="hidden" name="csrf" value=(who.csrf);
                    button.secondary type="submit" { "Dismiss" }
                }
            }
        }
    }
}

/// `POST /policy/{id}/dismiss`: hides the banner, back to the dashboard.
pub async fn dismiss(
    State(state): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Form(form): Form<DismissForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let not_found = || {
        error_page(
            StatusCode::NOT_FOUND,
            "There is no such policy change. Start again from the dashboard.",
            Some(&who),
        )
    };
    let Ok(policy) = id.strip_prefix("pol_").unwrap_or(&id).parse::<u64>() else {
        return not_found();
    };
    let now = tokun_providers::clock::unix_ms();
    let store = &state.services().store;
    match store.dismiss_policy(who.account, policy, now).await {
        Ok(true) => Redirect::to("/").into_response(),
        Ok(false) => not_found(),
        Err(error) => internal(error, Some(&who)),
    }
}
