//! The activity page over HTTP: real completions with two keys and two
//! models narrowed by each filter, paging across more than a page of
//! records (written through the ledger as the meter writes them) with every
//! row once, the CSV and JSON exports equal to the filtered rows, the
//! account's time zone in the page and the exports, another account's
//! request answered with the 404 page, markup in a filter shown as text,
//! and bad filters answered in place with a 400.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;
use tokun::services::KeyOptions;
use tokun_storage::{AccountId, KeyId, Nanos, UsageFilter, UsageRecord, WriteOp};

use super::{Browser, sign_in};
use crate::support::{Harness, chat, client_with_key, new_account};

const DEMO: &str = "demo@tokun.local";

/// The page's time at 10,000 requests, and a log too big for one page.
mod at_scale;

/// The request ids of a page's rows, in order (from their detail links).
fn row_ids(html: &str) -> Vec<String> {
    html.match_indices("href=\"/activity/")
        .map(|(at, _)| {
            let rest = &html[at + 16..];
            rest[..rest.find(['?', '"']).unwrap()].to_owned()
        })
        .collect()
}

/// The "Older →" link of a page, unescaped.
fn older_link(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\"")?;
    let start = html[..at].rfind("href=\"")? + 6;
    let end = start + html[start..].find('"')?;
    Some(html[start..end].replace("&amp;", "&"))
}

/// A CSV export's rows as fields (our test values hold no commas).
fn csv_rows(text: &str) -> (String, Vec<Vec<String>>) {
    let mut lines = text.split("\r\n").filter(|line| !line.is_empty());
    let header = lines.next().unwrap().to_owned();
    let rows = lines
        .map(|line| line.split(',').map(str::to_owned).collect())
        .collect();
    (header, rows)
}

async fn demo_account(h: &Harness) -> AccountId {
    h.server
        .services()
        .store
        .account_by_email(DEMO)
        .unwrap()
        .unwrap()
        .id
}

/// What the store holds for `account` under `filter`, newest first.
fn stored(h: &Harness, account: AccountId, filter: &UsageFilter) -> Vec<UsageRecord> {
    let mut records: Vec<UsageRecord> = h
        .server
        .services()
        .store
        .usage_for(account, 0, u64::MAX)
        .map(Result::unwrap)
        .filter(|r| filter.matches(r))
        .collect();
    records.reverse();
    records
}

async fn export(browser: &Browser, path: &str) -> (String, String) {
    let response = browser.get(path).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename="),
        "{disposition}"
    );
    (disposition, response.text().await.unwrap())
}

