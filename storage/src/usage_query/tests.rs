use super::*;
use crate::codec::encode;
use crate::money::Nanos;

fn record(account: u64, at_ms: u64, n: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{account}-{n}"),
        at_ms,
        account: AccountId::new(account),
        key: Some(KeyId::new(n % 2)),
        model: if n % 3 == 0 { "big" } else { "small" }.to_owned(),
        served_model: if n % 3 == 0 { "big-2024" } else { "small" }.to_owned(),
        provider: "echo".to_owned(),
        prompt_tokens: n,
        completion_tokens: 2 * n,
        cost: Nanos::new(i64::try_from(n).unwrap()),
        estimated: false,
        status: if n % 10 == 7 { 502 } else { 200 },
        transport: "http".to_owned(),
        latency_ms: 5,
        ttft_ms: Some(1),
        error_kind: (n % 10 == 3).then(|| "client_gone".to_owned()),
        cached_tokens: 0,
        route: None,
    }
}

/// `count` records of account 1 one second apart (from t = 1,000 s, two
/// in the same millisecond every tenth), and a few of account 2 between.
fn store_with(count: u64) -> Store {
    let store = Store::temporary().unwrap();
    for n in 0..count {
        let at_ms = 1_000_000 + (n - n % 10 / 9) * 1_000;
        let key = usage_key(1, at_ms, n);
        store
            .trees
            .usage
            .insert(key, encode("usage", &record(1, at_ms, n)).unwrap())
            .unwrap();
    }
    for n in 0..5 {
        let at_ms = 1_000_000 + n * 1_000;
        let key = usage_key(2, at_ms, 10_000 + n);
        store
            .trees
            .usage
            .insert(key, encode("usage", &record(2, at_ms, n)).unwrap())
            .unwrap();
    }
    store
}

/// Every page of `filter`, following `older`, as request ids.
fn all_pages(store: &Store, filter: &UsageFilter, limit: usize, max_scan: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut before = None;
    for _ in 0..10_000 {
        let page = store
            .usage_page(AccountId::new(1), filter, before, limit, max_scan)
            .unwrap();
        assert!(page.rows.len() <= limit);
        assert!(page.scanned <= max_scan);
        ids.extend(page.rows.into_iter().map(|row| row.record.request_id));
        match page.older {
            Some(cursor) => before = Some(cursor),
            None => return ids,
        }
    }
    panic!("paging did not end");
}

fn expected(count: u64, filter: &UsageFilter) -> Vec<String> {
    let store = store_with(count);
    let mut all: Vec<UsageRecord> = store
        .usage_for(AccountId::new(1), 0, u64::MAX)
        .map(Result::unwrap)
        .filter(|r| filter.matches(r))
        .collect();
    all.reverse();
    all.into_iter().map(|r| r.request_id).collect()
}

#[test]
fn pages_are_newest_first_and_each_row_comes_once() {
    let store = store_with(237);
    let filter = UsageFilter::default();
    let first = store
        .usage_page(AccountId::new(1), &filter, None, 50, 5_000)
        .unwrap();
    assert_eq!(first.rows.len(), 50);
    assert!(first.rows.windows(2).all(|w| w[0].cursor.0 > w[1].cursor.0));
    assert_eq!(first.rows[0].record.request_id, "req-1-236");
    assert_eq!(first.older, Some(first.rows[49].cursor));
    assert!(!first.stopped_early);
    let ids = all_pages(&store, &filter, 50, 5_000);
    assert_eq!(ids.len(), 237);
    assert_eq!(ids, expected(237, &filter));
    // A page that exactly ends the log offers no older page.
    let store = store_with(100);
    let second = store
        .usage_page(
            AccountId::new(1),
            &filter,
            store
                .usage_page(AccountId::new(1), &filter, None, 50, 5_000)
                .unwrap()
                .older,
            50,
            5_000,
        )
        .unwrap();
    assert_eq!(second.rows.len(), 50);
    assert_eq!(second.older, None);
}

#[test]
fn filters_narrow_by_time_key_model_and_status() {
    let count = 300;
    let filters = [
        UsageFilter {
            from_ms: 1_050_000,
            to_ms: 1_120_000,
            ..UsageFilter::default()
        },
        UsageFilter {
            key: Some(KeyId::new(1)),
            ..UsageFilter::default()
        },
        UsageFilter {
            model: Some("big-2024".to_owned()),
            ..UsageFilter::default()
        },
        UsageFilter {
            model: Some("big".to_owned()),
            status: Some(StatusClass::Ok),
            ..UsageFilter::default()
        },
        UsageFilter {
            status: Some(StatusClass::ServerError),
            ..UsageFilter::default()
        },
        UsageFilter {
            status: Some(StatusClass::Error),
            key: Some(KeyId::new(1)),
            ..UsageFilter::default()
        },
        UsageFilter {
            status: Some(StatusClass::ClientError),
            ..UsageFilter::default()
        },
    ];
    let store = store_with(count);
    for filter in &filters {
        let want = expected(count, filter);
        // Small pages and a small read budget still find every row once.
        for (limit, max_scan) in [(50, 5_000), (7, 20), (1, 3)] {
            assert_eq!(
                all_pages(&store, filter, limit, max_scan),
                want,
                "{filter:?} {limit} {max_scan}"
            );
        }
    }
    assert_eq!(expected(count, &filters[0]).len(), 70);
    assert_eq!(expected(count, &filters[6]).len(), 0);
    assert_eq!(expected(count, &filters[4]).len(), 30);
}

