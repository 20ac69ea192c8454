//! The playground in a real browser, at phone and desktop width: a prompt
//! sent over `/v1/ws` with the session's ticket streams visible text and
//! then its cost; a long completion stopped mid-stream shows the stopped
//! state, and the account's balance dropped by exactly the two costs the
//! page showed. Screenshots after each.

use tokun_storage::Nanos;

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::Harness;

/// `echo-mini` answers at once; `echo-long` writes up to 4,000 tokens
/// 20 ms apart, so Stop lands mid-stream.
const CONFIG: &str = crate::support::PLAYGROUND_CONFIG;

/// The cost in the status line: `… Cost $0.000012 …`.
fn cost_in(status: &str) -> Nanos {
    let start = status.find("Cost $").expect("a cost") + "Cost $".len();
    let digits: String = status[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a cost in {status}"))
}

/// The number right after `needle` in `status`: `billed for N tokens` → N.
fn number_after(status: &str, needle: &str) -> i64 {
    let start = status.find(needle).expect(needle) + needle.len();
    let digits: String = status[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_streams_in_and_stop_bills_only_what_was_generated() {
    let h = Harness::start(Some(CONFIG)).await;
    let base = base(&h);
    for browser in [Browser::phone().await, Browser::desktop().await] {
        let email = format!("player{}@example.com", browser.width);
        sign_in(&h, &browser, &email).await;
        let store = &h.server.services().store;
        let account = store.account_by_email(&email).unwrap().unwrap().id;
        let before = store.books(account).unwrap().balance;

        browser.goto(&format!("{base}/playground")).await;
        // The script enabled the form and said so.
        browser
            .wait_for_text("#pg-status", "Write a message", WAIT)
            .await;
        browser
            .fill("#pg-message", "Hello from the playground")
            .await;
        browser.click("#pg-send").await;
        // Tokens arrive one by one: wait for the prompt's words, not just
        // the first token.
        let text = browser.wait_for_text("#pg-output", "Hello", WAIT).await;
        assert!(text.starts_with("echo:"), "{text}");
        let status = browser.wait_for_text("#pg-status", "Cost $", WAIT).await;
        assert!(status.contains("completion tokens"), "{status}");
        let first = cost_in(&status);
        assert!(first > Nanos::ZERO);
        browser.screenshot("console-playground").await;

        // A long completion, stopped once some of it is on the page.
        browser.click("#pg-model option[value='echo-long']").await;
        browser.fill("#pg-max-tokens", "4000").await;
        browser.click("#pg-send").await;
        browser.wait_for_text("#pg-status", "Streaming", WAIT).await;
        let deadline = std::time::Instant::now() + WAIT;
        while browser
            .text_of("#pg-output")
            .await
            .split_whitespace()
            .count()
            < 12
        {
            assert!(std::time::Instant::now() < deadline, "tokens arrive");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        browser.click("#pg-stop").await;
        let status = browser
            .wait_for_text("#pg-status", "Stopped — billed for", WAIT)
            .await;
        let generated = number_after(&status, "billed for ");
        let prompt = number_after(&status, "(+ ");
        assert!((12..4000).contains(&generated), "{status}");
        // Exactly what was generated, at echo-long's $1 / $4 per million.
        let second = cost_in(&status);
        assert_eq!(
            second,
            Nanos::new(prompt * 1_000 + generated * 4_000),
            "{status}"
        );
        let send = browser.find("#pg-send").await;
        assert!(send.is_enabled().await.unwrap(), "Send is back");
        browser.screenshot("console-playground-stopped").await;

        let books = store.books(account).unwrap();
        let spent = first.checked_add(second).unwrap();
        assert_eq!(books.balance, before.checked_sub(spent).unwrap());
        assert_eq!(books.held, Nanos::ZERO);
        let log = browser.console_log().await;
        assert!(log.is_empty(), "no script errors: {log:?}");
        browser.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_credit_sees_the_refusal_in_place() {
    let config = CONFIG.replace("signup_credit_usd = 5", "signup_credit_usd = 0");
    let h = Harness::start(Some(&config)).await;
    let browser = Browser::phone().await;
    sign_in(&h, &browser, "broke@example.com").await;
    browser.goto(&format!("{}/playground", base(&h))).await;
    browser
        .wait_for_text("#pg-status", "Write a message", WAIT)
        .await;
    browser.fill("#pg-message", "Hello?").await;
    browser.click("#pg-send").await;
    let error = browser
        .wait_for_text("#pg-error", "Top up on the Billing page", WAIT)
        .await;
    assert!(error.contains("insufficient credits"), "{error}");
    let status = browser.text_of("#pg-status").await;
    assert!(status.contains("Nothing was billed"), "{status}");
    let link = browser.find("#pg-error a[href='/billing']").await;
    assert!(link.is_displayed().await.unwrap());
    browser.screenshot("console-playground-error").await;
    let log = browser.console_log().await;
    assert!(log.is_empty(), "no script errors: {log:?}");
    browser.close().await;
}