/// The export of `query` equals `want`, row for row: ids and exact costs.
async fn exports_equal(browser: &Browser, query: &str, want: &[UsageRecord]) {
    let (_, csv) = export(browser, &format!("/activity.csv?{query}")).await;
    let (header, rows) = csv_rows(&csv);
    assert!(header.starts_with("request_id,time ("), "{header}");
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, want_ids, "CSV of {query}");
    let costs: Vec<Nanos> = rows.iter().map(|r| r[9].parse().unwrap()).collect();
    let want_costs: Vec<Nanos> = want.iter().map(|r| r.cost).collect();
    assert_eq!(costs, want_costs, "CSV costs of {query}");
    // The request log's cached tokens and route: the last two columns.
    assert!(header.ends_with(",cached_tokens,route"), "{header}");
    let extra: Vec<(u64, Option<u32>)> = rows
        .iter()
        .map(|r| {
            let n = r.len();
            (r[n - 2].parse().unwrap(), r[n - 1].parse().ok())
        })
        .collect();
    let want_extra: Vec<(u64, Option<u32>)> =
        want.iter().map(|r| (r.cached_tokens, r.route)).collect();
    assert_eq!(extra, want_extra, "CSV cached tokens and routes of {query}");

    let (_, json) = export(browser, &format!("/activity.json?{query}")).await;
    let json: Value = serde_json::from_str(&json).unwrap();
    let data = json["data"].as_array().unwrap();
    let ids: Vec<&str> = data
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want_ids, "JSON of {query}");
    let costs: Vec<Nanos> = data
        .iter()
        .map(|r| r["cost_usd"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(costs, want_costs, "JSON costs of {query}");
    let extra: Vec<(u64, Option<u32>)> = data
        .iter()
        .map(|r| {
            let route = r["route"].as_u64().map(|n| u32::try_from(n).unwrap());
            (r["cached_tokens"].as_u64().unwrap(), route)
        })
        .collect();
    assert_eq!(
        extra, want_extra,
        "JSON cached tokens and routes of {query}"
    );
}

#[tokio::test]
async fn filters_narrow_real_requests_and_exports_hold_exactly_the_filtered_rows() {
    let h = Harness::start(None).await;
    let account = demo_account(&h).await;
    let (second, secret) = h
        .server
        .services()
        .create_key(
            account,
            KeyOptions {
                name: "second".to_owned(),
                ..KeyOptions::default()
            },
        )
        .await
        .unwrap();
    let other_key = client_with_key(&secret);
    for (client, model) in [
        (&h.client, "echo-mini"),
        (&h.client, "echo-mini"),
        (&h.client, "echo-large"),
        (&other_key, "echo-large"),
        (&other_key, "echo-mini"),
    ] {
        let response = client
            .post(h.url("/v1/chat/completions"))
            .json(&chat(model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let (browser, _) = sign_in(&h, DEMO).await;
    let all = stored(&h, account, &UsageFilter::default());
    assert_eq!(all.len(), 5);
    let page = browser.page("/activity").await;
    let all_ids: Vec<String> = all.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(row_ids(&page), all_ids, "newest first");
    assert!(page.contains("Time (UTC)") && page.contains("echo-large"));
    assert!(page.contains("second (") && page.contains("200 OK"));
    assert!(older_link(&page).is_none(), "one page");

    let today = &today_utc();
    let second_id = second.id.to_string();
    let cases: Vec<(String, UsageFilter)> = vec![
        (
            format!("key={second_id}"),
            UsageFilter {
                key: Some(second.id),
                ..UsageFilter::default()
            },
        ),
        (
            "model=echo-large".to_owned(),
            UsageFilter {
                model: Some("echo-large".to_owned()),
                ..UsageFilter::default()
            },
        ),
        (
            format!("model=echo-mini&key={second_id}&status=ok"),
            UsageFilter {
                model: Some("echo-mini".to_owned()),
                key: Some(second.id),
                status: Some(tokun_storage::StatusClass::Ok),
                ..UsageFilter::default()
            },
        ),
        (
            "status=5xx".to_owned(),
            UsageFilter {
                status: Some(tokun_storage::StatusClass::ServerError),
                ..UsageFilter::default()
            },
        ),
        (format!("from={today}&to={today}"), UsageFilter::default()),
        (
            "from=2999-01-01".to_owned(),
            UsageFilter {
                from_ms: u64::MAX - 1,
                ..UsageFilter::default()
            },
        ),
    ];
    let expected_counts = [2, 2, 1, 0, 5, 0];
    for ((query, filter), count) in cases.iter().zip(expected_counts) {
        let want = stored(&h, account, filter);
        assert_eq!(want.len(), count, "{query}");
        let page = browser.page(&format!("/activity?{query}")).await;
        let ids: Vec<String> = want.iter().map(|r| r.request_id.clone()).collect();
        assert_eq!(row_ids(&page), ids, "{query}");
        if count == 0 {
            assert!(page.contains("No requests match these filters"), "{query}");
        }
        // The form shows the filters again, and the export links keep them.
        assert!(page.contains("/activity.csv?"), "{query}");
        exports_equal(&browser, query, &want).await;
    }
    let page = browser.page(&format!("/activity?key={second_id}")).await;
    assert!(page.contains(&format!("<option value=\"{second_id}\" selected>")));

    // The detail page: every field, exact usage, the playground link.
    let record = &all[0];
    let detail = browser
        .page(&format!("/activity/{}", record.request_id))
        .await;
    assert!(detail.contains(&record.request_id));
    assert!(detail.contains(&format!("${}", record.cost)));
    assert!(detail.contains("Exact") && detail.contains("echo"));
    assert!(detail.contains(&format!("/playground?model={}", record.model)));
}

/// Today's UTC date, `YYYY-MM-DD`.
fn today_utc() -> String {
    let now = jiff::Timestamp::now();
    now.strftime("%Y-%m-%d").to_string()
}

/// `n` usage records of `account`, one a second ending now, statuses mixed.
fn records(account: AccountId, key: KeyId, n: u64) -> Vec<UsageRecord> {
    let now = tokun_providers::clock::unix_ms();
    (0..n)
        .map(|i| UsageRecord {
            request_id: format!("bulk{i:06}"),
            at_ms: now - (n - i) * 1_000,
            account,
            key: Some(key),
            model: if i % 2 == 0 {
                "echo-mini"
            } else {
                "echo-large"
            }
            .to_owned(),
            served_model: "echo".to_owned(),
            provider: "echo".to_owned(),
            prompt_tokens: i,
            completion_tokens: 2 * i,
            cost: Nanos::new(1_000 + i64::try_from(i).unwrap()),
            estimated: i % 5 == 0,
            status: if i % 7 == 0 { 502 } else { 200 },
            transport: "http".to_owned(),
            latency_ms: 10,
            ttft_ms: Some(3),
            error_kind: (i % 11 == 0).then(|| "client_gone".to_owned()),
            cached_tokens: i % 4,
            route: (i % 3 != 0).then_some(u32::try_from(i % 2).unwrap()),
        })
        .collect()
}

async fn write(h: &Harness, records: Vec<UsageRecord>) {
    for chunk in records.chunks(2_000) {
        let ops = chunk.iter().cloned().map(WriteOp::PutUsage).collect();
        h.server.services().ledger.append(ops).await.unwrap();
    }
}

/// Follows "Older →" from `first`; every page's ids, in order.
async fn every_page(browser: &Browser, first: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next {
        let page = browser.page(&path).await;
        pages.push(row_ids(&page));
        next = older_link(&page);
        assert!(pages.len() < 100, "paging ends");
    }
    pages
}

#[tokio::test]
async fn paging_shows_each_row_once_and_exports_all_pages() {
    let h = Harness::start(None).await;
    let account = demo_account(&h).await;
    let key = h.server.services().store.keys_for(account).unwrap()[0].id;
    write(&h, records(account, key, 130)).await;
    let (browser, _) = sign_in(&h, DEMO).await;

    let pages = every_page(&browser, "/activity").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [50, 50, 30]);
    let seen: Vec<String> = pages.concat();
    let want: Vec<String> = stored(&h, account, &UsageFilter::default())
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(seen, want);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 130);
    let second = browser
        .page(&older_link(&browser.page("/activity").await).unwrap())
        .await;
    assert!(second.contains("← Newest"));

    // Filtered paging keeps the filters on every link.
    let filter = UsageFilter {
        model: Some("echo-large".to_owned()),
        status: Some(tokun_storage::StatusClass::Ok),
        ..UsageFilter::default()
    };
    let want = stored(&h, account, &filter);
    let pages = every_page(&browser, "/activity?model=echo-large&status=ok").await;
    let ids: Vec<String> = want.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(pages.concat(), ids);
    assert!(pages.len() >= 2 && want.len() > 50);
    exports_equal(&browser, "model=echo-large&status=ok", &want).await;
    exports_equal(&browser, "", &stored(&h, account, &UsageFilter::default())).await;
    for class in ["5xx", "error"] {
        let filter = UsageFilter {
            status: tokun_storage::StatusClass::parse(class),
            ..UsageFilter::default()
        };
        let want = stored(&h, account, &filter);
        assert!(!want.is_empty());
        exports_equal(&browser, &format!("status={class}"), &want).await;
        let page = browser.page(&format!("/activity?status={class}")).await;
        assert!(page.contains("Failed"), "failures are marked in words");
    }
}

#[tokio::test]
async fn other_accounts_requests_are_not_found_and_bad_filters_are_errors_in_place() {
    let h = Harness::start(None).await;
    let (_, their_key) = new_account(&h, "them@example.com", "5").await;
    let response = client_with_key(&their_key)
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let store = &h.server.services().store;
    let them = store.account_by_email("them@example.com").unwrap().unwrap();
    let theirs = &stored(&h, them.id, &UsageFilter::default())[0];
    let at = store
        .find_usage(them.id, &theirs.request_id, 100)
        .unwrap()
        .unwrap()
        .cursor
        .to_text();

    let (browser, _) = sign_in(&h, DEMO).await;
    for path in [
        format!("/activity/{}", theirs.request_id),
        format!("/activity/{}?at={at}", theirs.request_id),
        "/activity/nothing-like-it".to_owned(),
    ] {
        let response = browser.get(&path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(response.text().await.unwrap().contains("Page not found"));
    }
    let own = browser.page("/activity").await;
    assert!(!own.contains(&theirs.request_id));
    assert!(own.contains("No requests yet"), "the empty state");

    let script = "<script>alert(1)</script>";
    let page = browser
        .page(&format!("/activity?model={}", urlencode(script)))
        .await;
    assert!(!page.contains(script), "markup is shown as text");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    for query in [
        "from=2026-02-01&to=2026-01-01".to_owned(),
        "from=yesterday".to_owned(),
        "to=2026-13-01".to_owned(),
        "status=teapot".to_owned(),
        "key=key_999999".to_owned(),
        "before=zz".to_owned(),
        format!("before={at}"),
        format!("model={}", "m".repeat(300)),
    ] {
        let response = browser.get(&format!("/activity?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let page = response.text().await.unwrap();
        assert!(page.contains("There is a problem"), "{query}");
        assert!(page.contains("<form class=\"activity-filters\""), "{query}");
        for export in ["/activity.csv", "/activity.json"] {
            let response = browser.get(&format!("{export}?{query}")).await;
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{export}?{query}"
            );
        }
    }
    let twice = browser
        .get("/activity?from=2026-01-01&from=2026-01-02")
        .await;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn times_are_in_the_accounts_zone_and_the_exports_say_which() {
    let h = Harness::start(None).await;
    let account = demo_account(&h).await;
    let key = h.server.services().store.keys_for(account).unwrap()[0].id;
    let mut one = records(account, key, 1);
    // 2026-07-01 00:30 in Tokyo is 2026-06-30 15:30 UTC.
    one[0].at_ms = 1_782_833_400_000;
    write(&h, one).await;
    let store = &h.server.services().store;
    let (browser, _) = sign_in(&h, DEMO).await;
    // /account refuses a zone the database does not know, in place.
    let html = browser.page("/account").await;
    let csrf = super::csrf_of(&html);
    for (zone, status) in [
        ("Mars/Olympus_Mons", StatusCode::BAD_REQUEST),
        ("Asia/Tokyo", StatusCode::SEE_OTHER),
    ] {
        let form = [
            ("csrf", csrf.as_str()),
            ("display_name", ""),
            ("time_zone", zone),
        ];
        assert_eq!(
            browser.post("/account", &form).await.status(),
            status,
            "{zone}"
        );
    }
    assert_eq!(store.profile(account).unwrap().time_zone, "Asia/Tokyo");
    let page = browser.page("/activity").await;
    assert!(page.contains("Time (Asia/Tokyo)") && page.contains("2026-07-01 00:30:00"));
    // The filter's dates are Tokyo days: July 1st holds it, June 30th not.
    let july = browser
        .page("/activity?from=2026-07-01&to=2026-07-01")
        .await;
    assert_eq!(row_ids(&july), ["bulk000000"]);
    let june = browser.page("/activity?to=2026-06-30").await;
    assert!(row_ids(&june).is_empty());
    let (_, csv) = export(&browser, "/activity.csv").await;
    assert!(csv.starts_with("request_id,time (Asia/Tokyo),"), "{csv}");
    assert!(csv.contains("2026-07-01T00:30:00.000+09:00"), "{csv}");
    let (_, json) = export(&browser, "/activity.json").await;
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["time_zone"], "Asia/Tokyo");
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
