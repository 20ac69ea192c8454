//! The keys page in a real browser, at phone and desktop width: a key is
//! created through the real form, its secret read from the show-once page
//! and used for a real `/v1/chat/completions` call, and after a reload of
//! `/keys` the secret is nowhere in the page. Screenshots of `/keys` and of
//! the show-once page.

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::{Harness, chat, client_with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_created_shown_once_and_works() {
    let h = Harness::start(Some("[billing]\nsignup_credit_usd = 5\n")).await;
    let base = base(&h);
    let browsers = [
        (Browser::phone().await, "phone@example.com"),
        (Browser::desktop().await, "desktop@example.com"),
    ];
    for (browser, email) in browsers {
        sign_in(&h, &browser, email).await;
        browser.goto(&format!("{base}/keys")).await;
        browser.wait_for("form.create-key", WAIT).await;
        // Nothing typed: the errors are in place, the form kept.
        browser
            .fill("form.create-key input[name=expires]", "01012020")
            .await;
        browser.click("form.create-key button[type=submit]").await;
        let summary = browser
            .wait_for_text(".error-summary", "There is a problem", WAIT)
            .await;
        assert!(summary.contains("Enter a name for the key"), "{summary}");
        assert!(summary.contains("in the future"), "{summary}");
        browser.screenshot("console-keys-errors").await;
        browser
            .eval(
                "document.getElementById('expires').value = ''; return null;",
                vec![],
            )
            .await;
        browser
            .fill("form.create-key input[name=name]", "ci <b>runner</b>")
            .await;
        browser
            .fill("form.create-key input[name=spend_limit]", "3.50")
            .await;
        browser.click("input#reset-daily").await;
        browser.fill("form.create-key input[name=rpm]", "60").await;
        browser.click("input#model-0").await;
        browser.click("input#debug").await;
        browser.click("form.create-key button[type=submit]").await;
        browser.wait_for_text("h1", "Your new key", WAIT).await;
        let secret = browser
            .eval("return document.getElementById('secret').value;", vec![])
            .await;
        let secret = secret
            .as_str()
            .expect("the secret is in the page")
            .to_owned();
        assert!(secret.starts_with("sk-tokun-"), "{secret}");
        let text = browser.page_text().await;
        assert!(text.contains("will not be shown again"), "{text}");
        assert!(
            text.contains("ci <b>runner</b>"),
            "the name as text: {text}"
        );
        let copy_hidden = browser
            .eval("return document.getElementById('copy').hidden;", vec![])
            .await;
        assert_eq!(copy_hidden, false, "the copy button shows on localhost");
        browser.screenshot("console-keys-created").await;
        // The copy button answers either way (headless may refuse the clipboard).
        browser.click("#copy").await;
        browser.wait_for_text("#copy-status", "Cop", WAIT).await;

        let answer = client_with_key(&secret)
            .post(h.url("/v1/chat/completions"))
            .json(&chat("echo-mini", false))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "the new key works");

        browser.goto(&format!("{base}/keys")).await;
        let text = browser.wait_for_text("main", "spent today", WAIT).await;
        assert!(text.contains("ci <b>runner</b>"), "{text}");
        assert!(text.contains("$3.50 a day (UTC)"), "{text}");
        let html = browser
            .eval("return document.documentElement.outerHTML;", vec![])
            .await;
        let html = html.as_str().unwrap();
        assert!(!html.contains(&secret), "the secret is shown once only");
        assert!(!browser.page_text().await.contains(&secret));
        browser.screenshot("console-keys").await;

        // Revoke through the confirmation page; it lands in "Revoked".
        browser.click("article.key-card a.danger-outline").await;
        browser.wait_for_text("h1", "Revoke", WAIT).await;
        browser.screenshot("console-keys-revoke").await;
        browser.click("main form button.danger").await;
        let text = browser
            .wait_for_text("main", "The key is revoked", WAIT)
            .await;
        assert!(text.contains("Revoked"), "{text}");
        browser.screenshot("console-keys-revoked").await;
        let refused = client_with_key(&secret)
            .post(h.url("/v1/chat/completions"))
            .json(&chat("echo-mini", false))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "a revoked key is refused at once");
        // The refused form's 400 is logged as a failed load; nothing else may be.
        let log: Vec<String> = browser
            .console_log()
            .await
            .into_iter()
            .filter(|line| !line.contains("status of 400"))
            .collect();
        assert!(log.is_empty(), "no script errors: {log:?}");
        browser.close().await;
    }
}
