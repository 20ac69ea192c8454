//! The web console through real HTTP: email-code sign-in (the code read
//! from the server's mailer, as the log would show it), sessions and their
//! revocation, CSRF, escaping, the dashboard's numbers against real
//! completions, and the HTML/JSON 404 split.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "../support/mod.rs"]
mod support;

/// The account's data: export and deletion.
mod account_data;
/// The activity page: filters, paging, detail and exports.
mod activity;
/// Request debugging: bodies kept only while on, for the owner only, 7 days.
mod debug;
/// Request debugging over `/v1/ws` and for embeddings.
mod debug_transports;

/// "Sign in with …" through the fake OpenID Connect issuer.
mod oidc;
/// Passkey endpoints without an authenticator: sessions, CSRF, forgeries.
mod passkeys;

/// The billing pages: top-ups against the fake Stripe, statement, alerts.
mod billing;
/// The dashboard's spend follows new requests exactly.
mod dashboard;
/// The keys page: create and show once, rename, debug, revoke, expiry.
mod keys;
/// Sign-in forms posted from another site are refused (login CSRF).
mod origin;
/// The playground page, its session ticket and `/v1/ws` billing.
mod playground;
/// Policy changes: 14 days' notice, the dashboard banner, one email each.
mod policy;
/// Sign-in codes sent by SMTP (lettre) to the testkit's SMTP sink.
mod smtp;

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use support::{Harness, chat};
use tokun_storage::{LoginCode, login_code_hash};

/// A browser without a cookie jar: the session cookie is carried by hand,
/// so each test sees exactly what the server set.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(h: &Harness) -> Browser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser {
            client,
            base: h.base.clone(),
            cookie: None,
        }
    }

    fn with_cookie(&self, cookie: &str) -> Browser {
        Browser {
            client: self.client.clone(),
            base: self.base.clone(),
            cookie: Some(cookie.to_owned()),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html");
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.post_with_token(path, None, form).await
    }

    /// `POST path` with the CSRF token also in an `x-csrf-token` header, as
    /// the playground's script sends it.
    async fn post_with_token(
        &self,
        path: &str,
        token: Option<&str>,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .form(form);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.unwrap()
    }
}

/// Asks for a code for `email` and returns it, as the mailer was given it.
async fn request_code(h: &Harness, browser: &Browser, email: &str) -> String {
    let mut codes = h.server.watch_sign_in_codes();
    let response = browser.post("/login", &[("email", email)]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("Check your email"));
    loop {
        let sent = tokio::time::timeout(Duration::from_secs(5), codes.recv())
            .await
            .expect("a code is sent")
            .unwrap();
        if sent.email == email.trim().to_lowercase() {
            assert_eq!(sent.code.len(), 6);
            return sent.code;
        }
    }
}

