//! A fake OpenID Connect issuer (axum on 127.0.0.1:0) for tokun's sign-in
//! tests.
//!
//! It serves what a real issuer serves to a relying party: the discovery
//! document (`/.well-known/openid-configuration`), its signing key
//! (`/jwks`), an authorization endpoint that signs the next person in at
//! once (a 302 back to `redirect_uri` with a `code` and the given `state`),
//! and a token endpoint that checks the client, the code, the redirect URI
//! and the PKCE verifier against the S256 challenge before it answers with
//! an RS256-signed ID token. A test chooses who the next sign-in is
//! ([`Identity`]) and can break the token on purpose ([`Fault`]).
//!
//! The ID token is built and signed by hand (rsa + sha2), not with the
//! openidconnect crate tokun verifies it with, so the two sides do not share
//! a bug. The key is a fixed test key: generating one per run costs seconds
//! in a debug build. Never used by the product itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// The client id the fake issuer knows.
pub const CLIENT_ID: &str = "tokun-console";
/// That client's secret.
pub const CLIENT_SECRET: &str = "fake-oidc-client-secret";
/// The `kid` of the one signing key.
const KEY_ID: &str = "fake-issuer-key-1";

/// Who the next sign-in is, as the ID token will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// `None` leaves the `email` claim out.
    pub email: Option<String>,
    /// `None` leaves the `email_verified` claim out.
    pub email_verified: Option<bool>,
}

impl Identity {
    /// A person whose issuer vouches for `email`.
    pub fn verified(email: &str) -> Identity {
        Identity {
            subject: format!("sub-{email}"),
            email: Some(email.to_owned()),
            email_verified: Some(true),
        }
    }
}

/// A way to break the next ID token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `iss` names another issuer.
    WrongIssuer,
    /// `aud` names another client.
    WrongAudience,
    /// `nonce` is not the one the authorization request carried.
    WrongNonce,
    /// `exp` passed an hour ago.
    Expired,
    /// The signature does not match the token's contents.
    BadSignature,
}

