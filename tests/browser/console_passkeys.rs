//! Passkeys in a real browser with Chromium's virtual authenticator: sign
//! in by code, add a passkey on `/account`, sign out, sign in with the
//! passkey alone, then remove it and see it refused. tokun runs without a
//! `server.public_url`, so the relying party is `localhost` on any port
//! (see `console/passkey.rs`). Screenshots: the account page's Passkeys
//! section and the sign-in page, at phone and desktop width.

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::Harness;

const REGISTER: &str = "form[data-passkey=register]";
const SIGN_IN: &str = "[data-passkey=signin]:not([hidden]) button";

async fn sign_out(browser: &Browser) {
    browser.click("form.signout button").await;
    browser.wait_for("input[name=email]", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_is_added_signs_in_alone_and_is_removed() {
    let h = Harness::start(Some("[billing]\nsignup_credit_usd = 3\n")).await;
    let base = base(&h);
    for browser in [Browser::desktop().await, Browser::phone().await] {
        let email = format!("passkey-{}@example.com", browser.width);
        let authenticator = browser.add_virtual_authenticator().await;
        sign_in(&h, &browser, &email).await;

        browser.goto(&format!("{base}/account")).await;
        browser
            .wait_for(&format!("{REGISTER}:not([hidden])"), WAIT)
            .await;
        assert!(browser.page_text().await.contains("No passkeys yet."));
        browser.fill("#passkey-name", "Test <laptop>").await;
        browser
            .click(&format!("{REGISTER} button[type=submit]"))
            .await;
        browser
            .wait_for_text("main", "Your passkey is added", WAIT)
            .await;
        let listed = browser.text_of("ul.passkeys").await;
        assert!(
            listed.contains("Test <laptop>") && listed.contains("never used"),
            "{listed}"
        );
        let held = browser.credentials(&authenticator).await;
        assert_eq!(held.len(), 1, "the authenticator holds one passkey");
        browser
            .eval(
                "document.getElementById('passkeys').scrollIntoView()",
                vec![],
            )
            .await;
        browser.screenshot("console-account-passkeys").await;

        // Signed out, the passkey alone signs in: no email typed.
        sign_out(&browser).await;
        browser.wait_for(SIGN_IN, WAIT).await;
        browser.screenshot("console-login-passkey").await;
        browser.click(SIGN_IN).await;
        browser.wait_for("nav.main", WAIT).await;
        let dashboard = browser.wait_for_text("main", "$3.00", WAIT).await;
        assert!(dashboard.contains("Available"), "{dashboard}");
        assert!(browser.cookie("tokun_session").await.is_some());
        browser.goto(&format!("{base}/account")).await;
        let account = browser.wait_for_text("main", "Passkey", WAIT).await;
        assert!(account.contains(&email), "{account}");
        assert!(browser.text_of("ul.passkeys").await.contains("last used"));
        let store = &h.server.services().store;
        let id = store.account_by_email(&email).unwrap().unwrap().id;
        let stored = store.passkeys_of(id).unwrap();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].last_used_ms.is_some());

        // Removed, it no longer signs in; the refusal shows in place.
        browser.click("ul.passkeys form button").await;
        browser
            .wait_for_text("main", "The passkey is removed", WAIT)
            .await;
        assert!(store.passkeys_of(id).unwrap().is_empty());
        sign_out(&browser).await;
        browser.wait_for(SIGN_IN, WAIT).await;
        browser.click(SIGN_IN).await;
        let refused = browser
            .wait_for_text(".passkey-status", "not registered", WAIT)
            .await;
        assert!(refused.contains("email code"), "{refused}");
        assert!(browser.cookie("tokun_session").await.is_none());
        browser.screenshot("console-login-passkey-refused").await;

        let log: Vec<String> = browser
            .console_log()
            .await
            .into_iter()
            .filter(|line| !line.contains("/login/passkey/finish"))
            .collect();
        assert!(log.is_empty(), "no script errors: {log:?}");
        browser.close().await;
    }
}
