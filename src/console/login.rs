//! Sign-in with a one-time email code, and sign-out. `POST /login` sends a
//! 6-digit code (10 minutes, 5 tries, hashed at rest, a new code voids the
//! old; limited per email and per client address) and answers the same
//! whether or not the email has an account; `POST /login/code` checks it,
//! creates the account of a new email with the signup credit, and starts a
//! session. Every refusal re-renders the form with the reason, never a 500.
//! The sign-in page also offers single sign-on (`oidc_routes.rs`) and
//! passkeys (`passkey.rs`) when they are on; both end in [`sign_in`] or
//! `session::start`.
//!
//! The sign-in forms come before any session, so they carry no CSRF token;
//! instead a browser's own headers must say the form was posted from this
//! site ([`from_this_site`]), so another site cannot sign a visitor into an
//! account of its choosing (login CSRF).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use rand::Rng;
use serde::Deserialize;
use tokun_storage::{CodeCheck, LoginCode, login_code_hash};

use super::layout::{Field, error_summary, page, respond};
use super::{Client, Form, Signed, error_page, internal, is_email, session};
use crate::state::AppState;

/// How long a code works.
const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Wrong guesses a code survives.
const CODE_TRIES: u32 = 5;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmailForm {
    email: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CodeForm {
    email: String,
    code: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// `GET /login`: the email form (the dashboard for someone signed in).
pub async fn form(State(state): State<AppState>, who: Option<Signed>) -> Response {
    if who.is_some() {
        return Redirect::to("/").into_response();
    }
    respond(StatusCode::OK, email_page(&state, "", None))
}

/// `POST /login`: sends a code, then shows the code form.
pub async fn send_code(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Form(form): Form<EmailForm>,
) -> Response {
    let email = match posted_email(&state, &headers, &form.email) {
        Ok(email) => email,
        Err(refused) => return *refused,
    };
    let console = state.console();
    let limited = console
        .codes_per_ip
        .allow(&client.ip)
        .and_then(|()| console.codes_per_email.allow(&email));
    if let Err(wait) = limited {
        let error = format!(
            "Too many codes were asked for. Try again in {} minutes.",
            wait.as_secs().div_ceil(60).max(1)
        );
        return respond(
            StatusCode::TOO_MANY_REQUESTS,
            email_page(&state, &email, Some(error.as_str())),
        );
    }
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    let now = tokun_providers::clock::unix_ms();
    let stored = LoginCode {
        code_hash: login_code_hash(&email, &code),
        expires_ms: now.saturating_add(CODE_TTL.as_secs() * 1000),
        tries_left: CODE_TRIES,
        created_ms: now,
    };
    if let Err(error) = state.services().store.put_login_code(&email, &stored) {
        return internal(error, None);
    }
    if let Err(error) = console.mailer().send_code(&email, &code).await {
        tracing::warn!(%error, "a sign-in code could not be sent");
        let error = "We could not send the code just now. Try again in a minute.";
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            email_page(&state, &email, Some(error)),
        );
    }
    respond(StatusCode::OK, code_page(&email, None, true))
}

/// `POST /login/code`: checks the code and signs in.
pub async fn check_code(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let email = match posted_email(&state, &headers, &form.email) {
        Ok(email) => email,
        Err(refused) => return *refused,
    };
    let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        let error = "Enter the 6-digit code from the email";
        return respond(
            StatusCode::BAD_REQUEST,
            code_page(&email, Some(error), false),
        );
    }
    let now = tokun_providers::clock::unix_ms();
    let checked = match state.services().store.check_login_code(&email, &code, now) {
        Ok(checked) => checked,
        Err(error) => return internal(error, None),
    };
    let (status, error) = match checked {
        CodeCheck::Right => return sign_in(&state, &email, "email", &client).await,
        CodeCheck::Missing => (
            StatusCode::BAD_REQUEST,
            "There is no code waiting for this address. Ask for a new one.".to_owned(),
        ),
        CodeCheck::Expired => (
            StatusCode::BAD_REQUEST,
            "This code has expired. Ask for a new one.".to_owned(),
        ),
        CodeCheck::Locked | CodeCheck::Wrong { tries_left: 0 } => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong codes: this one no longer works. Ask for a new code.".to_owned(),
        ),
        CodeCheck::Wrong { tries_left } => (
            StatusCode::BAD_REQUEST,
            format!(
                "That code is not right. {tries_left} {} left.",
                if tries_left == 1 { "try" } else { "tries" }
            ),
        ),
    };
    respond(status, code_page(&email, Some(error.as_str()), false))
}