/// The running fake; stops when dropped.
pub struct FakeIssuer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeIssuer {
    /// Binds 127.0.0.1:0 and serves until dropped. The first identity is
    /// `Identity::verified("person@example.com")`, with no fault.
    pub async fn start() -> std::io::Result<FakeIssuer> {
        let key = RsaPrivateKey::from_pkcs8_pem(TEST_KEY_PEM)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            key,
            identity: Mutex::new(Identity::verified("person@example.com")),
            fault: Mutex::new(None),
            grants: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            exchanges: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeIssuer { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`, exactly as the discovery document and the
    /// tokens spell it (no trailing slash).
    pub fn issuer_url(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who the next authorization signs in (kept until changed).
    pub fn set_identity(&self, identity: Identity) {
        *lock(&self.shared.identity) = identity;
    }

    /// Breaks the ID tokens of the authorizations from now on (`None`
    /// mends them).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.shared.fault) = fault;
    }

    /// How many requests reached `/token`, answered or refused.
    pub fn token_exchanges(&self) -> u64 {
        self.shared.exchanges.load(Ordering::SeqCst)
    }
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    issuer: String,
    key: RsaPrivateKey,
    identity: Mutex<Identity>,
    fault: Mutex<Option<Fault>>,
    /// Codes handed out by `/authorize` and not yet redeemed.
    grants: Mutex<HashMap<String, Grant>>,
    counter: AtomicU64,
    exchanges: AtomicU64,
}

/// What `/authorize` promised for one code; `/token` holds the client to it.
struct Grant {
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: String,
    identity: Identity,
    fault: Option<Fault>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let issuer = &shared.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "email", "email_verified"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let public = shared.key.to_public_key();
    Json(json!({"keys": [{
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": KEY_ID,
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    }]}))
}

/// Signs the current identity in at once: no login page, no consent.
async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let param = |name: &str| query.get(name).map(String::as_str);
    if param("client_id") != Some(CLIENT_ID) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let (Some(redirect_uri), Some(state)) = (param("redirect_uri"), param("state")) else {
        return (
            StatusCode::BAD_REQUEST,
            "redirect_uri and state are required",
        )
            .into_response();
    };
    if param("response_type") != Some("code") {
        return (StatusCode::BAD_REQUEST, "response_type must be code").into_response();
    }
    let scopes: Vec<&str> = param("scope").unwrap_or("").split(' ').collect();
    if !scopes.contains(&"openid") {
        return (StatusCode::BAD_REQUEST, "scope must include openid").into_response();
    }
    // This issuer insists on PKCE with S256, as a careful one does.
    let (Some(challenge), Some("S256")) = (param("code_challenge"), param("code_challenge_method"))
    else {
        return (StatusCode::BAD_REQUEST, "PKCE with S256 is required").into_response();
    };
    let code = format!("code-{}", shared.counter.fetch_add(1, Ordering::SeqCst));
    let grant = Grant {
        redirect_uri: redirect_uri.to_owned(),
        nonce: param("nonce").map(str::to_owned),
        code_challenge: challenge.to_owned(),
        identity: lock(&shared.identity).clone(),
        fault: *lock(&shared.fault),
    };
    lock(&shared.grants).insert(code.clone(), grant);
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!(
        "{redirect_uri}{separator}code={}&state={}",
        percent_encode(&code),
        percent_encode(state)
    );
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// Redeems a code once, for a client that proves it started the sign-in.
async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    shared.exchanges.fetch_add(1, Ordering::SeqCst);
    let param = |name: &str| form.get(name).map(String::as_str);
    if !client_authenticated(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if param("grant_type") != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // A code is spent by its first use, right or wrong, as RFC 6749 asks.
    let grant = param("code").and_then(|code| lock(&shared.grants).remove(code));
    let Some(grant) = grant else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if param("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let verifier = param("code_verifier").unwrap_or("");
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.code_challenge {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let Some(id_token) = id_token(&shared, &grant) else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    let serial = shared.counter.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "access_token": format!("fake-access-token-{serial}"),
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token,
    }))
    .into_response()
}

/// `client_secret_basic` (form-urlencoded id and secret in Basic) or
/// `client_secret_post` (both in the body).
fn client_authenticated(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let (id, secret) = match &basic {
        Some(pair) => match pair.split_once(':') {
            Some((id, secret)) => (percent_decode(id), Some(percent_decode(secret))),
            None => return false,
        },
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned(),
        ),
    };
    id == CLIENT_ID && secret.as_deref() == Some(CLIENT_SECRET)
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

/// The RS256 ID token for `grant`, broken as its fault says.
fn id_token(shared: &Shared, grant: &Grant) -> Option<String> {
    let now = now_secs();
    let fault = grant.fault;
    let identity = &grant.identity;
    let mut claims = json!({
        "iss": if fault == Some(Fault::WrongIssuer) { "http://issuer.invalid" } else { shared.issuer.as_str() },
        "sub": identity.subject,
        "aud": if fault == Some(Fault::WrongAudience) { "someone-else" } else { CLIENT_ID },
        "iat": now,
        "exp": if fault == Some(Fault::Expired) { now - 3600 } else { now + 600 },
    });
    let nonce = match fault {
        Some(Fault::WrongNonce) => Some("not-the-nonce-you-sent".to_owned()),
        _ => grant.nonce.clone(),
    };
    let object = claims.as_object_mut()?;
    if let Some(nonce) = nonce {
        object.insert("nonce".into(), nonce.into());
    }
    if let Some(email) = &identity.email {
        object.insert("email".into(), email.clone().into());
    }
    if let Some(verified) = identity.email_verified {
        object.insert("email_verified".into(), verified.into());
    }
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": KEY_ID});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signed = signing_input.clone().into_bytes();
    if fault == Some(Fault::BadSignature) {
        signed.extend_from_slice(b" tampered");
    }
    let signature = shared
        .key
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&signed))
        .ok()?;
    Some(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

fn now_secs() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Undoes form-urlencoding (`+` and `%XX`); a malformed escape stays as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A 2048-bit RSA key made for these tests alone (`openssl genpkey`); it
/// signs nothing outside them.
const TEST_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEugIBADANBgkqhkiG9w0BAQEFAASCBKQwggSgAgEAAoIBAQC9eCUYSWHfHToq
jIbZmi+0OohBchdQd4vYfHBqEsZK94VVW4pNZj1zAxlSFk7fbXAzXuE9ysFJYU/i
tycz6ipUprHn6L0xyyzLS3yWisnCwbn+evhfA6Dm7ySaMltRk4aY38VsqUZ5kVfB
xx05jXZwTHFp2sdSm8kDZqS+3LIid/MNH2t32g9ZaGn8QmVtTPh1q8+HLO63r6gJ
0EXOJ1tXfW4tfyUvahPwGdcN1Gd15auaFhewMYYnrJ3TL64pm7zctk4LHBY+QpPI
GZ5/IHVaLAleaF5SKqPjvbVCPXxEHH/ZPSOCrafZEgLgKwwE5Sb77rm8uB/FkpKu
YIfucdcnAgMBAAECgf9ql2gwKMweTGvo/lt/il84+F0afC4E8rp7IY6HnH7L52z+
6o5NJvioO6kvBTPQsGrnWTpt2yc6VLwvr297TQpZfmLZAD7APQILXPfezKw+8nVq
Kf2cemC8y+fkfC8NxvMloylophePJrV3TPartLKuE6tPbZXT6WHXD51mHrePGoRq
XcVjhMZgurvgMzbsleaXf/OdbBewhP8/Twe3VofHkZp7PW5afHmKHIGg221fC8bU
hERpUFWXxPzKTnfM8Hr+GMphAXMpiPlsdw1KtpNRJ5A1CMbby8Dha2ZZNskfMnAm
W2bdZKzNd/0V5v0q4ysL1984BX5JbLcTcvEK+aUCgYEA87YLzu+dy6VZh7YVdckP
nxIFq/sua+lcJV9vikmLwC7ireTxb3AOoxeoxHlPxsUUMxlPk9OWkukUCQeduNMy
rdOpQ9MjLNNqDcRbV/Gwj7otMrTgDt3J3MqpAJxGlpV+P5lH2yRAGN3KPCLepRos
PECGR1TkN5EfCDWuzbuRYgsCgYEAxwXqn3K42YQLbA5DCLryRpiRLsOWFCnXPpRz
hsx5DOifuJ61hxZ7fTc5y7DUTeIGkpOYI+X/q/qPsmcHrTmJwuw4tXxKc1pRZyQO
7hHan62pJcShtvczQ/33CaoWJlXXGqMsL/OjV+b7SlZYHX2gN8X8hdkFbsKjWCFA
etwgTNUCgYAdhry/gYBYn9vM+V54OrfNyd0uDOx+3nLvhDR7SJXJ3uRPtSEbIzRi
xgcIZronltDvr+1YN5ZSjjKDNY0CS3QkYzRqpzXnxGVg7Z0zdnCxuRiowAk1Q+Gl
AlifXk+fBtWY1vVBs46gdJ5/0qmuzxD068xY8AwGP2rHD9nxyvu+KQKBgDNRqD0z
NM0JynQzfT+MDRr9Djqzvkg2vcTqPJver7wPY9gUPJS3zGHuUp3eW/A1PyKeolVn
YjTzaAhFnuog8w/rH3hUs1HpUSI6XwsuWWRhQEN334cxWOvIWeIJFKsP6WZ5+tPm
jBEHg3aYqyH3mc+n4sSUwFzeHYaFFH5Zso59AoGAYiFFRztBEAKLJAFt7nJiUQ1D
CwniqL4BIXNEWqh5pKWrdgXYf8H/HMuEosrh+dV/qXvj0tnXhk1bo3aEBGjqWg7w
hdzM9X5B3dgs6SGELdedByJZzsz1VeCsdaAYFrkvUu1KK0EuEVWJTHowoKzGMKtX
ILAX7ixZWCpyLHwnd10=
-----END PRIVATE KEY-----
";
