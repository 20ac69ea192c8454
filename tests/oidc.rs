//! OpenID Connect sign-in end to end against the fake issuer in testkit:
//! discovery, the authorization redirect, the code exchange with PKCE and
//! every check on the ID token, each way a sign-in must be refused, and
//! that no refusal shows a token or a secret.
//!
//! The module is included by path so it is tested before the console wires
//! it in; it depends on nothing of tokun's but the shared clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

#[allow(dead_code, reason = "the console uses the rest")]
#[path = "../src/console/oidc.rs"]
mod oidc;

use oidc::{IdTokenProblem, Oidc, OidcConfig, OidcError, Pending, Url, VerifiedEmail};
use serde_json::Value;
use tokun_testkit::oidc::{CLIENT_ID, CLIENT_SECRET, FakeIssuer, Fault, Identity};

const CALLBACK: &str = "http://127.0.0.1:9/login/oidc/callback";

fn config(issuer: &FakeIssuer) -> OidcConfig {
    OidcConfig {
        issuer_url: issuer.issuer_url(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Some(CLIENT_SECRET.to_owned()),
        redirect_url: CALLBACK.to_owned(),
        display_name: "Sign in with Fake".to_owned(),
    }
}

async fn start() -> (FakeIssuer, Oidc) {
    let issuer = FakeIssuer::start().await.unwrap();
    let oidc = Oidc::discover(config(&issuer)).await.unwrap();
    (issuer, oidc)
}

/// What the browser does between `begin` and the callback: follow the
/// authorize URL to the issuer, and read `code` and `state` off the 302.
async fn authorize(url: &Url) -> (String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(url.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 302, "{}", response.text().await.unwrap());
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(CALLBACK), "{location}");
    let location = Url::parse(location).unwrap();
    let param = |name: &str| {
        let (_, value) = location.query_pairs().find(|(key, _)| key == name).unwrap();
        value.into_owned()
    };
    (param("code"), param("state"))
}

/// A whole sign-in; also returns what a leaky error message could show.
async fn sign_in(oidc: &Oidc) -> (Result<VerifiedEmail, OidcError>, Vec<String>) {
    let (url, pending) = oidc.begin();
    let (code, state) = authorize(&url).await;
    let secrets = secrets_of(&pending, &code);
    (oidc.finish(pending, &state, &code).await, secrets)
}

fn secrets_of(pending: &Pending, code: &str) -> Vec<String> {
    let json = serde_json::to_value(pending).unwrap();
    let mut secrets = vec![code.to_owned(), CLIENT_SECRET.to_owned()];
    for field in ["state", "nonce", "pkce_verifier"] {
        secrets.push(json[field].as_str().unwrap().to_owned());
    }
    secrets
}

/// The refusal's message and debug form name no secret, no access token and
/// no JWT (`eyJ` starts every base64url JSON object).
fn assert_no_secrets(error: &OidcError, secrets: &[String]) {
    for shown in [error.to_string(), format!("{error:?}")] {
        for secret in secrets
            .iter()
            .map(String::as_str)
            .chain(["fake-access-token", "eyJ"])
        {
            assert!(!shown.contains(secret), "{shown:?} shows {secret:?}");
        }
    }
}

async fn refused_id_token(fault: Fault, problem: IdTokenProblem) {
    let (issuer, oidc) = start().await;
    issuer.set_fault(Some(fault));
    let (result, secrets) = sign_in(&oidc).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, OidcError::InvalidIdToken { problem: p } if p == problem),
        "{fault:?}: {error:?}"
    );
    assert_no_secrets(&error, &secrets);
    assert_eq!(issuer.token_exchanges(), 1);
}

#[tokio::test]
async fn signs_in_with_a_verified_email_lowercased() {
    let (issuer, oidc) = start().await;
    issuer.set_identity(Identity::verified("Person.Name@Example.COM"));
    assert_eq!(oidc.display_name(), "Sign in with Fake");
    assert_eq!(oidc.issuer(), issuer.issuer_url());

    let (url, pending) = oidc.begin();
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(param("scope"), Some("openid email"));
    assert_eq!(param("code_challenge_method"), Some("S256"));
    assert_eq!(param("state"), Some(pending.state()));
    assert!(param("nonce").is_some_and(|nonce| nonce.len() >= 16));
    assert_eq!(param("redirect_uri"), Some(CALLBACK));

    let (code, state) = authorize(&url).await;
    let signed_in = oidc.finish(pending, &state, &code).await.unwrap();
    assert_eq!(signed_in.email(), "person.name@example.com");
    assert_eq!(signed_in.subject(), "sub-Person.Name@Example.COM");
    assert_eq!(issuer.token_exchanges(), 1);
}

#[tokio::test]
async fn two_sign_ins_get_different_state_nonce_and_verifier() {
    let (_issuer, oidc) = start().await;
    let (_, first) = oidc.begin();
    let (_, second) = oidc.begin();
    let first = serde_json::to_value(&first).unwrap();
    let second = serde_json::to_value(&second).unwrap();
    for field in ["state", "nonce", "pkce_verifier"] {
        assert_ne!(first[field], second[field], "{field}");
    }
}

#[tokio::test]
async fn a_wrong_state_is_refused_before_the_issuer_is_asked() {
    let (issuer, oidc) = start().await;
    let (url, pending) = oidc.begin();
    let (code, state) = authorize(&url).await;
    let secrets = secrets_of(&pending, &code);
    let error = oidc
        .finish(pending.clone(), &format!("{state}x"), &code)
        .await
        .unwrap_err();
    assert!(matches!(error, OidcError::WrongState), "{error:?}");
    let error = oidc.finish(pending, "", &code).await.unwrap_err();
    assert!(matches!(error, OidcError::WrongState), "{error:?}");
    assert_no_secrets(&error, &secrets);
    assert_eq!(issuer.token_exchanges(), 0);
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    refused_id_token(Fault::WrongNonce, IdTokenProblem::Nonce).await;
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    refused_id_token(Fault::WrongIssuer, IdTokenProblem::Issuer).await;
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    refused_id_token(Fault::WrongAudience, IdTokenProblem::Audience).await;
}

