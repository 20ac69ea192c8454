//! The billing pages over HTTP, in front of the fake Stripe: the top-up
//! form redirects to Checkout, a signed webhook credits once, the success
//! page shows the amount (to its own account only), bad amounts and
//! missing CSRF are refused, the statement reconciles to the nano and
//! months chain, and the low-balance alert is sent once per fall.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::json;
use tokun_storage::{AccountId, Nanos};
use tokun_testkit::FakeStripe;

use super::support::{Harness, admin_post, chat};
use super::{Browser, csrf_of, sign_in};

const WEBHOOK_SECRET: &str = "whsec_console_billing";
const DEMO: &str = "demo@tokun.local";

async fn start() -> (Harness, FakeStripe) {
    let stripe = FakeStripe::start().await.unwrap();
    let toml = format!(
        "[stripe]\nsecret_key = \"sk_test_console\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
         api_base = \"{}\"\nmin_topup_usd = 5.0\nmax_topup_usd = 500.0\n",
        stripe.api_base()
    );
    (Harness::start(Some(&toml)).await, stripe)
}

fn demo(h: &Harness) -> AccountId {
    let store = &h.server.services().store;
    store.account_by_email(DEMO).unwrap().unwrap().id
}

fn balance(h: &Harness, account: AccountId) -> Nanos {
    h.server.services().store.books(account).unwrap().balance
}

/// Submits the top-up form; the response as it came.
async fn topup(browser: &Browser, amount: &str) -> reqwest::Response {
    let csrf = csrf_of(&browser.page("/billing").await);
    browser
        .post("/billing/topup", &[("csrf", &csrf), ("amount", amount)])
        .await
}

/// The `data-nanos` values of a statement: (opening, lines, closing).
fn statement_numbers(html: &str) -> (i64, Vec<i64>, i64) {
    let mut values = html.split("data-nanos=\"").skip(1).map(|rest| {
        let end = rest.find('"').unwrap();
        rest[..end].parse::<i64>().unwrap()
    });
    let all: Vec<i64> = values.by_ref().collect();
    let (opening, rest) = all.split_first().unwrap();
    let (closing, lines) = rest.split_last().unwrap();
    (*opening, lines.to_vec(), *closing)
}

#[tokio::test]
async fn a_topup_goes_to_checkout_and_the_webhook_credits_it_once() {
    let (h, stripe) = start().await;
    let (browser, _) = sign_in(&h, DEMO).await;
    let account = demo(&h);
    let before = balance(&h, account);
    let page = browser.page("/billing").await;
    assert!(page.contains("action=\"/billing/topup\""), "{page}");
    assert!(page.contains("Between $5.00 and $500.00"));
    let response = topup(&browser, " 12.34 ").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("https://checkout.stripe.test/"),
        "{location}"
    );
    let session = stripe.sessions().pop().unwrap();
    assert_eq!(session.amount_cents(), 1234);
    assert_eq!(
        session.metadata("tokun_account"),
        Some(&*account.to_string())
    );
    let success_url = session.param("success_url").unwrap();
    assert!(
        success_url.ends_with("/billing/success?session_id={CHECKOUT_SESSION_ID}"),
        "{success_url}"
    );
    assert!(
        session
            .param("cancel_url")
            .unwrap()
            .ends_with("/billing/cancel")
    );

    // Back from Checkout before the webhook: waiting, and refreshing.
    let success = format!("/billing/success?session_id={}", session.id);
    let waiting = browser.get(&success).await;
    assert_eq!(waiting.status(), StatusCode::OK);
    assert_eq!(waiting.headers()["refresh"], "2");
    assert!(
        waiting
            .text()
            .await
            .unwrap()
            .contains("Waiting for payment confirmation")
    );
    assert_eq!(balance(&h, account), before, "nothing credited yet");

    let event = stripe.completed(&session);
    let delivered = stripe
        .deliver(&h.url("/stripe/webhook"), WEBHOOK_SECRET, &event)
        .await;
    assert_eq!(delivered.status(), 200);
    let credited = Nanos::new(12_340_000_000);
    assert_eq!(balance(&h, account), before.checked_add(credited).unwrap());
    let done = browser.get(&success).await;
    assert!(done.headers().get("refresh").is_none());
    let done = done.text().await.unwrap();
    assert!(done.contains("Payment received"), "{done}");
    assert!(done.contains("$12.34"));
    // The same event again credits nothing.
    let again = stripe
        .deliver(&h.url("/stripe/webhook"), WEBHOOK_SECRET, &event)
        .await;
    assert!(again.status().is_success());
    assert_eq!(balance(&h, account), before.checked_add(credited).unwrap());
    let billing = browser.page("/billing").await;
    assert!(billing.contains("<td>Paid</td>"), "{billing}");
    assert!(billing.contains(&format!("${}", before.checked_add(credited).unwrap())));

    // Someone else's session, and no session, are not found.
    let (other, _) = sign_in(&h, "someone.else@example.com").await;
    assert_eq!(other.get(&success).await.status(), StatusCode::NOT_FOUND);
    let unknown = browser
        .get("/billing/success?session_id=cs_test_nope")
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        browser.get("/billing/success").await.status(),
        StatusCode::NOT_FOUND
    );
    let cancel = browser.page("/billing/cancel").await;
    assert!(cancel.contains("Nothing was charged"));
}

