//! Email-code sign-in in a real browser, at phone and desktop width: a new
//! email gets an account with the signup credit; the demo account, after a
//! few completions with its key, sees its spend, chart and latest requests.
//! Screenshots of the sign-in form, both dashboards and the account page.

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::{Harness, chat};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_email_signs_in_with_a_code_and_sees_its_signup_credit() {
    let h = Harness::start(Some("[billing]\nsignup_credit_usd = 5\n")).await;
    let base = base(&h);
    for browser in [Browser::phone().await, Browser::desktop().await] {
        browser.goto(&format!("{base}/")).await;
        browser.wait_for("input[name=email]", WAIT).await;
        browser.screenshot("console-login").await;
        sign_in(&h, &browser, "Grace@Example.com").await;
        let text = browser.wait_for_text("main", "$5.00", WAIT).await;
        assert!(text.contains("Available credit"), "{text}");
        assert!(text.contains("No spend in the last 30 days"), "{text}");
        browser.screenshot("console-dashboard-new").await;
        browser.goto(&format!("{base}/account")).await;
        browser
            .wait_for_text("main", "grace@example.com", WAIT)
            .await;
        browser.screenshot("console-account").await;
        let log = browser.console_log().await;
        assert!(log.is_empty(), "no script errors: {log:?}");
        browser.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_spend_by_model_and_the_latest_requests() {
    let h = Harness::start(None).await;
    for model in ["echo-mini", "echo-large", "echo-large", "echo-mini"] {
        let response = h
            .post_json("/v1/chat/completions", &chat(model, false))
            .await;
        assert_eq!(response.status(), 200);
    }
    let base = base(&h);
    for browser in [Browser::phone().await, Browser::desktop().await] {
        sign_in(&h, &browser, "demo@tokun.local").await;
        browser.goto(&format!("{base}/")).await;
        // The chart is drawn (spend today), with its legend and table.
        browser.wait_for("figure svg[role=img]", WAIT).await;
        let legend = browser.text_of("ul.legend").await;
        assert!(
            legend.contains("echo-mini") && legend.contains("echo-large"),
            "{legend}"
        );
        let latest = browser.page_text().await;
        assert!(!latest.contains("No requests yet"), "{latest}");
        let rows = browser.find_all("main table tbody tr").await.len();
        assert!(
            rows >= 4,
            "the latest requests list the 4 requests: {rows} rows"
        );
        browser.screenshot("console-dashboard").await;
        let log = browser.console_log().await;
        assert!(log.is_empty(), "no script errors: {log:?}");
        browser.close().await;
    }
}
