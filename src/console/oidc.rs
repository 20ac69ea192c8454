//! OpenID Connect sign-in for the console, from discovery to one verified
//! email: the authorization request (code flow with PKCE S256, `state` and
//! `nonce`), and the callback's checks (state, code exchange, ID token
//! signature, issuer, audience, expiry, nonce, a verified email).
//!
//! It knows no routes, cookies, sessions or accounts. The console keeps the
//! [`Pending`] sign-in that [`Oidc::begin`] returns (server-side, keyed by
//! [`Pending::state`], or in a short-lived cookie) for at most
//! [`PENDING_TTL`], hands it back to [`Oidc::finish`] on the callback, and
//! signs in whoever the returned [`VerifiedEmail`] names.
//!
//! The issuer's discovery document and signing keys are fetched once, by
//! [`Oidc::discover`] at start: an issuer that rotates its keys is picked up
//! by a restart, which discovers again.

use std::fmt;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokun_providers::clock;

pub use openidconnect::url::Url;

/// How long a started sign-in may take before its callback is refused.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// Every request to the issuer (discovery, keys, token) gives up after this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One issuer, as `[auth.oidc]` names it.
#[derive(Clone)]
pub struct OidcConfig {
    /// Exactly as the issuer spells itself in its discovery document.
    pub issuer_url: String,
    pub client_id: String,
    /// `None` for a public client, which then proves itself by PKCE alone.
    pub client_secret: Option<String>,
    /// The console's callback, e.g. `https://tokun.example/login/oidc/callback`.
    pub redirect_url: String,
    /// The sign-in button's text, e.g. "Sign in with Google".
    pub display_name: String,
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_url", &self.redirect_url)
            .field("display_name", &self.display_name)
            .finish()
    }
}

/// A discovered issuer, ready to sign people in. Cheap to share behind an
/// `Arc`; every method takes `&self`.
pub struct Oidc {
    client: Client,
    /// Never follows redirects: a redirect from the token endpoint could
    /// carry the code (or our client secret) somewhere else.
    http: reqwest::Client,
    display_name: String,
    /// As the discovery document spells it; the client keeps its own copy
    /// but offers no getter.
    issuer: String,
}

/// A sign-in between [`Oidc::begin`] and [`Oidc::finish`]. Its fields are
/// secrets: it never prints them, and whoever stores it keeps it where only
/// the server (or the same browser, in an `HttpOnly` cookie) can read it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Pending {
    state: String,
    nonce: String,
    pkce_verifier: String,
    /// Unix seconds; [`Oidc::finish`] refuses a sign-in older than
    /// [`PENDING_TTL`].
    started_at: u64,
}

/// Who signed in: the issuer vouched for this email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEmail {
    email: String,
    subject: String,
}

/// Why a sign-in was refused. The messages are safe to show the person
/// signing in: they never carry a token, a code or a secret.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("This sign-in does not match the one that was started. Please sign in again.")]
    WrongState,
    #[error("This sign-in took too long. Please sign in again.")]
    Expired,
    #[error("The sign-in provider did not accept this sign-in. Please try again.")]
    Exchange,
    #[error("The sign-in provider's answer could not be verified ({problem}).")]
    InvalidIdToken { problem: IdTokenProblem },
    #[error(
        "Your email address is not verified with the sign-in provider. \
         Verify it there, or sign in with an email code."
    )]
    UnverifiedEmail,
    #[error("The sign-in provider did not share your email address.")]
    NoEmail,
    /// At start, for the operator: the issuer could not be discovered.
    #[error("could not discover the OpenID Connect issuer: {reason}")]
    Discovery { reason: String },
}

/// What was wrong with an ID token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenProblem {
    /// The token response had no `id_token`.
    Missing,
    Signature,
    Issuer,
    Audience,
    Nonce,
    Expired,
    /// Any other claim the verifier refused.
    Other,
}