#[tokio::test]
async fn bad_amounts_are_errors_in_place_and_forms_need_csrf() {
    let (h, stripe) = start().await;
    let (browser, _) = sign_in(&h, DEMO).await;
    for (amount, says) in [
        ("4.99", "between $5.00 and $500.00"),
        ("500.01", "between $5.00 and $500.00"),
        ("ten", "Enter an amount in dollars"),
        ("1e2", "Enter an amount in dollars"),
        ("", "Enter an amount in dollars"),
        ("10.001", "whole number of cents"),
        ("<script>", "Enter an amount in dollars"),
    ] {
        let response = topup(&browser, amount).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{amount}");
        let page = response.text().await.unwrap();
        assert!(page.contains("There is a problem"), "{amount}");
        assert!(page.contains(says), "{amount}: {page}");
        assert!(!page.contains("<script>"), "escaped");
    }
    assert!(stripe.sessions().is_empty(), "nothing reached Stripe");
    let missing = browser.post("/billing/topup", &[("amount", "10")]).await;
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let forged = browser
        .post(
            "/billing/topup",
            &[("csrf", &"0".repeat(64)), ("amount", "10")],
        )
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let alert = browser.post("/billing/alert", &[("threshold", "5")]).await;
    assert_eq!(alert.status(), StatusCode::FORBIDDEN);
    assert!(stripe.sessions().is_empty());
    let csrf = csrf_of(&browser.page("/billing").await);
    for bad in ["-1", "0", "lots", "2000000"] {
        let response = browser
            .post("/billing/alert", &[("csrf", &csrf), ("threshold", bad)])
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("There is a problem")
        );
    }
    let month = browser.get("/billing/statement?month=2026-13").await;
    assert_eq!(month.status(), StatusCode::BAD_REQUEST);
    for bad in [
        "month=2026-12&kind=nope",
        "month=2026-12&kind=usage&before=x",
        "kind=usage",
    ] {
        let response = browser.get(&format!("/billing/entries?{bad}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            response.text().await.unwrap().contains("<main"),
            "a console page"
        );
    }
}

