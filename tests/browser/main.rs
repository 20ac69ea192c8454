//! Browser tests: real headless Chromium, driven over WebDriver through
//! `chromedriver` (Debian's `chromium` and `chromium-driver`; `.ci/run`
//! installs them, and these tests fail, not skip, without them).
//!
//! `harness` holds the machinery; `selftest` proves it end to end against a
//! tiny axum app (form, script, cookies, screenshots, passkeys).
//!
//! # Writing a console test
//!
//! Start tokun with the shared test harness, open a browser and drive it:
//!
//! ```ignore
//! use crate::harness::{Browser, WAIT, localhost};
//! use crate::support::Harness;
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn sign_in_with_a_code() {
//!     let h = Harness::start(Some(CONFIG)).await;    // tokun on 127.0.0.1:0
//!     let base = localhost(&h.base);                 // http://localhost:PORT
//!     let browser = Browser::phone().await;          // or desktop(), new(w, h)
//!     browser.goto(&format!("{base}/login")).await;
//!     browser.fill("input[name=email]", "ada@example.com").await;
//!     browser.click("button[type=submit]").await;
//!     browser.wait_for_text("h1", "Check your email", WAIT).await;
//!     // ... read the code, fill it, submit ...
//!     assert!(browser.cookie("tokun_session").await.is_some());
//!     browser.screenshot("login").await;             // target/screenshots/login-390.png
//!     browser.close().await;                         // or just drop it
//! }
//! ```
//!
//! Use `localhost` rather than `127.0.0.1` wherever passkeys are involved:
//! WebAuthn wants a secure context and a domain as the relying party id.
//! For passkeys, `browser.add_virtual_authenticator()` before the page calls
//! `navigator.credentials.create()`/`get()`; `browser.credentials(id)` lists
//! what it holds. `browser.client` is the fantoccini client for anything
//! else, `browser.cdp(..)` a DevTools command, `browser.console_log()` the
//! page's console messages and uncaught errors.
//!
//! All browsers of this binary share one `chromedriver` (started on first
//! use, stopped with its Chromiums when the last browser is dropped); each
//! `Browser` is its own session, Chromium and profile, so tests run in
//! parallel. Use the multi-thread runtime: dropping a browser without
//! `close()` blocks briefly while its session ends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

#[path = "../support/mod.rs"]
mod support;

/// Signing in through the console's pages, shared by the console tests.
mod console;
/// The account's data: export download and deletion.
mod console_account_data;
/// The activity page: filter, detail, CSV download, screenshots.
mod console_activity;
/// Billing: a top-up through the fake Stripe, the statement.
mod console_billing;
/// The keys page: create, show once, use the key, reload.
mod console_keys;
/// The console's sign-in pages in a real browser.
mod console_login;
/// "Sign in with …" through the fake OpenID Connect issuer.
mod console_oidc;
/// Passkeys with Chromium's virtual authenticator.
mod console_passkeys;
/// The playground: a streamed completion, its cost, and Stop.
mod console_playground;
/// chromedriver, `Browser` and its helpers.
mod harness;
/// The harness against a tiny axum app and against tokun itself.
mod selftest;
