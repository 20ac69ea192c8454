//! The activity page in a real browser, at phone and desktop width: a few
//! requests made with the account's key, the filter applied through the
//! real form, a request's detail page, and the CSV link fetched with the
//! browser's session cookie and compared with the rows on the page, with
//! screenshots of the list and the detail page.

use reqwest::header::COOKIE;

use crate::console::{base, sign_in};
use crate::harness::{Browser, WAIT};
use crate::support::{Harness, chat};

/// The request ids of the rows shown (from their detail links).
async fn shown_ids(browser: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for link in browser.find_all("table.activity tbody a").await {
        let href = link.attr("href").await.unwrap().unwrap();
        let id = href.trim_start_matches("/activity/");
        ids.push(id[..id.find('?').unwrap_or(id.len())].to_owned());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_filters_their_requests_opens_one_and_downloads_the_csv() {
    let h = Harness::start(None).await;
    for model in [
        "echo-mini",
        "echo-large",
        "echo-mini",
        "echo-large",
        "echo-large",
    ] {
        let response = h
            .post_json("/v1/chat/completions", &chat(model, false))
            .await;
        assert_eq!(response.status(), 200);
    }
    let base = base(&h);
    let http = reqwest::Client::new();
    for browser in [Browser::phone().await, Browser::desktop().await] {
        sign_in(&h, &browser, "demo@tokun.local").await;
        browser.goto(&format!("{base}/activity")).await;
        browser.wait_for("table.activity", WAIT).await;
        assert_eq!(shown_ids(&browser).await.len(), 5);

        // The real form: a model typed in, a status picked, submitted.
        browser.fill("input[name=model]", "echo-large").await;
        browser
            .find("select[name=status]")
            .await
            .select_by_value("ok")
            .await
            .unwrap();
        browser
            .click("form.activity-filters button[type=submit]")
            .await;
        browser.wait_for_text("p.exports", "Download", WAIT).await;
        let url = browser.current_url().await;
        assert!(
            url.contains("model=echo-large") && url.contains("status=ok"),
            "{url}"
        );
        let ids = shown_ids(&browser).await;
        assert_eq!(ids.len(), 3, "the filter narrows the rows");
        let value = browser
            .find("input[name=model]")
            .await
            .prop("value")
            .await
            .unwrap();
        assert_eq!(
            value.as_deref(),
            Some("echo-large"),
            "the form shows the filter"
        );
        let table = browser.text_of("table.activity tbody").await;
        assert!(!table.contains("echo-mini"), "{table}");
        browser.screenshot("console-activity").await;

        // The CSV link, fetched with this browser's session: the same rows.
        let href = browser
            .find("p.exports a")
            .await
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        assert!(href.starts_with("/activity.csv?"), "{href}");
        let session = browser.cookie("tokun_session").await.unwrap();
        let csv = http
            .get(format!("{base}{href}"))
            .header(COOKIE, format!("tokun_session={}", session.value()))
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), 200);
        let csv = csv.text().await.unwrap();
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("request_id,time (UTC),"));
        let exported: Vec<String> = lines
            .map(|line| line.split(',').next().unwrap().to_owned())
            .collect();
        assert_eq!(exported, ids, "the CSV holds exactly the rows shown");

        // A request's detail page.
        browser.click("table.activity tbody a").await;
        browser.wait_for_text("h1", "Request", WAIT).await;
        let detail = browser.text_of("main").await;
        assert!(
            detail.contains(&ids[0]) && detail.contains("echo-large"),
            "{detail}"
        );
        assert!(detail.contains("Exact") || detail.contains("Estimated"));
        let playground = browser
            .find("main a.button")
            .await
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(playground, "/playground?model=echo-large");
        browser.screenshot("console-activity-detail").await;
        let log = browser.console_log().await;
        assert!(log.is_empty(), "no script errors: {log:?}");

        // A bad filter is an error in place, beside its field.
        browser
            .goto(&format!("{base}/activity?from=2026-02-01&to=2026-01-01"))
            .await;
        browser
            .wait_for_text(".error-summary", "start date must be on or before", WAIT)
            .await;
        browser.screenshot("console-activity-error").await;
        browser.close().await;
    }
}
