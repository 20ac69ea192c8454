//! Billing in a real browser against the fake Stripe: the top-up form sends
//! the browser to Checkout, the signed webhook credits, the success page
//! (refreshing itself until then) shows the amount, and the balance on
//! `/billing` has moved. Screenshots of `/billing` and the statement at
//! phone and desktop widths.

use std::time::Duration;

use serde_json::json;
use tokun_testkit::FakeStripe;

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::{Harness, admin_post, chat};

const WEBHOOK_SECRET: &str = "whsec_browser_billing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_through_checkout_credits_the_balance() {
    let stripe = FakeStripe::start().await.unwrap();
    let toml = format!(
        "[stripe]\nsecret_key = \"sk_test_browser\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
         api_base = \"{}\"\n",
        stripe.api_base()
    );
    let h = Harness::start(Some(&toml)).await;
    let base = base(&h);
    let browser = Browser::desktop().await;
    sign_in(&h, &browser, "demo@tokun.local").await;
    browser.goto(&format!("{base}/billing")).await;
    browser.wait_for_text("#balance", "$5.00", WAIT).await;

    // A bad amount first: the error is in place.
    browser.fill("input[name=amount]", "2").await;
    browser.click("form[action='/billing/topup'] button").await;
    browser
        .wait_for_text(".error-summary", "between $5.00 and $1000.00", WAIT)
        .await;
    browser.fill("input[name=amount]", "15").await;
    browser.click("form[action='/billing/topup'] button").await;
    let session = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(session) = stripe.sessions().pop() {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the form opened a Checkout Session");
    assert_eq!(session.amount_cents(), 1500);
    // The browser went on to Checkout (which does not exist here).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !browser.current_url().await.contains("checkout.stripe.test") {
        assert!(tokio::time::Instant::now() < deadline, "sent to Checkout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Forget the failed load of the fake Checkout host.
    let _ = browser.console_log().await;

    // Checkout sends people back here; the webhook has not landed yet.
    let success = session
        .param("success_url")
        .unwrap()
        .replace("{CHECKOUT_SESSION_ID}", &session.id);
    assert!(success.starts_with(&base), "{success}");
    browser.goto(&success).await;
    browser
        .wait_for_text("main", "Waiting for payment confirmation", WAIT)
        .await;
    browser.screenshot("console-billing-waiting").await;
    let delivered = stripe
        .deliver(
            &h.url("/stripe/webhook"),
            WEBHOOK_SECRET,
            &stripe.completed(&session),
        )
        .await;
    assert_eq!(delivered.status(), 200);
    // The page refreshes itself and shows the amount.
    let text = browser
        .wait_for_text("main", "Payment received", WAIT)
        .await;
    assert!(text.contains("$15.00"), "{text}");
    browser.screenshot("console-billing-success").await;

    browser.goto(&format!("{base}/billing")).await;
    browser.wait_for_text("#balance", "$20.00", WAIT).await;
    browser.wait_for_text("table.payments", "Paid", WAIT).await;

    // Some activity for the statement: requests and an operator's credit.
    for _ in 0..3 {
        let response = h
            .post_json("/v1/chat/completions", &chat("echo-mini", false))
            .await;
        assert_eq!(response.status(), 200);
    }
    let account = h
        .server
        .services()
        .store
        .account_by_email("demo@tokun.local")
        .unwrap()
        .unwrap()
        .id;
    let credit = admin_post(
        &h,
        &format!("/admin/accounts/{account}/credit"),
        json!({"amount_usd": "2.50", "reason": "goodwill"}),
    )
    .await;
    assert_eq!(credit.status(), 200);

    let phone = Browser::phone().await;
    sign_in(&h, &phone, "demo@tokun.local").await;
    for browser in [&browser, &phone] {
        browser.goto(&format!("{base}/billing")).await;
        browser.wait_for_text("table.payments", "Paid", WAIT).await;
        browser.screenshot("console-billing").await;
        browser.goto(&format!("{base}/billing/statement")).await;
        let text = browser
            .wait_for_text("table.statement", "Closing balance", WAIT)
            .await;
        assert!(text.contains("Top-ups") && text.contains("Usage"), "{text}");
        assert!(text.contains("+$2.50"), "{text}");
        browser.screenshot("console-billing-statement").await;
        browser.click("tr[data-kind=usage] a").await;
        browser.wait_for_text("main", "request ", WAIT).await;
        browser.screenshot("console-billing-entries").await;
        let log = browser.console_log().await;
        assert!(log.is_empty(), "no script errors: {log:?}");
    }
    phone.close().await;
    browser.close().await;
}
