//! "Sign in with …" through the one OpenID Connect issuer of `[auth.oidc]`:
//! the routes around the core in `oidc.rs`. `GET /login/oidc` starts a
//! sign-in and keeps its [`Pending`] here, in memory, keyed by `state`, for
//! at most `oidc::PENDING_TTL`; `GET /login/oidc/callback` takes it back (once:
//! a replayed callback finds nothing), lets the core check everything, and
//! signs in the verified email exactly as the email-code path does (a new
//! email gets an account with the signup credit).
//!
//! The issuer is discovered at start ([`OidcSignIn::discover`]). If that
//! fails the server still starts: the error is logged, the button says the
//! provider is unavailable, and the next click tries discovery again.
//! A restart forgets sign-ins in progress; people just click again.
//!
//! The browser that started a sign-in must finish it: `/login/oidc` also
//! sets the short-lived cookie `tokun_oidc` to the state, and the callback
//! refuses a state that cookie does not carry. Without it, someone could
//! start a sign-in as themselves and get another person's browser to
//! finish it (login CSRF), signing that person into the wrong account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tokun_providers::clock;

use super::oidc::{Oidc, OidcConfig, OidcError, Pending};
use super::{Client, error_page, login};
use crate::config::Config;
use crate::state::AppState;

/// Sign-ins in progress at most; beyond, new ones wait for old ones to end.
const MAX_PENDING: usize = 10_000;
/// The cookie that ties a sign-in to the browser that started it.
const STATE_COOKIE: &str = "tokun_oidc";

