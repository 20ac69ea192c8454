//! The activity page over a log of 10,000 requests: a filter nothing
//! matches reads a bounded number of records a page and goes on from where
//! it stopped, the whole log exports, and the page's time is measured and
//! printed (run with `--nocapture`), never asserted.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokun_storage::UsageFilter;

use super::{DEMO, csv_rows, demo_account, export, older_link, records, row_ids, write};
use crate::sign_in;
use crate::support::Harness;

/// Not a test of behaviour: the activity page's server time at 10,000
/// requests in the log, printed (run with `--nocapture` to read it). No
/// timing is asserted.
#[tokio::test]
async fn the_page_is_measured_at_ten_thousand_requests() {
    let h = Harness::start(None).await;
    let account = demo_account(&h).await;
    let key = h.server.services().store.keys_for(account).unwrap()[0].id;
    write(&h, records(account, key, 10_000)).await;
    let (browser, _) = sign_in(&h, DEMO).await;
    let older = older_link(&browser.page("/activity").await).unwrap();
    // A filter nothing matches reads 5,000 records a page, then offers to
    // go on from where it stopped, until the log ends.
    let first = browser.page("/activity?status=4xx").await;
    assert!(first.contains("Searched 5,000 requests without a match"));
    let next = older_link(&first).expect("older goes on");
    assert!(next.contains("status=4xx"), "{next}");
    let last = browser.page(&next).await;
    // The whole log exports, a chunk at a time.
    let (_, csv) = export(&browser, "/activity.csv").await;
    assert_eq!(csv_rows(&csv).1.len(), 10_000);
    let (_, json) = export(&browser, "/activity.json").await;
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["data"].as_array().unwrap().len(), 10_000);
    assert!(last.contains("No older requests match"));
    assert!(older_link(&last).is_none());
    // Floors from the same run: a static file through the same stack, and
    // the store's page query alone.
    let mut floor = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        browser
            .get("/assets/console.css")
            .await
            .bytes()
            .await
            .unwrap();
        floor.push(started.elapsed());
    }
    floor.sort();
    let store = &h.server.services().store;
    let mut query = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let page = store
            .usage_page(account, &UsageFilter::default(), None, 50, 5_000)
            .unwrap();
        query.push(started.elapsed());
        assert_eq!(page.rows.len(), 50);
    }
    query.sort();
    eprintln!(
        "floor: GET /assets/console.css median {:?}; Store::usage_page (50 rows) median {:?}",
        floor[15], query[15]
    );
    for path in [
        "/activity",
        older.as_str(),
        "/activity?status=5xx&model=echo-large",
    ] {
        let mut times = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            let page = browser.page(path).await;
            times.push(started.elapsed());
            assert!(!row_ids(&page).is_empty());
        }
        times.sort();
        eprintln!(
            "GET {path} at 10,000 requests: median {:?}, p90 {:?} (round trip on 127.0.0.1)",
            times[15], times[27]
        );
        assert!(times[15] < Duration::from_secs(5));
    }
}