/// Signs in with an email code; the browser now carries the session cookie.
async fn sign_in(h: &Harness, email: &str) -> (Browser, String) {
    let anonymous = Browser::new(h);
    let code = request_code(h, &anonymous, email).await;
    let response = anonymous
        .post("/login/code", &[("email", email), ("code", &code)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/");
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    (anonymous.with_cookie(&cookie), set)
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[start..start + 64].to_owned()
}

#[tokio::test]
async fn a_new_email_signs_in_with_a_code_and_gets_the_signup_credit() {
    let h = Harness::start(Some("[billing]\nsignup_credit_usd = 2.5\n")).await;
    let (browser, set_cookie) = sign_in(&h, "New.Person@Example.com").await;
    for attribute in [
        "tokun_session=",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=1209600",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let dashboard = browser.page("/").await;
    assert!(dashboard.contains("new.person@example.com"), "{dashboard}");
    assert!(
        dashboard.contains("$2.50"),
        "the signup credit is available"
    );
    assert!(dashboard.contains("No spend in the last 7 days"));
    let store = &h.server.services().store;
    let account = store
        .account_by_email("new.person@example.com")
        .unwrap()
        .unwrap();
    let profile = store.profile(account.id).unwrap();
    assert!(profile.first_signin_ms.is_some() && profile.last_signin_ms.is_some());
    let account_page = browser.page("/account").await;
    assert!(
        account_page.contains("Email code"),
        "the sign-in is in the history"
    );
    // Signed in, the sign-in page sends people to their dashboard.
    assert_eq!(browser.get("/login").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_code_form_answers_alike_for_known_and_unknown_emails() {
    let h = Harness::start(None).await;
    let browser = Browser::new(&h);
    let known = browser
        .post("/login", &[("email", "demo@tokun.local")])
        .await;
    let unknown = browser
        .post("/login", &[("email", "nobody@tokun.local")])
        .await;
    assert_eq!(known.status(), unknown.status());
    let known = known.text().await.unwrap().replace("demo@", "X@");
    let unknown = unknown.text().await.unwrap().replace("nobody@", "X@");
    assert_eq!(known, unknown);
    let invalid = browser.post("/login", &[("email", "not an email")]).await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert!(invalid.text().await.unwrap().contains("There is a problem"));
}

#[tokio::test]
async fn five_wrong_codes_lock_the_code_and_codes_are_rate_limited() {
    let h = Harness::start(None).await;
    let browser = Browser::new(&h);
    let email = "guess@example.com";
    let code = request_code(&h, &browser, email).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (1..5).rev() {
        let response = browser
            .post("/login/code", &[("email", email), ("code", wrong)])
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains(&format!("{left} tr"))
        );
    }
    let fifth = browser
        .post("/login/code", &[("email", email), ("code", wrong)])
        .await;
    assert_eq!(fifth.status(), StatusCode::TOO_MANY_REQUESTS);
    let right = browser
        .post("/login/code", &[("email", email), ("code", &code)])
        .await;
    assert_eq!(
        right.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the code is void"
    );
    assert!(right.headers().get(SET_COOKIE).is_none());
    // A new code voids the old and works; at most five per window.
    for _ in 0..3 {
        request_code(&h, &browser, email).await;
    }
    let last = request_code(&h, &browser, email).await;
    let limited = browser.post("/login", &[("email", email)]).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.text().await.unwrap().contains("Too many codes"));
    let response = browser
        .post("/login/code", &[("email", email), ("code", &last)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_expired_code_is_refused_in_place() {
    let h = Harness::start(None).await;
    let email = "late@example.com";
    let now = tokun_providers::clock::unix_ms();
    let stale = LoginCode {
        code_hash: login_code_hash(email, "424242"),
        expires_ms: now - 1,
        tries_left: 5,
        created_ms: now - 600_000,
    };
    h.server
        .services()
        .store
        .put_login_code(email, &stale)
        .unwrap();
    let browser = Browser::new(&h);
    let response = browser
        .post("/login/code", &[("email", email), ("code", "424242")])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("expired"));
    let garbage = browser
        .post("/login/code", &[("email", email), ("code", "12ab")])
        .await;
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forms_without_this_sessions_csrf_token_are_refused() {
    let h = Harness::start(None).await;
    let (first, _) = sign_in(&h, "csrf@example.com").await;
    let (second, _) = sign_in(&h, "csrf@example.com").await;
    let mine = csrf_of(&first.page("/account").await);
    let theirs = csrf_of(&second.page("/account").await);
    assert_ne!(mine, theirs);
    let forged = "0".repeat(64);
    for csrf in [None, Some(forged.as_str()), Some(theirs.as_str()), Some("")] {
        let mut form = vec![("display_name", "Ann"), ("time_zone", "UTC")];
        form.extend(csrf.map(|c| ("csrf", c)));
        let response = first.post("/account", &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{csrf:?}");
        let logout = first.post("/logout", &form).await;
        assert_eq!(logout.status(), StatusCode::FORBIDDEN, "{csrf:?}");
    }
    let form = [
        ("csrf", mine.as_str()),
        ("display_name", "Ann"),
        ("time_zone", "Europe/Paris"),
    ];
    assert_eq!(
        first.post("/account", &form).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = first.page("/account?saved=1").await;
    assert!(page.contains("Europe/Paris") && page.contains("saved"));
}

#[tokio::test]
async fn names_are_shown_as_text_and_bad_profiles_are_errors_in_place() {
    let h = Harness::start(None).await;
    let (browser, _) = sign_in(&h, "xss@example.com").await;
    let csrf = csrf_of(&browser.page("/account").await);
    let name = "<script>alert(1)</script>";
    let form = [
        ("csrf", csrf.as_str()),
        ("display_name", name),
        ("time_zone", "UTC"),
    ];
    assert_eq!(
        browser.post("/account", &form).await.status(),
        StatusCode::SEE_OTHER
    );
    for path in ["/", "/account"] {
        let page = browser.page(path).await;
        assert!(!page.contains(name), "{path} shows markup");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}"
        );
    }
    let long = "a".repeat(101);
    let bad = [
        ("csrf", csrf.as_str()),
        ("display_name", long.as_str()),
        ("time_zone", "Mars"),
    ];
    let response = browser.post("/account", &bad).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let page = response.text().await.unwrap();
    assert!(page.contains("100 characters or fewer") && page.contains("time zone like"));
    assert!(
        page.contains("href=\"#display_name\""),
        "the summary links to the field"
    );
}

#[tokio::test]
async fn tampered_and_revoked_sessions_are_signed_out() {
    let h = Harness::start(None).await;
    let anonymous = Browser::new(&h);
    let response = anonymous.get("/").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/login");
    let login = anonymous.page("/login").await;
    assert!(login.contains("<html lang=\"en\">") && login.contains("name=\"viewport\""));

    let (browser, _) = sign_in(&h, "revoke@example.com").await;
    let cookie = browser.cookie.clone().unwrap();
    let mut tampered = cookie.clone();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(tampered.len() - 1.., last);
    let forged = anonymous.with_cookie(&tampered);
    let response = forged.get("/account").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        response.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        forged.post("/account", &[("csrf", "x")]).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        anonymous
            .with_cookie("tokun_session=<script>")
            .get("/")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );

    // Sign out ends this session only.
    let (other, _) = sign_in(&h, "revoke@example.com").await;
    let csrf = csrf_of(&browser.page("/").await);
    let response = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(other.get("/").await.status(), StatusCode::OK);

    // Sign out everywhere ends them all.
    let (third, _) = sign_in(&h, "revoke@example.com").await;
    let csrf = csrf_of(&other.page("/account").await);
    let response = other
        .post("/account/sessions/revoke-all", &[("csrf", &csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/login");
    assert_eq!(other.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(third.get("/").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn unknown_pages_are_html_for_browsers_and_json_for_the_api() {
    let h = Harness::start(None).await;
    let browser = Browser::new(&h);
    let page = browser.get("/nowhere").await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("Page not found"));
    for path in ["/v1/x", "/admin/nowhere"] {
        let api = browser.get(path).await;
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
        let body: serde_json::Value = api.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_url", "{path}");
    }
    let plain = h.anonymous.get(h.url("/nowhere")).send().await.unwrap();
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let css = browser.get("/assets/console.css").await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000")
    );
    assert!(
        css.text()
            .await
            .unwrap()
            .contains("prefers-color-scheme: dark")
    );
}

#[tokio::test]
async fn the_dashboard_adds_up_the_accounts_real_requests() {
    let h = Harness::start(None).await;
    for _ in 0..3 {
        let response = h
            .post_json("/v1/chat/completions", &chat("echo-mini", false))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let usage = support::get_json(&h.client, &h, "/v1/usage").await;
    let total: tokun_storage::Nanos = usage["total_cost"].as_str().unwrap().parse().unwrap();
    assert!(total.get() > 0);
    let account = support::account(&h.client, &h).await;
    let (browser, _) = sign_in(&h, "demo@tokun.local").await;
    let page = browser.page("/").await;
    let spent = format!("${total}");
    // Today, 7 and 30 days, and the chart's total in its table.
    assert!(page.matches(&spent).count() >= 4, "{spent} in {page}");
    let available: tokun_storage::Nanos = account["available"].as_str().unwrap().parse().unwrap();
    let cents = available.get() - available.get() % 10_000_000;
    assert!(page.contains(&format!("${}", tokun_storage::Nanos::new(cents))));
    assert!(page.contains("at your 7-day average"), "the runway");
    assert_eq!(
        page.matches("<td>echo-mini</td>").count(),
        3,
        "the latest requests"
    );
    assert!(page.contains("role=\"img\"") && page.contains("<rect"));
}
