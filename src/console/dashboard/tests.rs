use tokun_storage::AccountId;

use super::*;

fn record(at_ms: u64, model: &str, cost: i64) -> UsageRecord {
    UsageRecord {
        request_id: "r".into(),
        at_ms,
        account: AccountId::new(1),
        key: None,
        model: model.into(),
        served_model: model.into(),
        provider: "p".into(),
        prompt_tokens: 1,
        completion_tokens: 1,
        cost: Nanos::new(cost),
        estimated: false,
        status: 200,
        transport: "sse".into(),
        latency_ms: 1,
        ttft_ms: None,
        error_kind: None,
        cached_tokens: 0,
        route: None,
    }
}

#[test]
fn spend_is_summed_per_utc_day_and_model() {
    let now = 100 * MS_PER_DAY + 5_000;
    let records = [
        record(100 * MS_PER_DAY + 1, "a", 10),
        record(100 * MS_PER_DAY + 2, "b", 5),
        record(95 * MS_PER_DAY, "a", 7),
        record(80 * MS_PER_DAY, "b", 100),
        // Outside the 30 days: not counted.
        record(70 * MS_PER_DAY, "a", 1_000),
    ];
    let spend = Spend::from_usage(&records, now);
    assert_eq!(spend.first_day, 71);
    assert_eq!(spend.series, ["b", "a"]);
    assert_eq!(spend.today, Nanos::new(15));
    assert_eq!(spend.week, Nanos::new(22));
    assert_eq!(spend.month, Nanos::new(122));
    assert_eq!(spend.by_day[29], [Nanos::new(5), Nanos::new(10)]);
    assert_eq!(spend.requests[29], 2);
    assert_eq!(spend.requests.iter().sum::<u64>(), 4);
}

#[test]
fn models_past_the_fifth_are_other() {
    let now = 50 * MS_PER_DAY;
    let records: Vec<UsageRecord> = (0..7)
        .map(|i| record(now, &format!("m{i}"), 100 - i))
        .collect();
    let spend = Spend::from_usage(&records, now);
    assert_eq!(spend.series, ["m0", "m1", "m2", "m3", "m4", "other"]);
    assert_eq!(spend.by_day[29][5], Nanos::new(94 + 95));
    assert_eq!(spend.today, Nanos::new((94..=100).sum()));
}

#[test]
fn runway_uses_integer_days_at_the_weekly_average() {
    assert_eq!(
        runway(Nanos::new(700), Nanos::new(70)),
        "≈ 70 days at your 7-day average"
    );
    assert_eq!(
        runway(Nanos::new(10), Nanos::new(70)),
        "≈ 1 day at your 7-day average"
    );
    assert_eq!(
        runway(Nanos::new(5), Nanos::new(70)),
        "Less than a day at your 7-day average"
    );
    assert_eq!(
        runway(Nanos::new(5), Nanos::ZERO),
        "No spend in the last 7 days"
    );
    assert_eq!(runway(Nanos::ZERO, Nanos::new(7)), "No credit left");
    assert_eq!(
        runway(Nanos::new(1_000_000), Nanos::new(7)),
        "More than 10 years at your 7-day average"
    );
}

#[test]
fn the_chart_draws_one_bar_segment_per_day_and_model() {
    let now = 100 * MS_PER_DAY;
    let records = [record(now, "a<script>", 10), record(now, "b", 5)];
    let svg = chart(&Spend::from_usage(&records, now)).into_string();
    assert_eq!(svg.matches("<rect").count(), 2);
    assert!(svg.contains("role=\"img\""));
    assert!(svg.contains("a&lt;script&gt;"));
    assert!(!svg.contains("a<script>"));
}