#[tokio::test]
async fn an_expired_id_token_is_refused() {
    refused_id_token(Fault::Expired, IdTokenProblem::Expired).await;
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    refused_id_token(Fault::BadSignature, IdTokenProblem::Signature).await;
}

#[tokio::test]
async fn an_unverified_or_unvouched_email_is_refused() {
    let (issuer, oidc) = start().await;
    for email_verified in [Some(false), None] {
        issuer.set_identity(Identity {
            email_verified,
            ..Identity::verified("person@example.com")
        });
        let (result, secrets) = sign_in(&oidc).await;
        let error = result.unwrap_err();
        assert!(matches!(error, OidcError::UnverifiedEmail), "{error:?}");
        assert_no_secrets(&error, &secrets);
    }
}

#[tokio::test]
async fn a_missing_email_is_refused() {
    let (issuer, oidc) = start().await;
    issuer.set_identity(Identity {
        email: None,
        ..Identity::verified("person@example.com")
    });
    let (result, secrets) = sign_in(&oidc).await;
    let error = result.unwrap_err();
    assert!(matches!(error, OidcError::NoEmail), "{error:?}");
    assert_no_secrets(&error, &secrets);
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused_by_the_issuer() {
    let (issuer, oidc) = start().await;
    let (url, pending) = oidc.begin();
    let (code, state) = authorize(&url).await;
    let secrets = secrets_of(&pending, &code);
    // Another sign-in's verifier: well formed, but not this challenge's.
    let (_, other) = oidc.begin();
    let mut forged = serde_json::to_value(&pending).unwrap();
    forged["pkce_verifier"] = serde_json::to_value(&other).unwrap()["pkce_verifier"].clone();
    let forged: Pending = serde_json::from_value(forged).unwrap();

    let error = oidc.finish(forged, &state, &code).await.unwrap_err();
    assert!(matches!(error, OidcError::Exchange), "{error:?}");
    assert_no_secrets(&error, &secrets);
    assert_eq!(issuer.token_exchanges(), 1);
    // The failed attempt spent the code: the right verifier is too late.
    let error = oidc.finish(pending, &state, &code).await.unwrap_err();
    assert!(matches!(error, OidcError::Exchange), "{error:?}");
}

#[tokio::test]
async fn a_code_signs_in_once() {
    let (_issuer, oidc) = start().await;
    let (url, pending) = oidc.begin();
    let (code, state) = authorize(&url).await;
    oidc.finish(pending.clone(), &state, &code).await.unwrap();
    let error = oidc.finish(pending, &state, &code).await.unwrap_err();
    assert!(matches!(error, OidcError::Exchange), "{error:?}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused() {
    let issuer = FakeIssuer::start().await.unwrap();
    let oidc = Oidc::discover(OidcConfig {
        client_secret: Some("not-the-secret".to_owned()),
        ..config(&issuer)
    })
    .await
    .unwrap();
    let (result, secrets) = sign_in(&oidc).await;
    let error = result.unwrap_err();
    assert!(matches!(error, OidcError::Exchange), "{error:?}");
    assert_no_secrets(
        &error,
        &[secrets, vec!["not-the-secret".to_owned()]].concat(),
    );
}

#[tokio::test]
async fn a_stale_sign_in_is_refused() {
    let (issuer, oidc) = start().await;
    let (url, pending) = oidc.begin();
    let (code, state) = authorize(&url).await;
    let mut stale = serde_json::to_value(&pending).unwrap();
    let started_at = stale["started_at"].as_u64().unwrap();
    stale["started_at"] = Value::from(started_at - oidc::PENDING_TTL.as_secs() - 1);
    let stale: Pending = serde_json::from_value(stale).unwrap();
    assert!(stale.is_stale(started_at));
    assert!(!pending.is_stale(started_at + oidc::PENDING_TTL.as_secs()));

    let error = oidc.finish(stale, &state, &code).await.unwrap_err();
    assert!(matches!(error, OidcError::Expired), "{error:?}");
    assert_eq!(issuer.token_exchanges(), 0);
}

#[tokio::test]
async fn pending_and_config_never_print_their_secrets() {
    let (issuer, oidc) = start().await;
    let (_, pending) = oidc.begin();
    let shown = format!("{pending:?} {:?}", config(&issuer));
    for secret in secrets_of(&pending, "unused") {
        assert!(!shown.contains(&secret), "{shown} shows {secret}");
    }
}

#[tokio::test]
async fn discovery_fails_for_a_mismatched_or_absent_issuer() {
    let issuer = FakeIssuer::start().await.unwrap();
    // The document names the issuer without a trailing slash.
    let error = Oidc::discover(OidcConfig {
        issuer_url: format!("{}/", issuer.issuer_url()),
        ..config(&issuer)
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(error, OidcError::Discovery { .. }), "{error:?}");

    // A port that was free a moment ago: nothing answers there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = Oidc::discover(OidcConfig {
        issuer_url: format!("http://{addr}"),
        client_id: CLIENT_ID.to_owned(),
        client_secret: None,
        redirect_url: CALLBACK.to_owned(),
        display_name: String::new(),
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(error, OidcError::Discovery { .. }), "{error:?}");
    assert_eq!(error.kind(), "discovery");
}
