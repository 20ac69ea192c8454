//! What every console browser test starts with: tokun on `localhost`, and
//! a person signed in through the real sign-in pages — the email typed into
//! `/login`, the code read from the server's mailer (what the log would
//! show) typed into the code form.

use std::time::Duration;

use crate::harness::{Browser, WAIT, localhost};
use crate::support::Harness;

/// Signs `email` in through `/login` in `browser` (a new email creates the
/// account); the browser ends on the dashboard with a session cookie.
pub async fn sign_in(h: &Harness, browser: &Browser, email: &str) {
    let base = localhost(&h.base);
    let mut codes = h.server.watch_sign_in_codes();
    browser.goto(&format!("{base}/login")).await;
    browser.fill("input[name=email]", email).await;
    browser.click("form button[type=submit]").await;
    let wanted = email.trim().to_lowercase();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let sent = codes.recv().await.expect("the mailer is running");
            if sent.email == wanted {
                return sent.code;
            }
        }
    })
    .await
    .expect("a sign-in code was sent");
    browser.wait_for("input[name=code]", WAIT).await;
    browser.fill("input[name=code]", &code).await;
    browser.click("form button[type=submit]").await;
    browser.wait_for("nav.main", WAIT).await;
    assert!(
        browser.cookie("tokun_session").await.is_some(),
        "signed in: the session cookie is set"
    );
}

/// The base URL browsers use (`http://localhost:PORT`).
pub fn base(h: &Harness) -> String {
    localhost(&h.base)
}
