//! The keys page over HTTP: a key created with every option and its secret
//! shown once (and never again), the key working against
//! `/v1/chat/completions` within its limits, rename, debugging, revoke
//! through the confirmation page, names shown as text, another account's
//! key id answered with the 404 page, CSRF, errors in place, and expiry
//! (refused like a revoked key). The day change of a daily limit is the
//! account book's unit tests (`actors/src/account/book_periods.rs`).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use tokun::services::KeyOptions;
use tokun_storage::{KeyId, LimitReset, Nanos};

use crate::support::{Harness, chat, client_with_key};

const CONFIG: &str = "[billing]\nsignup_credit_usd = 5\n";

/// A browser without a cookie jar, carrying its session cookie by hand.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: String,
}

impl Browser {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .header(COOKIE, &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.unwrap()
    }

    /// This session's CSRF token, read from `/keys`.
    async fn csrf(&self) -> String {
        let html = self.page("/keys").await;
        let start = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        html[start..start + 64].to_owned()
    }
}

/// Signs `email` in with an email code read from the server's mailer.
async fn sign_in(h: &Harness, email: &str) -> Browser {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut codes = h.server.watch_sign_in_codes();
    let sent = client
        .post(format!("{}/login", h.base))
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::OK);
    let code = loop {
        let sent = tokio::time::timeout(Duration::from_secs(5), codes.recv())
            .await
            .expect("a code is sent")
            .unwrap();
        if sent.email == email {
            break sent.code;
        }
    };
    let response = client
        .post(format!("{}/login/code", h.base))
        .form(&[("email", email), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set = response.headers()[SET_COOKIE].to_str().unwrap();
    Browser {
        cookie: set.split(';').next().unwrap().to_owned(),
        client,
        base: h.base.clone(),
    }
}

/// The secret on a show-once page.
fn secret_of(html: &str) -> String {
    let start = html.find("value=\"sk-tokun-").expect("the secret is shown") + 7;
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_owned()
}

/// Creates a key named `name` through the form; returns (id, secret).
async fn create(browser: &Browser, csrf: &str, name: &str) -> (String, String) {
    let response = browser
        .post(
            "/keys",
            &[("csrf", csrf), ("name", name), ("reset", "total")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let secret = secret_of(&response.text().await.unwrap());
    let keys = browser.page("/keys").await;
    let start = keys.find("article class=\"key-card").unwrap();
    let id_at = start + keys[start..].find("id=\"key_").unwrap() + 4;
    let id_end = id_at + keys[id_at..].find('"').unwrap();
    (keys[id_at..id_end].to_owned(), secret)
}

fn key_record(h: &Harness, id: &str) -> tokun_storage::KeyRecord {
    let id: KeyId = id.parse().unwrap();
    h.server.services().store.key(id).unwrap().unwrap()
}

#[tokio::test]
async fn a_key_with_every_option_is_shown_once_and_works() {
    let h = Harness::start(Some(CONFIG)).await;
    let browser = sign_in(&h, "keys@example.com").await;
    let csrf = browser.csrf().await;
    let form = [
        ("csrf", csrf.as_str()),
        ("name", "<script>alert(1)</script> laptop"),
        ("spend_limit", "2.50"),
        ("reset", "daily"),
        ("rpm", "30"),
        ("models", "echo-mini"),
        ("models", "echo-large"),
        ("expires", "2099-12-31"),
        ("debug", "on"),
    ];
    let response = browser.post("/keys", &form).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let shown = response.text().await.unwrap();
    let secret = secret_of(&shown);
    assert!(secret.len() > 40, "{secret}");
    assert!(shown.contains("It will not be shown again"));
    assert!(shown.contains("&lt;script&gt;alert(1)&lt;/script&gt; laptop"));
    assert!(!shown.contains("<script>alert(1)"));
    assert!(
        shown.contains("navigator.clipboard"),
        "the copy button's script"
    );
    assert!(shown.contains("readonly"), "the fallback field");

    let account = h
        .server
        .services()
        .store
        .account_by_email("keys@example.com")
        .unwrap()
        .unwrap();
    let keys = h.server.services().store.keys_for(account.id).unwrap();
    let key = keys.iter().find(|k| k.name.contains("laptop")).unwrap();
    assert_eq!(key.spend_limit, Some(Nanos::new(2_500_000_000)));
    assert_eq!(key.limit_reset, LimitReset::Daily);
    assert_eq!(key.rpm_limit, Some(30));
    assert_eq!(key.allowed_models, ["echo-mini", "echo-large"]);
    assert_eq!(key.expires_ms, Some(4_102_358_400_000));
    assert!(key.debug);

    // The secret works, within its models.
    let client = client_with_key(&secret);
    let answer = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let refused = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-slow", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "not an allowed model"
    );

    // The list shows the key and its spend today, never the secret.
    let list = browser.page("/keys").await;
    assert!(!list.contains(&secret));
    assert!(!list.contains(&secret[12..]));
    assert!(list.contains(&key.prefix));
    assert!(list.contains("&lt;script&gt;alert(1)&lt;/script&gt; laptop"));
    assert!(!list.contains("<script>"), "no script on the list");
    assert!(list.contains("$2.50 a day (UTC)"));
    assert!(
        !list.contains("$0.00 spent today"),
        "the request is counted"
    );
    assert!(list.contains("spent today"));
    assert!(list.contains("2099-12-31 00:00 UTC"));
    assert!(list.contains("echo-mini, echo-large"));
    assert!(list.contains("Debugging on"));
    assert!(list.contains("kept for 7 days"));

    // The JSON API shows the period and the expiry.
    let listed: Value = client
        .get(h.url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let view = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key.id.to_string())
        .unwrap();
    assert_eq!(view["spend_limit_reset"], "daily");
    assert_eq!(view["expires_at"], 4_102_358_400u64);
}

#[tokio::test]
async fn rename_debug_and_revoke_through_the_confirmation_page() {
    let h = Harness::start(Some(CONFIG)).await;
    let browser = sign_in(&h, "owner@example.com").await;
    let csrf = browser.csrf().await;
    let (id, secret) = create(&browser, &csrf, "first name").await;

    let renamed = browser
        .post(
            &format!("/keys/{id}/rename"),
            &[("csrf", &csrf), ("name", "second <b>name</b>")],
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::SEE_OTHER);
    assert_eq!(renamed.headers()[LOCATION], "/keys?done=renamed");
    let list = browser.page("/keys?done=renamed").await;
    assert!(list.contains("second &lt;b&gt;name&lt;/b&gt;"));
    assert!(list.contains("The key is renamed."));
    assert_eq!(key_record(&h, &id).name, "second <b>name</b>");

    let empty = browser
        .post(
            &format!("/keys/{id}/rename"),
            &[("csrf", &csrf), ("name", "  ")],
        )
        .await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let page = empty.text().await.unwrap();
    assert!(page.contains("There is a problem") && page.contains("Enter a name for the key"));
    assert_eq!(key_record(&h, &id).name, "second <b>name</b>");

    let on = browser
        .post(
            &format!("/keys/{id}/debug"),
            &[("csrf", &csrf), ("debug", "on")],
        )
        .await;
    assert_eq!(on.status(), StatusCode::SEE_OTHER);
    assert!(key_record(&h, &id).debug);
    browser
        .post(
            &format!("/keys/{id}/debug"),
            &[("csrf", &csrf), ("debug", "off")],
        )
        .await;
    assert!(!key_record(&h, &id).debug);

    // The key works until it is revoked, and is refused at once after.
    let client = client_with_key(&secret);
    let ok = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let confirm = browser.page(&format!("/keys/{id}/revoke")).await;
    assert!(confirm.contains("Revoke the key") && confirm.contains("cannot be undone"));
    let forged = browser.post(&format!("/keys/{id}/revoke"), &[]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(!key_record(&h, &id).is_revoked());
    let revoked = browser
        .post(&format!("/keys/{id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    assert!(key_record(&h, &id).is_revoked());
    let refused = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let list = browser.page("/keys?done=revoked").await;
    let revoked_at = list.find("<h2>Revoked</h2>").expect("a revoked list");
    assert!(list[revoked_at..].contains("second &lt;b&gt;name&lt;/b&gt;"));
    assert!(
        !list.contains(&format!("/keys/{id}/revoke")),
        "no second revoke"
    );
}

#[tokio::test]
async fn another_accounts_key_is_not_found_in_any_form() {
    let h = Harness::start(Some(CONFIG)).await;
    let owner = sign_in(&h, "owner@example.com").await;
    let (theirs, _) = create(&owner, &owner.csrf().await, "theirs").await;
    let intruder = sign_in(&h, "intruder@example.com").await;
    let csrf = intruder.csrf().await;
    for id in [theirs.as_str(), "key_999999", "not-a-key"] {
        let confirm = intruder.get(&format!("/keys/{id}/revoke")).await;
        assert_eq!(confirm.status(), StatusCode::NOT_FOUND, "{id}");
        let body = confirm.text().await.unwrap();
        assert!(body.contains("Page not found") && !body.contains("theirs"));
        for (action, form) in [
            (
                "rename",
                vec![("csrf", csrf.as_str()), ("name", "mine now")],
            ),
            ("debug", vec![("csrf", csrf.as_str()), ("debug", "on")]),
            ("revoke", vec![("csrf", csrf.as_str())]),
        ] {
            let response = intruder.post(&format!("/keys/{id}/{action}"), &form).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{action} {id}");
        }
    }
    let record = key_record(&h, &theirs);
    assert_eq!(record.name, "theirs");
    assert!(!record.debug && !record.is_revoked());
    assert!(!intruder.page("/keys").await.contains("theirs"));
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused() {
    let h = Harness::start(Some(CONFIG)).await;
    let browser = sign_in(&h, "csrf@example.com").await;
    let (id, _) = create(&browser, &browser.csrf().await, "kept").await;
    let created = browser.post("/keys", &[("name", "sneaky")]).await;
    assert_eq!(created.status(), StatusCode::FORBIDDEN);
    let forged = "0".repeat(64);
    let renamed = browser
        .post(
            &format!("/keys/{id}/rename"),
            &[("csrf", &forged), ("name", "x")],
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::FORBIDDEN);
    let debug = browser
        .post(&format!("/keys/{id}/debug"), &[("debug", "on")])
        .await;
    assert_eq!(debug.status(), StatusCode::FORBIDDEN);
    assert!(!browser.page("/keys").await.contains("sneaky"));
    assert_eq!(key_record(&h, &id).name, "kept");
}

#[tokio::test]
async fn invalid_input_is_an_error_in_place() {
    let h = Harness::start(Some(CONFIG)).await;
    let browser = sign_in(&h, "typo@example.com").await;
    let csrf = browser.csrf().await;
    let long = "n".repeat(101);
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("name", "")], "Enter a name for the key"),
        (&[("name", &long)], "100 characters or fewer"),
        (&[("name", "a\u{1}b")], "control characters"),
        (&[("name", "k"), ("spend_limit", "0")], "more than $0"),
        (
            &[("name", "k"), ("spend_limit", "1.0000000001")],
            "in US dollars",
        ),
        (&[("name", "k"), ("rpm", "0")], "at least 1"),
        (
            &[("name", "k"), ("expires", "2020-01-01")],
            "must be in the future",
        ),
    ];
    for (fields, message) in cases {
        let mut form = vec![("csrf", csrf.as_str()), ("reset", "total")];
        form.extend_from_slice(fields);
        let response = browser.post("/keys", &form).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{message}");
        let page = response.text().await.unwrap();
        assert!(page.contains("There is a problem"), "{message}");
        assert!(page.contains(message), "{message}: {page}");
        assert!(!page.contains("value=\"sk-tokun-"), "nothing was created");
    }
    let unknown = browser
        .post(
            "/keys",
            &[
                ("csrf", &csrf),
                ("name", "kept typing"),
                ("models", "gpt-nope"),
                ("reset", "weekly"),
            ],
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let page = unknown.text().await.unwrap();
    assert!(page.contains("Choose models from the list"));
    assert!(page.contains("Choose when the spend limit starts over"));
    assert!(
        page.contains("value=\"kept typing\""),
        "what was typed stays"
    );
    let account = h
        .server
        .services()
        .store
        .account_by_email("typo@example.com")
        .unwrap()
        .unwrap();
    let keys = h.server.services().store.keys_for(account.id).unwrap();
    assert!(
        keys.iter()
            .all(|k| k.name != "k" && k.name != "kept typing")
    );
}

#[tokio::test]
async fn an_expired_key_is_refused_like_a_revoked_one() {
    let h = Harness::start(Some(CONFIG)).await;
    let browser = sign_in(&h, "expiry@example.com").await;
    let services = h.server.services();
    let account = services
        .store
        .account_by_email("expiry@example.com")
        .unwrap()
        .unwrap();
    let now = tokun_providers::clock::unix_ms();
    let options = |name: &str, expires_ms| KeyOptions {
        name: name.into(),
        expires_ms: Some(expires_ms),
        ..KeyOptions::default()
    };
    let (_, expired) = services
        .create_key(account.id, options("old", now - 1_000))
        .await
        .unwrap();
    let (_, live) = services
        .create_key(account.id, options("new", now + 3_600_000))
        .await
        .unwrap();
    let refused = client_with_key(&expired)
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let live = client_with_key(&live);
    let ok = live
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(browser.page("/keys").await.contains("Expired"));

    // The JSON API takes a period and an expiry, and refuses a past one.
    let past = live
        .post(h.url("/v1/keys"))
        .json(&json!({"name": "x", "expires_at": now / 1000 - 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::BAD_REQUEST);
    let weekly = live
        .post(h.url("/v1/keys"))
        .json(&json!({"name": "x", "spend_limit_usd": "1", "spend_limit_reset": "weekly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(weekly.status(), StatusCode::BAD_REQUEST);
    let created = live
        .post(h.url("/v1/keys"))
        .json(&json!({
            "name": "monthly",
            "spend_limit_usd": "1",
            "spend_limit_reset": "monthly",
            "expires_at": now / 1000 + 86_400,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["spend_limit_reset"], "monthly");
    assert_eq!(created["expires_at"], now / 1000 + 86_400);
}
