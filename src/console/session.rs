//! Console sessions: the `tokun_session` cookie (32 random bytes, hex; only
//! its SHA-256 is stored), the `Signed` extractor that turns it into a
//! person, and the CSRF check every state-changing form goes through. A
//! missing, tampered, expired or revoked cookie, or a disabled account, is
//! signed out: a GET is sent to `/login`, anything else gets a 403 page.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokun_storage::{AccountId, Profile, SessionRecord, SignInRecord, constant_time_eq};

use super::{Client, error_page, internal};
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "tokun_session";

/// A signed-in person, taken from the session cookie.
#[derive(Clone, Debug)]
pub struct Signed {
    pub account: AccountId,
    pub email: String,
    /// This session's CSRF token, put in every state-changing form.
    pub csrf: String,
    pub session_hash: [u8; 32],
    pub profile: Profile,
}

impl Signed {
    /// Checks a form's CSRF token against this session's: a missing,
    /// forged or other session's token is a 403 page (boxed: it is the
    /// rare path).
    pub fn check(&self, csrf: &str) -> Result<(), Box<Response>> {
        if !csrf.is_empty() && constant_time_eq(csrf.as_bytes(), self.csrf.as_bytes()) {
            return Ok(());
        }
        Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site. Go back, reload the page and try again.",
            Some(self),
        )))
    }
}

/// Why there is no `Signed`: nobody (or an ended session), or the store failed.
enum Lookup {
    SignedOut,
    Failed(tokun_storage::StorageError),
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match lookup(&parts.headers, state) {
            Ok(signed) => Ok(signed),
            Err(Lookup::Failed(error)) => Err(internal(error, None)),
            Err(Lookup::SignedOut) => Err(signed_out(&parts.method, state)),
        }
    }
}

impl OptionalFromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Response> {
        match lookup(&parts.headers, state) {
            Ok(signed) => Ok(Some(signed)),
            Err(Lookup::SignedOut) => Ok(None),
            Err(Lookup::Failed(error)) => Err(internal(error, None)),
        }
    }
}

/// The signed-in person of a request, if any (the 404 fallback's nav).
pub fn signed_in(headers: &HeaderMap, state: &AppState) -> Option<Signed> {
    lookup(headers, state).ok()
}

fn lookup(headers: &HeaderMap, state: &AppState) -> Result<Signed, Lookup> {
    let token = cookie(headers, COOKIE).ok_or(Lookup::SignedOut)?;
    // A well-formed token is 64 hex digits; anything else was never ours.
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Lookup::SignedOut);
    }
    let hash = hash_token(token);
    let store = &state.services().store;
    let failed = Lookup::Failed;
    let session = store
        .session(&hash)
        .map_err(failed)?
        .ok_or(Lookup::SignedOut)?;
    if session.expires_ms <= tokun_providers::clock::unix_ms() {
        let _ = store.delete_session(&hash);
        return Err(Lookup::SignedOut);
    }
    let account = store
        .account(session.account)
        .map_err(failed)?
        .ok_or(Lookup::SignedOut)?;
    if account.disabled || account.deleted_ms.is_some() {
        return Err(Lookup::SignedOut);
    }
    let profile = store.profile(account.id).map_err(failed)?;
    Ok(Signed {
        account: account.id,
        email: account.email,
        csrf: session.csrf,
        session_hash: hash,
        profile,
    })
}

/// Signed out: a GET goes to the sign-in page, anything else is refused.
/// Either way the browser forgets the cookie.
fn signed_out(method: &Method, state: &AppState) -> Response {
    let mut response = if method == Method::GET || method == Method::HEAD {
        Redirect::to("/login").into_response()
    } else {
        error_page(
            StatusCode::FORBIDDEN,
            "You are signed out. Sign in again, then try once more.",
            None,
        )
    };
    if let Ok(clear) = HeaderValue::from_str(&clear_cookie(state)) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

/// Starts a session for `account`: stores it and the sign-in (flushed, so
/// it survives a restart) and returns the `Set-Cookie` value.
pub async fn start(
    state: &AppState,
    account: AccountId,
    method: &str,
    client: &Client,
) -> Result<String, tokun_storage::StorageError> {
    let token = random_hex();
    let now = tokun_providers::clock::unix_ms();
    let lifetime = state.config().auth.session;
    let session = SessionRecord {
        account,
        created_ms: now,
        expires_ms: now.saturating_add(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX)),
        csrf: random_hex(),
        ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
        method: method.to_owned(),
    };
    let store = &state.services().store;
    store.put_session(&hash_token(&token), &session)?;
    let signin = SignInRecord {
        at_ms: now,
        method: method.to_owned(),
        ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
    };
    store.record_signin(account, &signin)?;
    store.flush_people().await?;
    Ok(format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{}",
        lifetime.as_secs(),
        secure(state)
    ))
}

/// The `Set-Cookie` value that makes a browser forget its session.
pub fn clear_cookie(state: &AppState) -> String {
    format!(
        "{COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{}",
        secure(state)
    )
}

/// `Secure` whenever people reach tokun over https: `[server.tls]`, or an
/// https `server.public_url` (TLS ended by a proxy in front).
fn secure(state: &AppState) -> &'static str {
    if state.config().server.https() {
        "; Secure"
    } else {
        ""
    }
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 32 random bytes as 64 lowercase hex digits.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    crate::hex::encode(&bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tokun_session=abc"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), None);
        let token = random_hex();
        assert_eq!(token.len(), 64);
        assert_ne!(token, random_hex());
    }
}
