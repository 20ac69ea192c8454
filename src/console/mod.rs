//! The web console: server-rendered HTML pages for people signed in with a
//! session cookie (`session.rs`), beside the API that programs call with
//! keys. It owns sign-in (`login.rs`, codes sent by `mail.rs`), the page
//! frame and error pages (`layout.rs`), and the pages themselves; money and
//! accounts stay with the services and the store, reached as the API does.
//! Every page works without JavaScript, and every state-changing form
//! carries the session's CSRF token.

mod account;
mod activity;
pub(crate) mod billing;
mod dashboard;
mod format;
mod keys;
pub mod layout;
mod login;
pub mod mail;
mod oidc;
mod oidc_routes;
mod passkey;
mod playground;
pub mod policy_banner;
mod ratelimit;
pub mod session;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

pub use layout::{error_page, page};
pub use session::Signed;

use crate::config::Config;
use crate::state::AppState;
use mail::Mailer;
use ratelimit::RateLimiter;

/// The console's own state inside `AppState`: the mailer and the sign-in
/// rate limits (in memory: a restart forgets them, which only lets a few
/// more codes through).
pub struct Console {
    mailer: Mailer,
    codes_per_email: RateLimiter,
    codes_per_ip: RateLimiter,
    /// "Sign in with …" (`[auth.oidc]`), if configured.
    oidc: Option<oidc_routes::OidcSignIn>,
    /// Passkeys, unless `[auth.passkeys] enabled = false`.
    passkeys: Option<passkey::Passkeys>,
    /// Monthly statements read before, brought up to date on each load.
    statements: billing::Statements,
    /// Wakes the policy-change mailing (`crate::policy::mail`).
    policy_mail: crate::policy::mail::PolicyMail,
}

/// How many sign-in codes one email may ask for per window.
const CODES_PER_EMAIL: u32 = 5;
/// How many sign-in codes one client address may ask for per window.
const CODES_PER_IP: u32 = 20;
const CODE_WINDOW: Duration = Duration::from_secs(15 * 60);

impl Console {
    pub fn new(config: &Config) -> Console {
        Console {
            mailer: Mailer::new(&config.auth),
            codes_per_email: RateLimiter::new(CODES_PER_EMAIL, CODE_WINDOW),
            codes_per_ip: RateLimiter::new(CODES_PER_IP, CODE_WINDOW),
            statements: billing::Statements::default(),
            oidc: oidc_routes::OidcSignIn::new(config),
            passkeys: passkey::Passkeys::new(config),
            policy_mail: crate::policy::mail::PolicyMail::default(),
        }
    }

    /// Discovers the OpenID Connect issuer, if any, at start; a failure is
    /// logged and tried again on the next click.
    pub async fn discover_oidc(&self) {
        if let Some(oidc) = &self.oidc {
            oidc.discover().await;
        }
    }

    pub fn statements(&self) -> &billing::Statements {
        &self.statements
    }

    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    pub fn policy_mail(&self) -> &crate::policy::mail::PolicyMail {
        &self.policy_mail
    }
}

/// Every console route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::show))
        .route("/activity", get(activity::list))
        .route("/activity.csv", get(activity::csv))
        .route("/activity.json", get(activity::json))
        .route("/activity/{request_id}", get(activity::detail))
        .route("/login", get(login::form).post(login::send_code))
        .route("/login/code", post(login::check_code))
        .route("/logout", post(login::logout))
        .route("/account", get(account::show).post(account::update))
        .route("/account/sessions/revoke-all", post(account::revoke_all))
        .route("/account/export.json", get(account::export::download))
        .route("/account/delete", post(account::delete::delete))
        .route("/account/deleted", get(account::delete::deleted))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}/rename", post(keys::rename))
        .route(
            "/keys/{id}/debug",
            get(keys::stored_requests).post(keys::debug),
        )
        .route(
            "/keys/{id}/revoke",
            get(keys::confirm_revoke).post(keys::revoke),
        )
        .route("/assets/console.css", get(layout::stylesheet))
        .route("/login/oidc", get(oidc_routes::begin))
        .route("/login/oidc/callback", get(oidc_routes::callback))
        .route("/login/passkey/start", post(passkey::sign_in_start))
        .route("/login/passkey/finish", post(passkey::sign_in_finish))
        .route(
            "/account/passkeys/register/start",
            post(passkey::register_start),
        )
        .route(
            "/account/passkeys/register/finish",
            post(passkey::register_finish),
        )
        .route("/account/passkeys/remove", post(passkey::remove))
        .route("/assets/passkey.js", get(passkey::script_asset))
        .route("/playground", get(playground::show))
        .route("/playground/ticket", post(playground::ticket))
        .route("/assets/playground.js", get(playground::script))
        .route("/assets/favicon.svg", get(layout::favicon))
        .route("/billing", get(billing::show))
        .route("/billing/topup", post(billing::topup))
        .route("/billing/alert", post(billing::alert))
        .route("/billing/success", get(billing::success))
        .route("/billing/cancel", get(billing::cancel))
        .route("/billing/statement", get(billing::statement::show))
        .route("/billing/entries", get(billing::entries::list))
        .route("/policy/{id}/dismiss", post(policy_banner::dismiss))
}

/// The test the admin API and sign-in share for an email address.
pub fn is_email(email: &str) -> bool {
    let email = email.trim();
    email.len() >= 3
        && email.len() <= 254
        && email.contains('@')
        && !email.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Who is at the other end of a request: the peer address (the server is
/// served with connect info) and the browser's `User-Agent`, for sign-in
/// rate limits and history. Never fails.
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        Ok(Client { ip, user_agent })
    }
}

/// axum's `Form`, with a malformed body answered by a console 400 page
/// (axum's own rejection is plain text). Form structs default every field,
/// so a missing field is an error in place, not a rejection.
pub struct Form<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Form<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(value)) => Ok(Form(value)),
            Err(_) => Err(error_page(
                StatusCode::BAD_REQUEST,
                "The form could not be read. Go back, reload the page and try again.",
                None,
            )),
        }
    }
}

/// The console's answer to an internal failure: a 500 page, the cause
/// logged once here (the request's span names the request).
pub fn internal(error: impl std::fmt::Display, who: Option<&Signed>) -> Response {
    tracing::warn!(%error, "a console page failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side. Try again in a moment.",
        who,
    )
}

/// Whether a request comes from a browser that wants a page: the fallback
/// answers those with the console's 404 and everything else with JSON.
pub fn wants_html(parts: &Parts) -> bool {
    let path = parts.uri.path();
    let api = path.starts_with("/v1/") || path == "/v1" || path.starts_with("/admin");
    let html = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    html && !api
}
