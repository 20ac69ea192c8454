use super::*;
use crate::codec::encode;
use crate::ids::KeyId;
use crate::records::UsageRecord;

const DAY: u64 = MS_PER_DAY;

/// Stores a record and hands it to the feed, as the writer does.
fn put(store: &Store, account: u64, at_ms: u64, unique: u64, model: &str, cost: i64) {
    insert(store, account, at_ms, unique, model, cost);
    feed(store, account, at_ms, unique, model, cost);
}

fn feed(store: &Store, account: u64, at_ms: u64, unique: u64, model: &str, cost: i64) {
    let item = crate::feed::UsageItem {
        key: usage_key(account, at_ms, unique),
        at_ms,
        model: model.to_owned(),
        cost: Nanos::new(cost),
    };
    store.feeds().usage.push([(AccountId::new(account), item)]);
}

fn insert(store: &Store, account: u64, at_ms: u64, unique: u64, model: &str, cost: i64) {
    let record = UsageRecord {
        request_id: format!("req-{unique}"),
        at_ms,
        account: AccountId::new(account),
        key: Some(KeyId::new(1)),
        model: model.to_owned(),
        served_model: model.to_owned(),
        provider: "echo".to_owned(),
        prompt_tokens: 1,
        completion_tokens: 2,
        cost: Nanos::new(cost),
        estimated: false,
        status: 200,
        transport: "http".to_owned(),
        latency_ms: 5,
        ttft_ms: None,
        error_kind: None,
        cached_tokens: 0,
        route: None,
    };
    store
        .trees
        .usage
        .insert(
            usage_key(account, at_ms, unique),
            encode("usage", &record).unwrap(),
        )
        .unwrap();
}

/// The same sums from a full scan of every record.
fn naive(store: &Store, account: u64, first_day: u64) -> DailySpend {
    let mut spend = DailySpend {
        first_day,
        days: BTreeMap::new(),
    };
    for record in store.usage_for(AccountId::new(account), first_day * DAY, u64::MAX) {
        let record = record.unwrap();
        let day = spend.days.entry(record.at_ms / DAY).or_default();
        let cost = day.by_model.entry(record.model).or_default();
        *cost = cost.saturating_add(record.cost);
        day.requests += 1;
    }
    spend
}

#[test]
fn sums_equal_a_full_scan_as_records_arrive() {
    let store = Store::temporary().unwrap();
    let first_day = 100;
    let mut now = 129 * DAY + 10_000;
    // Old records (one before the window), then some today.
    put(&store, 1, 99 * DAY + 5, 1, "a", 1_000);
    for n in 0..50u64 {
        let model = if n % 3 == 0 { "a" } else { "b" };
        put(
            &store,
            1,
            100 * DAY + n * 3_600_000,
            10 + n,
            model,
            7 + n as i64,
        );
    }
    put(&store, 2, 129 * DAY, 500, "a", 99);
    let account = AccountId::new(1);
    assert_eq!(
        store.daily_spend(account, first_day, now).unwrap(),
        naive(&store, 1, first_day)
    );
    // New records, one of them dated before the last read (but within LATE_MS).
    now += 200;
    put(&store, 1, now - 50, 1_000, "c", 3);
    assert_eq!(
        store.daily_spend(account, first_day, now).unwrap(),
        naive(&store, 1, first_day)
    );
    put(&store, 1, now - LATE_MS / 2, 1_001, "c", 4);
    put(&store, 1, now + 10, 1_002, "a", 5);
    now += 20;
    let spend = store.daily_spend(account, first_day, now).unwrap();
    assert_eq!(spend, naive(&store, 1, first_day));
    // Read again with nothing new: the same, nothing counted twice.
    now += 5_000;
    assert_eq!(store.daily_spend(account, first_day, now).unwrap(), spend);
    assert_eq!(spend.days[&129].by_model["c"], Nanos::new(7));
    // The window moves a day on: scanned afresh from the new first day.
    let moved = store
        .daily_spend(account, first_day + 1, now + DAY)
        .unwrap();
    assert_eq!(moved, naive(&store, 1, first_day + 1));
    assert!(!moved.days.contains_key(&100));
}

