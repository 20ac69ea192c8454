//! The account's data in a real browser: the export link fetched with the
//! browser's session and parsed, then the account deleted through the real
//! form (a wrong email first, refused in place), the deleted page, and `/`
//! sending the signed-out browser to `/login`. Screenshots of the account
//! page's data and delete sections and of the deleted page.

use reqwest::header::COOKIE;
use serde_json::Value;

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_downloads_and_the_account_is_deleted_by_typing_the_email() {
    let h = Harness::start(Some("[billing]\nsignup_credit_usd = 5\n")).await;
    let base = base(&h);
    let http = reqwest::Client::new();
    for (browser, email) in [
        (Browser::phone().await, "Leaving.Phone@example.com"),
        (Browser::desktop().await, "leaving-desktop@example.com"),
    ] {
        sign_in(&h, &browser, email).await;
        browser.goto(&format!("{base}/account")).await;
        browser.wait_for("section.danger-zone", WAIT).await;
        let section = browser.text_of("section.danger-zone").await;
        for promise in [
            "every API key is revoked",
            "signed out",
            "30 days",
            "pseudonymised",
            "not refunded automatically",
        ] {
            assert!(section.contains(promise), "{promise}: {section}");
        }
        browser.screenshot("console-account-data").await;

        // The download link, fetched with this browser's session.
        let href = browser
            .find("section.account-data a")
            .await
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(href, "/account/export.json");
        let session = browser.cookie("tokun_session").await.unwrap();
        let response = http
            .get(format!("{base}{href}"))
            .header(COOKIE, format!("tokun_session={}", session.value()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(
            !text.contains(session.value()),
            "no session id in the export"
        );
        let export: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(export["profile"]["email"], email.to_lowercase());
        assert_eq!(export["sign_ins"].as_array().unwrap().len(), 1);
        assert_eq!(export["sessions"].as_array().unwrap().len(), 1);
        assert!(
            !export["ledger"].as_array().unwrap().is_empty(),
            "the signup credit"
        );

        // A wrong email: refused in place, nothing deleted.
        browser
            .fill(
                "section.danger-zone input[name=confirm]",
                "someone@else.com",
            )
            .await;
        browser
            .click("section.danger-zone button[type=submit]")
            .await;
        let summary = browser
            .wait_for_text(".error-summary", "There is a problem", WAIT)
            .await;
        assert!(summary.contains("Type your email address"), "{summary}");
        browser.screenshot("console-account-delete-error").await;

        // The right email, typed in another case: deleted.
        browser
            .eval(
                "document.getElementById('confirm').value = ''; return null;",
                vec![],
            )
            .await;
        browser
            .fill(
                "section.danger-zone input[name=confirm]",
                &email.to_uppercase(),
            )
            .await;
        browser
            .click("section.danger-zone button[type=submit]")
            .await;
        browser
            .wait_for_text("h1", "Your account is deleted", WAIT)
            .await;
        assert!(browser.current_url().await.ends_with("/account/deleted"));
        assert!(
            browser.cookie("tokun_session").await.is_none(),
            "the cookie is cleared"
        );
        let text = browser.page_text().await;
        assert!(
            text.contains("cannot sign in or open a new account"),
            "{text}"
        );
        browser.screenshot("console-account-deleted").await;

        browser.goto(&format!("{base}/")).await;
        browser.wait_for("input[name=email]", WAIT).await;
        assert!(browser.current_url().await.ends_with("/login"));
        let gone = http
            .get(format!("{base}{href}"))
            .header(COOKIE, format!("tokun_session={}", session.value()))
            .send()
            .await
            .unwrap();
        assert!(
            gone.url().path().ends_with("/login"),
            "the old session is signed out"
        );
        browser.close().await;
    }
}