#[test]
fn a_sparse_filter_stops_at_the_budget_and_goes_on_from_there() {
    let store = store_with(1_000);
    let filter = UsageFilter {
        status: Some(StatusClass::ServerError),
        key: Some(KeyId::new(1)),
        ..UsageFilter::default()
    };
    let page = store
        .usage_page(AccountId::new(1), &filter, None, 50, 95)
        .unwrap();
    assert!(page.stopped_early);
    assert_eq!(page.scanned, 95);
    // Every tenth record is a 502, all with odd n: key 1.
    assert_eq!(page.rows.len(), 10);
    let older = page.older.unwrap();
    let next = store
        .usage_page(AccountId::new(1), &filter, Some(older), 50, 95)
        .unwrap();
    assert!(next.rows[0].cursor.0 < older.0);
    assert_eq!(all_pages(&store, &filter, 50, 95).len(), 100);
}

#[test]
fn cursors_round_trip_and_stay_in_their_account() {
    let store = store_with(60);
    let page = store
        .usage_page(AccountId::new(1), &UsageFilter::default(), None, 10, 100)
        .unwrap();
    let cursor = page.older.unwrap();
    let text = cursor.to_text();
    assert_eq!(text.len(), 48);
    assert_eq!(UsageCursor::parse(&text), Some(cursor));
    for bad in [
        "",
        "zz",
        &text[..46],
        &format!("{text}00"),
        &text.replace('0', "g"),
    ] {
        assert_eq!(UsageCursor::parse(bad), None, "{bad}");
    }
    assert_eq!(cursor.account(), AccountId::new(1));
    // Another account's cursor reads nothing, and finds nothing.
    let theirs = store
        .usage_page(
            AccountId::new(2),
            &UsageFilter::default(),
            Some(cursor),
            10,
            100,
        )
        .unwrap();
    assert!(theirs.rows.is_empty() && theirs.older.is_none());
    assert_eq!(store.usage_at(AccountId::new(2), cursor).unwrap(), None);
    let row = &page.rows[3];
    assert_eq!(
        store
            .usage_at(AccountId::new(1), row.cursor)
            .unwrap()
            .as_ref(),
        Some(&row.record)
    );
}

#[test]
fn requests_are_found_by_id_in_their_own_account_only() {
    let store = store_with(60);
    let found = store
        .find_usage(AccountId::new(1), "req-1-17", 1_000)
        .unwrap()
        .unwrap();
    assert_eq!(found.record.request_id, "req-1-17");
    assert_eq!(
        store.usage_at(AccountId::new(1), found.cursor).unwrap(),
        Some(found.record)
    );
    assert_eq!(
        store
            .find_usage(AccountId::new(2), "req-1-17", 1_000)
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_usage(AccountId::new(1), "req-1-1", 1_000)
            .unwrap()
            .unwrap()
            .record
            .request_id,
        "req-1-1"
    );
    assert_eq!(
        store
            .find_usage(AccountId::new(1), "req-1-\"", 1_000)
            .unwrap(),
        None
    );
    // Past the budget it is not found.
    assert_eq!(
        store.find_usage(AccountId::new(1), "req-1-0", 10).unwrap(),
        None
    );
}

#[test]
fn status_classes_parse_from_their_names() {
    for class in StatusClass::ALL {
        assert_eq!(StatusClass::parse(class.as_str()), Some(class));
    }
    assert_eq!(StatusClass::parse("OK"), None);
    assert_eq!(StatusClass::of(&record(1, 0, 7)), StatusClass::ServerError);
    assert_eq!(StatusClass::of(&record(1, 0, 3)), StatusClass::Error);
    assert_eq!(StatusClass::of(&record(1, 0, 1)), StatusClass::Ok);
}

#[test]
fn the_byte_prefilter_never_drops_a_match() {
    assert!(contains(b"{\"key\":12,\"m\":1}", b"\"key\":12", true));
    assert!(!contains(b"{\"key\":123,\"m\":1}", b"\"key\":12", true));
    assert!(contains(b"abcabd", b"abd", false));
    assert!(!contains(b"ab", b"abc", false));
    let store = store_with(200);
    for filter in [
        UsageFilter {
            key: Some(KeyId::new(1)),
            model: Some("big-2024".to_owned()),
            ..UsageFilter::default()
        },
        UsageFilter {
            status: Some(StatusClass::Error),
            ..UsageFilter::default()
        },
    ] {
        let prefilter = Prefilter::of(&filter).unwrap();
        for item in store.trees.usage.iter() {
            let (_, value) = item.unwrap();
            let record: UsageRecord = decode("usage", &value).unwrap();
            if filter.matches(&record) {
                assert!(prefilter.may_match(&value), "{record:?}");
            }
        }
    }
}