#[tokio::test]
async fn without_stripe_the_page_says_top_ups_are_off() {
    let h = Harness::start(None).await;
    let (browser, _) = sign_in(&h, DEMO).await;
    let page = browser.page("/billing").await;
    assert!(page.contains("Top-ups are not configured"), "{page}");
    assert!(!page.contains("action=\"/billing/topup\""));
    let csrf = csrf_of(&page);
    let response = browser
        .post("/billing/topup", &[("csrf", &csrf), ("amount", "10")])
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // Signed out, the pages send people to sign in.
    let anonymous = Browser::new(&h);
    let response = anonymous.get("/billing/statement").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_statement_reconciles_to_the_nano_and_months_chain() {
    let (h, stripe) = start().await;
    let (browser, _) = sign_in(&h, DEMO).await;
    let account = demo(&h);
    // A top-up through Checkout and the webhook.
    let response = topup(&browser, "20").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let session = stripe.sessions().pop().unwrap();
    let delivered = stripe
        .deliver(
            &h.url("/stripe/webhook"),
            WEBHOOK_SECRET,
            &stripe.completed(&session),
        )
        .await;
    assert_eq!(delivered.status(), 200);
    // Read once now and again between the steps below: the last read is
    // the earlier statement brought up to date with the entries since, and
    // must add up exactly as a whole read does.
    let _ = browser.page("/billing/statement").await;
    // Usage: enough requests for more than one page of hold entries.
    for _ in 0..30 {
        let response = h
            .post_json("/v1/chat/completions", &chat("echo-mini", false))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let _ = browser.page("/billing/statement").await;
    let path = format!("/admin/accounts/{account}/credit");
    let credit = admin_post(
        &h,
        &path,
        json!({"amount_usd": "1.000000007", "reason": "sorry <b>"}),
    );
    assert_eq!(credit.await.status(), StatusCode::OK);
    let path = format!("/admin/accounts/{account}/debit");
    let debit = admin_post(&h, &path, json!({"amount_usd": "0.25", "reason": "fee"}));
    assert_eq!(debit.await.status(), StatusCode::OK);

    let page = browser.page("/billing/statement").await;
    assert!(page.contains("UTC"), "{page}");
    let (opening, lines, closing) = statement_numbers(&page);
    assert_eq!(opening + lines.iter().sum::<i64>(), closing, "to the nano");
    assert_eq!(
        closing,
        balance(&h, account).get(),
        "this month closes at the balance"
    );
    for kind in ["topup", "usage", "credit", "debit", "holds"] {
        assert!(
            page.contains(&format!("data-kind=\"{kind}\"")),
            "{kind} line"
        );
    }
    // The demo credit ($5) and the payment ($20) are both top-ups.
    assert!(page.contains("+$25.00"), "{page}");
    assert!(page.contains("+$1.000000007"));
    assert!(page.contains("−$0.25"));

    // The months around it chain: last month closes where this one opens,
    // and next month opens where this one closes.
    let month = |page: &str| {
        let start = page.find("name=\"month\" value=\"").unwrap() + 20;
        page[start..start + 7].to_owned()
    };
    let this = month(&page);
    let previous = page
        .split("rel=\"prev\" href=\"")
        .nth(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
        .unwrap();
    let before = browser.page(&previous.replace("&amp;", "&")).await;
    assert!(before.contains("No activity"), "{before}");
    assert_eq!(statement_numbers(&before).2, opening);
    let (year, m) = this.split_once('-').unwrap();
    let (year, m): (i64, u32) = (year.parse().unwrap(), m.parse().unwrap());
    let next = if m == 12 {
        format!("{}-01", year + 1)
    } else {
        format!("{year}-{:02}", m + 1)
    };
    let after = browser
        .page(&format!("/billing/statement?month={next}"))
        .await;
    assert!(after.contains("No activity"));
    let (next_opening, next_lines, next_closing) = statement_numbers(&after);
    assert_eq!(
        (next_opening, next_lines.len(), next_closing),
        (closing, 0, closing)
    );

    // Each line links to its entries: the credit shows its reason, escaped.
    let credits = browser
        .page(&format!("/billing/entries?month={this}&kind=credit"))
        .await;
    assert!(credits.contains("sorry &lt;b&gt;"), "{credits}");
    assert!(credits.contains("1 entry"));
    // Holds are paged, 50 at a time, newest first; every one is listed once.
    let store = &h.server.services().store;
    let holds = store
        .entries_for(account, 0)
        .map(Result::unwrap)
        .filter(|e| {
            matches!(
                e.kind,
                tokun_storage::EntryKind::Hold
                    | tokun_storage::EntryKind::Extend
                    | tokun_storage::EntryKind::Release
            )
        })
        .count();
    assert!(holds > 50, "{holds} hold entries");
    let mut listed = 0;
    let mut next_page = Some(format!("/billing/entries?month={this}&kind=holds"));
    while let Some(path) = next_page.take() {
        let page = browser.page(&path).await;
        listed += page.matches("<td class=\"reason\">").count();
        next_page = page
            .split("rel=\"next\" href=\"")
            .nth(1)
            .map(|rest| rest[..rest.find('"').unwrap()].replace("&amp;", "&"));
    }
    assert_eq!(listed, holds);
}

#[tokio::test]
async fn a_low_balance_alert_is_sent_once_per_fall() {
    let h = Harness::start(None).await;
    let (browser, _) = sign_in(&h, DEMO).await;
    let account = demo(&h);
    let mut mail = h.server.watch_mail();
    let threshold = Nanos::new(balance(&h, account).get() - 1);
    let csrf = csrf_of(&browser.page("/billing").await);
    let saved = browser
        .post(
            "/billing/alert",
            &[("csrf", &csrf), ("threshold", &threshold.to_string())],
        )
        .await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(saved.headers()[LOCATION], "/billing?alert=saved");
    let page = browser.page("/billing?alert=saved").await;
    assert!(page.contains(&threshold.to_string()), "the field shows it");
    h.server.check_low_balances().await.unwrap();
    assert!(mail.try_recv().is_err(), "still above");

    // A settlement takes the balance below: one email.
    let spend = || async {
        let response = h
            .post_json("/v1/chat/completions", &chat("echo-mini", false))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    };
    spend().await;
    h.server.check_low_balances().await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(5), mail.recv())
        .await
        .expect("an alert")
        .unwrap();
    assert_eq!(sent.to, DEMO);
    assert!(sent.subject.contains("below"), "{}", sent.subject);
    assert!(
        sent.body.contains(&format!("${threshold}")),
        "{}",
        sent.body
    );
    // Further down: no second email.
    spend().await;
    h.server.check_low_balances().await.unwrap();
    h.server.check_low_balances().await.unwrap();
    assert!(mail.try_recv().is_err(), "one email per fall");

    // Back above (an admin credit), then below again (a debit): one more.
    let path = format!("/admin/accounts/{account}/credit");
    assert!(
        admin_post(&h, &path, json!({"amount_usd": "1", "reason": "up"}))
            .await
            .status()
            .is_success()
    );
    h.server.check_low_balances().await.unwrap();
    let store = &h.server.services().store;
    assert!(
        !store.profile(account).unwrap().low_balance_alerted,
        "re-armed"
    );
    let path = format!("/admin/accounts/{account}/debit");
    assert!(
        admin_post(&h, &path, json!({"amount_usd": "2", "reason": "down"}))
            .await
            .status()
            .is_success()
    );
    h.server.check_low_balances().await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), mail.recv())
        .await
        .expect("a second alert after re-arming")
        .unwrap();
    assert_eq!(again.to, DEMO);
    assert!(mail.try_recv().is_err());

    // Cleared, nothing more is watched.
    let cleared = browser
        .post("/billing/alert", &[("csrf", &csrf), ("threshold", "")])
        .await;
    assert_eq!(cleared.headers()[LOCATION], "/billing?alert=off");
    assert_eq!(store.profile(account).unwrap().low_balance, None);
    // Set while already below: no email for what the page already shows.
    let high = browser
        .post("/billing/alert", &[("csrf", &csrf), ("threshold", "1000")])
        .await;
    assert_eq!(high.headers()[LOCATION], "/billing?alert=below");
    h.server.check_low_balances().await.unwrap();
    assert!(mail.try_recv().is_err());
}