/// The issuer, once discovered, and the sign-ins in progress.
pub struct OidcSignIn {
    config: OidcConfig,
    /// `None` until discovery succeeds (at start, or on a later click).
    discovered: RwLock<Option<Arc<Oidc>>>,
    /// One discovery at a time: a burst of clicks on a failed issuer
    /// waits for the one attempt in flight instead of each starting its own.
    discovering: tokio::sync::Mutex<()>,
    /// `state` → the sign-in it names; taken (removed) by the callback.
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Callback {
    code: String,
    state: String,
    error: String,
}

impl OidcSignIn {
    /// From `[auth.oidc]`, undiscovered; `None` without that section. The
    /// callback is `<server.public_url>/login/oidc/callback` (without a
    /// public URL: `http://localhost:<listen port>`, for development).
    pub fn new(config: &Config) -> Option<OidcSignIn> {
        let oidc = config.auth.oidc.as_ref()?;
        let base = match config.server.public_url.as_deref() {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://localhost:{}", config.server.listen.port()),
        };
        Some(OidcSignIn {
            config: OidcConfig {
                issuer_url: oidc.issuer_url.clone(),
                client_id: oidc.client_id.clone(),
                client_secret: oidc.client_secret.as_ref().map(|s| s.expose().to_owned()),
                redirect_url: format!("{base}/login/oidc/callback"),
                display_name: oidc.display_name.clone(),
            },
            discovered: RwLock::new(None),
            discovering: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Discovers the issuer unless it already is; logs a failure (the
    /// operator's clue) and returns the client when it worked.
    pub async fn discover(&self) -> Option<Arc<Oidc>> {
        if let Some(oidc) = self.current() {
            return Some(oidc);
        }
        let _one_at_a_time = self.discovering.lock().await;
        if let Some(oidc) = self.current() {
            return Some(oidc);
        }
        match Oidc::discover(self.config.clone()).await {
            Ok(oidc) => {
                let oidc = Arc::new(oidc);
                *self
                    .discovered
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(oidc.clone());
                tracing::info!(issuer = oidc.issuer(), "OpenID Connect sign-in is ready");
                Some(oidc)
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    issuer = %self.config.issuer_url,
                    "OpenID Connect sign-in is unavailable until the issuer can be discovered \
                     (the next click on its button tries again)"
                );
                None
            }
        }
    }

    /// The provider's name, for buttons and messages.
    fn name(&self) -> String {
        self.current().map_or_else(
            || self.config.display_name.clone(),
            |oidc| oidc.display_name().to_owned(),
        )
    }

    fn current(&self) -> Option<Arc<Oidc>> {
        self.discovered
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps a started sign-in; `false` when too many are in progress.
    fn keep(&self, pending: Pending) -> bool {
        let now = clock::unix_seconds();
        let mut map = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_PENDING {
            map.retain(|_, kept| !kept.is_stale(now));
        }
        if map.len() >= MAX_PENDING {
            return false;
        }
        map.insert(pending.state().to_owned(), pending);
        true
    }

    /// Takes the sign-in `state` names, if any (once).
    fn take(&self, state: &str) -> Option<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(state)
    }
}

/// The "Sign in with …" button for `/login`, if `[auth.oidc]` is set:
/// greyed with a note while the issuer is undiscovered (it still works:
/// the click tries again).
pub fn login_button(state: &AppState) -> Option<Markup> {
    let oidc = state.console().oidc.as_ref()?;
    let name = oidc.name();
    let ready = oidc.current().is_some();
    Some(html! {
        a.button.secondary.oidc href="/login/oidc" aria-disabled=[(!ready).then_some("true")]
            aria-describedby=[(!ready).then_some("oidc-unavailable")] {
            "Sign in with " (name)
        }
        @if !ready {
            p.hint id="oidc-unavailable" {
                (name) " could not be reached. It may be unavailable right now; selecting the button tries again."
            }
        }
    })
}

/// `GET /login/oidc`: to the issuer, with a fresh state, nonce and PKCE.
pub async fn begin(State(state): State<AppState>) -> Response {
    let Some(sign_in) = state.console().oidc.as_ref() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "This server has no single sign-on.",
            None,
        );
    };
    let Some(oidc) = sign_in.discover().await else {
        let message = format!(
            "Sign-in with {} is unavailable right now. Try again in a few minutes, or sign in with an email code.",
            sign_in.name()
        );
        return error_page(StatusCode::SERVICE_UNAVAILABLE, &message, None);
    };
    let (url, pending) = oidc.begin();
    let state_value = pending.state().to_owned();
    if !sign_in.keep(pending) {
        let message = "Too many sign-ins are in progress. Try again in a few minutes.";
        return error_page(StatusCode::SERVICE_UNAVAILABLE, message, None);
    }
    let mut response = Redirect::to(url.as_str()).into_response();
    let cookie = state_cookie(
        &state,
        &format!("{state_value}; Max-Age={}", PENDING_TTL_SECS),
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// How long the state cookie lives: as long as a pending sign-in.
const PENDING_TTL_SECS: u64 = super::oidc::PENDING_TTL.as_secs();

/// `tokun_oidc=<value>` for the callback's path only, `Secure` over https.
fn state_cookie(state: &AppState, value: &str) -> String {
    let secure = if state.config().server.https() {
        "; Secure"
    } else {
        ""
    };
    format!("{STATE_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/login/oidc{secure}")
}

/// Whether the request's `tokun_oidc` cookie carries `expected`.
fn carries_state(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| {
            name == STATE_COOKIE
                && !expected.is_empty()
                && tokun_storage::constant_time_eq(value.as_bytes(), expected.as_bytes())
        })
}

/// `GET /login/oidc/callback?code&state` (or `?error=`): checks the sign-in
/// and starts a session.
pub async fn callback(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Query(query): Query<Callback>,
) -> Response {
    let mut response = finish(&state, &client, &headers, &query).await;
    // The sign-in is over either way: the browser may forget its state.
    if let Ok(clear) = HeaderValue::from_str(&state_cookie(&state, "; Max-Age=0")) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

async fn finish(
    state: &AppState,
    client: &Client,
    headers: &HeaderMap,
    query: &Callback,
) -> Response {
    let Some(sign_in) = state.console().oidc.as_ref() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "This server has no single sign-on.",
            None,
        );
    };
    // Taken first, whatever follows: a state works once.
    let pending = sign_in.take(&query.state);
    if !query.error.is_empty() {
        let message = format!(
            "{} did not sign you in (the sign-in was cancelled or refused). Please try again.",
            sign_in.name()
        );
        return error_page(StatusCode::BAD_REQUEST, &message, None);
    }
    let this_browser = carries_state(headers, &query.state);
    let (Some(pending), Some(oidc), true) = (pending, sign_in.current(), this_browser) else {
        return refused(&OidcError::WrongState);
    };
    match oidc.finish(pending, &query.state, &query.code).await {
        Ok(verified) => {
            tracing::info!(subject = verified.subject(), "signed in by OpenID Connect");
            login::sign_in(state, verified.email(), "oidc", client).await
        }
        Err(error) => refused(&error),
    }
}

/// A refused sign-in: the core's message (it never carries a secret), 400.
fn refused(error: &OidcError) -> Response {
    tracing::info!(kind = error.kind(), "an OpenID Connect sign-in was refused");
    error_page(StatusCode::BAD_REQUEST, &error.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_follows_the_public_url() {
        let text = "[server]\npublic_url = \"https://tokun.example/\"\n[auth.oidc]\nissuer_url = \"https://id.example\"\nclient_id = \"c\"\n";
        let config = Config::parse(text, |_| None).unwrap();
        let sign_in = OidcSignIn::new(&config).unwrap();
        assert_eq!(
            sign_in.config.redirect_url,
            "https://tokun.example/login/oidc/callback"
        );
        assert_eq!(sign_in.name(), "id.example");
        assert!(OidcSignIn::new(&Config::default()).is_none());
    }
}
