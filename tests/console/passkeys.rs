//! Passkeys over real HTTP, without an authenticator (the browser tests
//! have one): registering needs a session and its CSRF token, the options
//! ask for a discoverable credential of relying party `localhost`, and a
//! forged or replayed answer — to registration or to sign-in — is refused
//! with a 400 and starts no session. Removing needs the CSRF token and
//! touches only the person's own passkeys.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::support::Harness;

/// A session cookie and its CSRF token, signed in by an email code.
async fn signed_in(h: &Harness, email: &str) -> (String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut codes = h.server.watch_sign_in_codes();
    let sent = client
        .post(h.url("/login"))
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    let code = tokio::time::timeout(Duration::from_secs(5), codes.recv())
        .await
        .unwrap()
        .unwrap()
        .code;
    let signed = client
        .post(h.url("/login/code"))
        .form(&[("email", email), ("code", &code)])
        .send()
        .await
        .unwrap();
    let set = signed.headers()[SET_COOKIE].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    let account = client
        .get(h.url("/account"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = account.find("name=\"csrf\" value=\"").unwrap() + 19;
    (cookie, account[start..start + 64].to_owned())
}

async fn post_json(
    h: &Harness,
    cookie: Option<&str>,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(h.url(path)).json(body);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

/// A credential in the right shape whose bytes prove nothing.
fn forged_assertion() -> Value {
    json!({
        "id": "Zm9yZ2Vk",
        "rawId": "Zm9yZ2Vk",
        "type": "public-key",
        "response": {
            "authenticatorData": "SZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2MFAAAAAQ",
            "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uZ2V0In0",
            "signature": "MEUCIQ",
            "userHandle": "AAAAAAAAAAAAAAAAAAAAAA"
        },
        "extensions": {}
    })
}

#[tokio::test]
async fn registering_needs_a_session_and_its_csrf_token() {
    let h = Harness::start(None).await;
    let start = "/account/passkeys/register/start";
    let anonymous = post_json(&h, None, start, &json!({ "csrf": "x" })).await;
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);

    let (cookie, csrf) = signed_in(&h, "keys@example.com").await;
    let (other_cookie, other_csrf) = signed_in(&h, "other@example.com").await;
    for body in [
        json!({}),
        json!({ "csrf": "forged" }),
        json!({ "csrf": other_csrf }),
    ] {
        let refused = post_json(&h, Some(&cookie), start, &body).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{body}");
    }
    let options = post_json(&h, Some(&cookie), start, &json!({ "csrf": csrf })).await;
    assert_eq!(options.status(), StatusCode::OK);
    let options: Value = options.json().await.unwrap();
    let public_key = &options["publicKey"];
    assert_eq!(public_key["rp"]["id"], "localhost");
    assert_eq!(public_key["user"]["name"], "keys@example.com");
    assert!(public_key["challenge"].as_str().unwrap().len() >= 43);
    let selection = &public_key["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "required", "{options}");
    assert_eq!(selection["userVerification"], "required");

    // A forged attestation is refused, and uses up the registration.
    let finish = "/account/passkeys/register/finish";
    let forged = json!({
        "csrf": csrf,
        "name": "Forged",
        "credential": {
            "id": "Zm9yZ2Vk",
            "rawId": "Zm9yZ2Vk",
            "type": "public-key",
            "response": { "attestationObject": "o2NmbXRkbm9uZQ", "clientDataJSON": "e30" },
            "extensions": {}
        }
    });
    let refused = post_json(&h, Some(&cookie), finish, &forged).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let message: Value = refused.json().await.unwrap();
    assert!(
        message["error"]
            .as_str()
            .unwrap()
            .contains("could not be verified")
    );
    let again = post_json(&h, Some(&cookie), finish, &forged).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    let message: Value = again.json().await.unwrap();
    assert!(message["error"].as_str().unwrap().contains("expired"));
    // Not JSON at all; another session's token.
    let garbage = reqwest::Client::new()
        .post(h.url(finish))
        .header(COOKIE, &cookie)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let mut stolen = forged.clone();
    stolen["csrf"] = json!(csrf);
    let cross = post_json(&h, Some(&other_cookie), finish, &stolen).await;
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let store = &h.server.services().store;
    let account = store.account_by_email("keys@example.com").unwrap().unwrap();
    assert!(store.passkeys_of(account.id).unwrap().is_empty());
}

#[tokio::test]
async fn a_forged_or_replayed_passkey_sign_in_is_refused() {
    let h = Harness::start(None).await;
    let login = h.anonymous.get(h.url("/login")).send().await.unwrap();
    let login = login.text().await.unwrap();
    assert!(login.contains("Sign in with a passkey"), "{login}");
    assert!(login.contains("/assets/passkey.js"), "{login}");
    let script = h
        .anonymous
        .get(h.url("/assets/passkey.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );

    let started = post_json(&h, None, "/login/passkey/start", &json!({})).await;
    assert_eq!(started.status(), StatusCode::OK);
    let started: Value = started.json().await.unwrap();
    assert!(
        started["options"].get("mediation").is_none(),
        "asked on a click"
    );
    assert!(started["options"]["publicKey"]["challenge"].is_string());
    assert_eq!(started["options"]["publicKey"]["rpId"], "localhost");
    let id = started["id"].as_str().unwrap();

    let finish = json!({ "id": id, "credential": forged_assertion() });
    let refused = post_json(&h, None, "/login/passkey/finish", &finish).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    let message: Value = refused.json().await.unwrap();
    assert!(
        message["error"]
            .as_str()
            .unwrap()
            .contains("not registered"),
        "{message}"
    );
    let replayed = post_json(&h, None, "/login/passkey/finish", &finish).await;
    assert_eq!(replayed.status(), StatusCode::BAD_REQUEST);
    let message: Value = replayed.json().await.unwrap();
    assert!(
        message["error"].as_str().unwrap().contains("expired"),
        "{message}"
    );
    let unknown = json!({ "id": "never-started", "credential": forged_assertion() });
    let refused = post_json(&h, None, "/login/passkey/finish", &unknown).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let shapeless = post_json(&h, None, "/login/passkey/finish", &json!({ "id": 1 })).await;
    assert_eq!(shapeless.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn removing_needs_the_csrf_token_and_an_own_passkey() {
    let h = Harness::start(None).await;
    let (cookie, csrf) = signed_in(&h, "remove@example.com").await;
    let owner = signed_in_account(&h, "owner@example.com").await;
    let store = &h.server.services().store;
    store
        .put_passkey(&tokun_storage::PasskeyRecord {
            account: owner,
            credential_id: b"owners".to_vec(),
            passkey: "{}".into(),
            name: "Owner's".into(),
            created_ms: 1,
            last_used_ms: None,
        })
        .unwrap();
    let remove = |csrf: String, id: &'static str| {
        let cookie = cookie.clone();
        let h = &h;
        async move {
            reqwest::Client::new()
                .post(h.url("/account/passkeys/remove"))
                .header(COOKIE, cookie)
                .form(&[("csrf", csrf.as_str()), ("id", id)])
                .send()
                .await
                .unwrap()
        }
    };
    // `6f776e657273` is "owners" in hex: another account's passkey.
    let forged = remove("forged".into(), "6f776e657273").await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let theirs = remove(csrf.clone(), "6f776e657273").await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let nonsense = remove(csrf, "zz").await;
    assert_eq!(nonsense.status(), StatusCode::NOT_FOUND);
    assert!(store.passkey_by_credential(b"owners").unwrap().is_some());
}

async fn signed_in_account(h: &Harness, email: &str) -> tokun_storage::AccountId {
    signed_in(h, email).await;
    let store = &h.server.services().store;
    store.account_by_email(email).unwrap().unwrap().id
}
