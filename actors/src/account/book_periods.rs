//! The key spend limit's periods: a daily limit starts over at 00:00 UTC, a
//! monthly one on the first of the month, a total one never; what is held
//! when a period ends carries over. `now` is injected, so a day passes in a
//! line.

use tokun_storage::{AccountId, Books, EntryKind, HoldId, KeyId, LimitReset, Nanos, Price};

use super::{AccountBook, AccountError, KeyLimit, ReserveRequest};

const DAY: u64 = 86_400_000;
/// 2024-02-29 10:00 UTC: a leap day, the month's last.
const LEAP_DAY_10H: u64 = 1_709_200_800_000;

fn price() -> Price {
    // $1 per million tokens in and out: one token is 1,000 nanos.
    Price::per_million(
        Nanos::new(1_000_000_000),
        Nanos::new(1_000_000_000),
        Nanos::ZERO,
    )
    .unwrap()
}

fn book() -> AccountBook {
    let mut book = AccountBook::new(AccountId::new(1), Nanos::ZERO, Books::ZERO);
    book.transfer(EntryKind::Topup, Nanos::new(1_000_000_000), "t", 0)
        .unwrap();
    book
}

/// A request of 100 prompt tokens and up to 100 output tokens: $0.0002 at most.
fn request(reset: LimitReset) -> ReserveRequest {
    ReserveRequest {
        request_id: "r".into(),
        key: Some(KeyId::new(7)),
        key_limit: Some(KeyLimit {
            amount: Nanos::new(250_000),
            reset,
        }),
        price: price(),
        prompt_tokens: 100,
        increment_tokens: 100,
        max_output_tokens: 100,
        checkpoint: None,
    }
}

/// Reserves and settles the whole hold at `now`; returns the cost.
fn spend(
    book: &mut AccountBook,
    hold: u64,
    reset: LimitReset,
    now: u64,
) -> Result<Nanos, AccountError> {
    let (reservation, _) = book.reserve(HoldId::new(hold), &request(reset), now)?;
    let (settled, _) = book.settle(
        HoldId::new(hold),
        (100, 0, reservation.allowance_tokens),
        false,
        EntryKind::Settle,
        now,
    )?;
    Ok(settled.cost)
}

#[test]
fn a_daily_limit_starts_over_at_utc_midnight() {
    let mut book = book();
    // Seeded at start with what the key spent today: $0.0002 of $0.00025.
    let today = LimitReset::Daily.period_start_ms(LEAP_DAY_10H);
    book.set_key_spent(KeyId::new(7), Nanos::new(200_000), today);
    let refused = spend(&mut book, 1, LimitReset::Daily, LEAP_DAY_10H).unwrap_err();
    assert!(matches!(refused, AccountError::KeyLimit { .. }));
    // A millisecond before midnight it is still today.
    let last_ms = today + DAY - 1;
    assert!(spend(&mut book, 2, LimitReset::Daily, last_ms).is_err());
    // At midnight the count starts over: the key spends again.
    let tomorrow = today + DAY;
    assert_eq!(book.key_committed(KeyId::new(7)), Nanos::new(200_000));
    let cost = spend(&mut book, 3, LimitReset::Daily, tomorrow).unwrap();
    assert!(cost.get() > 0);
    assert_eq!(book.key_committed(KeyId::new(7)), cost);
}

#[test]
fn a_monthly_limit_starts_over_on_the_first() {
    let mut book = book();
    let month = LimitReset::Monthly.period_start_ms(LEAP_DAY_10H);
    book.set_key_spent(KeyId::new(7), Nanos::new(240_000), month);
    // The next day is March 1st: a new month.
    assert!(spend(&mut book, 1, LimitReset::Monthly, LEAP_DAY_10H).is_err());
    let march = LimitReset::Daily.period_start_ms(LEAP_DAY_10H) + DAY;
    assert_eq!(LimitReset::Monthly.period_start_ms(march), march);
    assert!(spend(&mut book, 2, LimitReset::Monthly, march).is_ok());
    // A day later is the same month: nothing starts over.
    let committed = book.key_committed(KeyId::new(7));
    assert!(spend(&mut book, 3, LimitReset::Monthly, march + DAY).is_ok());
    assert!(book.key_committed(KeyId::new(7)) > committed);
}

#[test]
fn a_total_limit_never_starts_over() {
    let mut book = book();
    book.set_key_spent(KeyId::new(7), Nanos::new(240_000), 0);
    for (hold, now) in [(1, LEAP_DAY_10H), (2, LEAP_DAY_10H + 40 * DAY)] {
        let refused = spend(&mut book, hold, LimitReset::Total, now).unwrap_err();
        assert!(matches!(refused, AccountError::KeyLimit { .. }));
    }
}

#[test]
fn a_hold_open_at_midnight_counts_in_the_new_day() {
    let mut book = book();
    let today = LimitReset::Daily.period_start_ms(LEAP_DAY_10H);
    let (reservation, _) = book
        .reserve(HoldId::new(1), &request(LimitReset::Daily), today + DAY - 5)
        .unwrap();
    // The next request, after midnight, sees the open hold and nothing else.
    book.reserve(HoldId::new(2), &request(LimitReset::Daily), today + DAY)
        .unwrap();
    let held_first = reservation.amount;
    assert!(book.key_committed(KeyId::new(7)) > held_first);
    book.release(HoldId::new(2), today + DAY).unwrap();
    assert_eq!(book.key_committed(KeyId::new(7)), held_first);
    // Settled after midnight, the first request's cost is today's spend.
    let (settled, _) = book
        .settle(
            HoldId::new(1),
            (100, 0, 10),
            false,
            EntryKind::Settle,
            today + DAY,
        )
        .unwrap();
    assert_eq!(book.key_committed(KeyId::new(7)), settled.cost);
}