impl Oidc {
    /// Fetches the issuer's discovery document and its signing keys (once:
    /// see the module documentation) and builds the client.
    pub async fn discover(config: OidcConfig) -> Result<Oidc, OidcError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|error| discovery_failed(&error))?;
        let issuer = IssuerUrl::new(config.issuer_url).map_err(|error| discovery_failed(&error))?;
        let redirect =
            RedirectUrl::new(config.redirect_url).map_err(|error| discovery_failed(&error))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|error| discovery_failed(&error))?;
        if metadata.token_endpoint().is_none() {
            return Err(discovery_failed(&"the issuer names no token endpoint"));
        }
        let auth_type = client_auth_type(&metadata);
        let issuer = metadata.issuer().to_string();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id),
            config.client_secret.map(ClientSecret::new),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(auth_type);
        Ok(Oidc {
            client,
            http,
            display_name: config.display_name,
            issuer,
        })
    }

    /// The sign-in button's text.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The issuer, as its discovery document names it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Starts a sign-in: the URL to redirect the browser to (scopes `openid
    /// email`), and what [`Oidc::finish`] will need back.
    pub fn begin(&self) -> (Url, Pending) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".to_owned()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = Pending {
            state: state.into_secret(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.into_secret(),
            started_at: clock::unix_seconds(),
        };
        (url, pending)
    }

    /// Finishes a sign-in on the callback: `returned_state` and `code` are
    /// the callback's query parameters. The state is checked before the
    /// issuer is asked anything.
    pub async fn finish(
        &self,
        pending: Pending,
        returned_state: &str,
        code: &str,
    ) -> Result<VerifiedEmail, OidcError> {
        let state_matches: bool = pending
            .state
            .as_bytes()
            .ct_eq(returned_state.as_bytes())
            .into();
        if !state_matches {
            return Err(OidcError::WrongState);
        }
        if pending.is_stale(clock::unix_seconds()) {
            return Err(OidcError::Expired);
        }
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|error| exchange_failed(&error))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|error| exchange_failed(&error))?;
        let id_token = response.id_token().ok_or(OidcError::InvalidIdToken {
            problem: IdTokenProblem::Missing,
        })?;
        let verifier = self.client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(pending.nonce))
            .map_err(invalid_id_token)?;
        let email = claims.email().ok_or(OidcError::NoEmail)?;
        if claims.email_verified() != Some(true) {
            return Err(OidcError::UnverifiedEmail);
        }
        Ok(VerifiedEmail {
            email: email.as_str().trim().to_lowercase(),
            subject: claims.subject().as_str().to_owned(),
        })
    }
}

impl Pending {
    /// The `state` the callback must bring back: the key to keep this
    /// sign-in under.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Whether the sign-in started more than [`PENDING_TTL`] before `now`
    /// (Unix seconds).
    pub fn is_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.started_at) > PENDING_TTL.as_secs()
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

impl VerifiedEmail {
    /// Lowercased, as accounts are keyed.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The issuer's stable id for this person (`sub`).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl OidcError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            OidcError::WrongState => "wrong_state",
            OidcError::Expired => "expired",
            OidcError::Exchange => "exchange",
            OidcError::InvalidIdToken { .. } => "invalid_id_token",
            OidcError::UnverifiedEmail => "unverified_email",
            OidcError::NoEmail => "no_email",
            OidcError::Discovery { .. } => "discovery",
        }
    }
}

impl fmt::Display for IdTokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdTokenProblem::Missing => "no ID token",
            IdTokenProblem::Signature => "bad signature",
            IdTokenProblem::Issuer => "wrong issuer",
            IdTokenProblem::Audience => "wrong audience",
            IdTokenProblem::Nonce => "wrong nonce",
            IdTokenProblem::Expired => "expired",
            IdTokenProblem::Other => "invalid claims",
        })
    }
}

/// The client once discovery has set the authorization endpoint; the token
/// and userinfo endpoints are whatever the document said.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// `client_secret_basic` unless the issuer says it only takes
/// `client_secret_post`. (No list at all means basic, per the spec.)
fn client_auth_type(metadata: &CoreProviderMetadata) -> AuthType {
    let Some(methods) = metadata.token_endpoint_auth_methods_supported() else {
        return AuthType::BasicAuth;
    };
    let supports = |method: &CoreClientAuthMethod| methods.contains(method);
    if !supports(&CoreClientAuthMethod::ClientSecretBasic)
        && supports(&CoreClientAuthMethod::ClientSecretPost)
    {
        AuthType::RequestBody
    } else {
        AuthType::BasicAuth
    }
}

fn discovery_failed(error: &dyn fmt::Display) -> OidcError {
    OidcError::Discovery {
        reason: error.to_string(),
    }
}

/// Logs why the exchange failed (the library's messages carry the issuer's
/// error code, never the code or the secret) and refuses.
fn exchange_failed(error: &dyn fmt::Display) -> OidcError {
    tracing::warn!(%error, "OpenID Connect code exchange failed");
    OidcError::Exchange
}

fn invalid_id_token(error: ClaimsVerificationError) -> OidcError {
    let problem = match &error {
        ClaimsVerificationError::SignatureVerification(_) => IdTokenProblem::Signature,
        ClaimsVerificationError::InvalidIssuer(_) => IdTokenProblem::Issuer,
        ClaimsVerificationError::InvalidAudience(_) => IdTokenProblem::Audience,
        ClaimsVerificationError::InvalidNonce(_) => IdTokenProblem::Nonce,
        ClaimsVerificationError::Expired(_) => IdTokenProblem::Expired,
        _ => IdTokenProblem::Other,
    };
    tracing::warn!(%error, "OpenID Connect ID token refused");
    OidcError::InvalidIdToken { problem }
}