#[test]
fn a_record_both_scanned_and_fed_counts_once() {
    let store = Store::temporary().unwrap();
    let account = AccountId::new(1);
    let now = 100 * DAY + 500_000;
    put(&store, 1, now - 60_000, 1, "a", 10);
    assert_eq!(
        store.daily_spend(account, 100, now).unwrap(),
        naive(&store, 1, 100)
    );
    // A record written while a read scanned: the scan saw it in the tree,
    // and the writer's feed brings it after.
    store.feeds().usage.unsubscribe(account);
    insert(&store, 1, now + 5, 2, "a", 20);
    assert_eq!(
        store.daily_spend(account, 100, now + 10).unwrap(),
        naive(&store, 1, 100)
    );
    feed(&store, 1, now + 5, 2, "a", 20);
    let once = store.daily_spend(account, 100, now + 20).unwrap();
    assert_eq!(once, naive(&store, 1, 100));
    assert_eq!(once.days[&100].requests, 2);
    // Then records arrive through the feed alone.
    put(&store, 1, now + 30, 3, "b", 30);
    let fed = store.daily_spend(account, 100, now + 40).unwrap();
    assert_eq!(fed, naive(&store, 1, 100));
    assert_eq!(fed.days[&100].requests, 3);
}

#[test]
fn two_stores_with_the_same_account_do_not_share_sums() {
    let one = Store::temporary().unwrap();
    let two = Store::temporary().unwrap();
    put(&one, 1, 100 * DAY, 1, "a", 10);
    put(&two, 1, 100 * DAY, 1, "a", 20);
    let now = 100 * DAY + 5_000;
    let a = one.daily_spend(AccountId::new(1), 100, now).unwrap();
    let b = two.daily_spend(AccountId::new(1), 100, now).unwrap();
    assert_eq!(a.days[&100].by_model["a"], Nanos::new(10));
    assert_eq!(b.days[&100].by_model["a"], Nanos::new(20));
}

/// Timings at 10,000 records (release: `cargo test --release -p tokun-storage
/// --lib usage_daily -- --ignored --nocapture`).
#[test]
#[ignore = "a timing, not a check"]
fn timings_at_ten_thousand_records() {
    let store = Store::temporary().unwrap();
    let now = 129 * DAY + 50_000_000;
    for n in 0..10_000u64 {
        let model = if n % 10 == 9 { "b" } else { "a" };
        put(
            &store,
            1,
            now - 10_000_000 + n * 100,
            n,
            model,
            1_000 + n as i64,
        );
    }
    let time = |what: &str, f: &mut dyn FnMut()| {
        let mut runs = Vec::new();
        for _ in 0..20 {
            let start = std::time::Instant::now();
            f();
            runs.push(start.elapsed());
        }
        runs.sort();
        println!(
            "{what}: min {:?} median {:?} max {:?}",
            runs[0], runs[10], runs[19]
        );
    };
    time("usage_for, 10,000 records decoded", &mut || {
        let n = store
            .usage_for(AccountId::new(1), 100 * DAY, u64::MAX)
            .count();
        assert_eq!(n, 10_000);
    });
    let first = std::time::Instant::now();
    store
        .daily_spend(AccountId::new(1), 100, now + 5_000)
        .unwrap();
    println!("daily_spend, first (full scan): {:?}", first.elapsed());
    time("daily_spend, nothing new", &mut || {
        store
            .daily_spend(AccountId::new(1), 100, now + 5_000)
            .unwrap();
    });
    time("latest_usage(10)", &mut || {
        assert_eq!(store.latest_usage(AccountId::new(1), 10).unwrap().len(), 10);
    });
}
