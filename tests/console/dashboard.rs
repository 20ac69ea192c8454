//! The dashboard's spend follows new requests exactly: its per-day sums are
//! read once and then kept up to date from the ledger writer's feed, and
//! after every round of requests they equal the usage records, to the nano.

use reqwest::StatusCode;
use tokun_storage::Nanos;

use super::sign_in;
use super::support::{Harness, chat};

const DEMO: &str = "demo@tokun.local";
const MS_PER_DAY: u64 = 86_400_000;

/// The `data-nanos` of the "Spent today", "Last 7 days" and "Last 30 days" cards.
fn spend_cards(html: &str) -> Vec<i64> {
    html.split("<dd data-nanos=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
        .collect()
}

/// What the usage records of today say the account spent.
fn spent_today(h: &Harness) -> i64 {
    let store = &h.server.services().store;
    let account = store.account_by_email(DEMO).unwrap().unwrap().id;
    let today = tokun_providers::clock::unix_ms() / MS_PER_DAY * MS_PER_DAY;
    store
        .usage_for(account, today, u64::MAX)
        .map(|record| record.unwrap().cost)
        .fold(Nanos::ZERO, Nanos::saturating_add)
        .get()
}

#[tokio::test]
async fn the_spend_cards_follow_each_round_of_requests_to_the_nano() {
    let h = Harness::start(None).await;
    let (browser, _) = sign_in(&h, DEMO).await;
    assert_eq!(spend_cards(&browser.page("/").await), vec![0, 0, 0]);
    for round in 1..=3 {
        for stream in [false, true, false] {
            let response = h
                .post_json("/v1/chat/completions", &chat("echo-mini", stream))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let _ = response.bytes().await.unwrap();
        }
        h.wait_streams_idle().await;
        let expected = spent_today(&h);
        assert!(expected > 0, "round {round}: the requests cost something");
        let cards = spend_cards(&browser.page("/").await);
        assert_eq!(cards, vec![expected; 3], "round {round}");
    }
}