/// Whether a sign-in form was posted from this site, by the headers every
/// current browser sends with a form post: `Sec-Fetch-Site` must not be
/// `cross-site`, and an `Origin` must name this host. A client that sends
/// neither (curl, a script) is not a browser being tricked, so it passes.
pub fn from_this_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|site| site.eq_ignore_ascii_case("cross-site")) {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (origin_host, text("host")) {
        (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        // `Origin: null` (a sandboxed or privacy-stripped page) or no Host.
        _ => false,
    }
}

/// What both sign-in forms check first: that this site posted them, and
/// the email (normalized); a refusal is the page to answer.
fn posted_email(
    state: &AppState,
    headers: &HeaderMap,
    typed: &str,
) -> Result<String, Box<Response>> {
    if !from_this_site(headers) {
        return Err(Box::new(cross_site()));
    }
    let email = typed.trim().to_lowercase();
    if !is_email(&email) {
        let error = "Enter an email address like name@example.com";
        return Err(Box::new(respond(
            StatusCode::BAD_REQUEST,
            email_page(state, typed, Some(error)),
        )));
    }
    Ok(email)
}

/// The refusal of a sign-in form posted from another site.
fn cross_site() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This sign-in form was sent from another site. Open the sign-in page here and try again.",
        None,
    )
}

/// The code was right (or the issuer vouched for the email: `method`
/// `oidc`): finds or creates the account and starts a session.
pub(super) async fn sign_in(
    state: &AppState,
    email: &str,
    method: &str,
    client: &Client,
) -> Response {
    let services = state.services();
    let account = match services.store.account_by_email(email) {
        Ok(Some(account)) => account,
        Ok(None) => {
            let credit = state.config().billing.signup_credit;
            match services
                .create_account(email, credit, "signup credit")
                .await
            {
                Ok((account, _)) => account,
                Err(error) => return internal(error, None),
            }
        }
        Err(error) => return internal(error, None),
    };
    if account.disabled || account.deleted_ms.is_some() {
        let error = if account.deleted_ms.is_some() {
            "This account was deleted, so it cannot sign in, and its email cannot start a new account. Contact support."
        } else {
            "This account is disabled, so it cannot sign in. Contact support."
        };
        return respond(StatusCode::FORBIDDEN, email_page(state, email, Some(error)));
    }
    match session::start(state, account.id, method, client).await {
        Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response(),
        Err(error) => internal(error, None),
    }
}

/// `POST /logout`: ends this session.
pub async fn logout(
    State(state): State<AppState>,
    who: Signed,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let store = &state.services().store;
    if let Err(error) = store.delete_session(&who.session_hash) {
        return internal(error, Some(&who));
    }
    if let Err(error) = store.flush_people().await {
        return internal(error, Some(&who));
    }
    let clear = session::clear_cookie(&state);
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
}

fn email_page(state: &AppState, email: &str, error: Option<&str>) -> Markup {
    let others = [
        super::oidc_routes::login_button(state),
        super::passkey::login_button(state),
    ];
    let others: Vec<Markup> = others.into_iter().flatten().collect();
    let body = html! {
        h1 { "Sign in to tokun" }
        p.lead { "We will email you a 6-digit code. A new email address gets a new account." }
        (error_summary(error.map(|e| ("email", e))))
        form method="post" action="/login" novalidate {
            (Field {
                name: "email",
                label: "Email address",
                hint: None,
                kind: "email",
                value: email,
                error,
                autocomplete: "email",
                inputmode: None,
                class: None,
            }.render())
            button type="submit" { "Send me a code" }
        }
        @if !others.is_empty() {
            div.signin-others {
                p.or { span { "or" } }
                @for other in &others { (other) }
            }
        }
    };
    narrow_page("Sign in", body)
}

fn code_page(email: &str, error: Option<&str>, sent: bool) -> Markup {
    let body = html! {
        h1 { "Check your email" }
        @if sent {
            p.notice role="status" {
                "If " strong { (email) } " can receive mail, a 6-digit code is on its way. It works for 10 minutes."
            }
        }
        (error_summary(error.map(|e| ("code", e))))
        form method="post" action="/login/code" novalidate {
            input type="hidden" name="email" value=(email);
            (Field {
                name: "code",
                label: "Sign-in code",
                hint: Some(&format!("The 6 digits we sent to {email}")),
                kind: "text",
                value: "",
                error,
                autocomplete: "one-time-code",
                inputmode: Some("numeric"),
                class: Some("code"),
            }.render())
            button type="submit" { "Sign in" }
        }
        form method="post" action="/login" {
            input type="hidden" name="email" value=(email);
            button.secondary type="submit" { "Send a new code" }
        }
        p { a href="/login" { "Use another email address" } }
    };
    narrow_page("Enter your code", body)
}

/// The sign-in pages: no navigation, a narrow column.
fn narrow_page(title: &str, body: Markup) -> Markup {
    page(title, None, html! { div.narrow { (body) } })
}
