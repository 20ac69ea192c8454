//! Periods add up to the nano and chain, whatever the entries; the walk
//! newest first pages by seq; the alert flag flips once.

use super::*;
use crate::ids::HoldId;
use crate::ledger::{EntryKind, apply};
use crate::ops::{NewEntry, WriteOp};
use crate::price::Price;
use crate::records::AccountRecord;
use crate::writer::{LedgerWriter, WriterConfig};

const DAY: u64 = 86_400_000;
const ANN: AccountId = AccountId::new(1);
const BOB: AccountId = AccountId::new(2);

fn record(id: AccountId) -> AccountRecord {
    AccountRecord {
        id,
        email: format!("{id}@example.com"),
        created_ms: 0,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    }
}

/// Ann: topups, settled and released holds, an adjustment each way and a
/// refund, spread over days 1 to 9; Bob's entries interleaved.
fn store() -> Store {
    store_with(|_| {})
}

/// [`store`], with `before` run on the empty store before anything is written.
fn store_with(before: impl FnOnce(&Store)) -> Store {
    let store = Store::temporary().unwrap();
    before(&store);
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    writer
        .submit_wait(vec![
            WriteOp::PutAccount(record(ANN)),
            WriteOp::PutAccount(record(BOB)),
        ])
        .unwrap();
    let mut books = [Books::ZERO, Books::ZERO];
    let mut hold = 0;
    let mut step = |at_ms: u64, account: AccountId, kind: EntryKind, amount: i64| {
        let i = (account.get() - 1) as usize;
        books[i] = apply(books[i], kind, Nanos::new(amount)).unwrap();
        let mut entry = NewEntry::new(at_ms, account, kind, Nanos::new(amount), books[i]);
        if kind == EntryKind::Hold {
            hold += 1;
            entry = entry.with_price(Price::default());
        }
        if kind.needs_hold() {
            entry = entry.with_hold(HoldId::new(hold));
        }
        writer.submit_wait(vec![WriteOp::Entry(entry)]).unwrap();
    };
    for day in 1..10u64 {
        let at = day * DAY + 1_000;
        step(at, ANN, EntryKind::Topup, 1_000_000_007 * day as i64);
        step(at + 1, BOB, EntryKind::Topup, 5);
        step(at + 2, ANN, EntryKind::Hold, 300_000_000);
        step(at + 3, ANN, EntryKind::Extend, 11);
        step(at + 4, ANN, EntryKind::Settle, 123_456_789);
        step(at + 5, ANN, EntryKind::Release, 176_543_222);
        if day % 3 == 0 {
            step(at + 6, ANN, EntryKind::Adjustment, -77);
            step(at + 7, ANN, EntryKind::Adjustment, 1_500_000_000);
            step(at + 8, ANN, EntryKind::Refund, 99);
        }
        // One at the very end of the day: still this day.
        step((day + 1) * DAY - 1, ANN, EntryKind::Topup, 1);
    }
    writer.close();
    join.join().unwrap();
    store
}

#[test]
fn periods_add_up_to_the_nano_and_chain() {
    let store = store();
    let mut previous: Option<Books> = None;
    let mut seen = 0;
    for day in 0..12u64 {
        let mut sum = Change::ZERO;
        let mut kinds = Vec::new();
        let period = store
            .period(ANN, day * DAY, (day + 1) * DAY, |entry, change| {
                assert_eq!(entry.account, ANN);
                assert!(entry.at_ms >= day * DAY && entry.at_ms < (day + 1) * DAY);
                sum = sum.checked_add(change).unwrap();
                kinds.push(entry.kind);
            })
            .unwrap();
        assert_eq!(period.entries, kinds.len());
        seen += kinds.len();
        let closing = Books {
            balance: period.opening.balance.checked_add(sum.balance).unwrap(),
            held: period.opening.held.checked_add(sum.held).unwrap(),
        };
        assert_eq!(closing, period.closing, "day {day}");
        match previous {
            Some(previous) => assert_eq!(previous, period.opening, "day {day} chains"),
            None => assert_eq!(period.opening, Books::ZERO),
        }
        previous = Some(period.closing);
    }
    assert_eq!(
        previous,
        Some(store.books(ANN).unwrap()),
        "ends at the stored books"
    );
    let all = store.entries_for(ANN, 0).count();
    assert_eq!(seen, all, "every entry is in exactly one day");
}

#[test]
fn each_change_is_what_apply_says_the_entry_does() {
    let store = store();
    store
        .period(ANN, 0, u64::MAX, |entry, change| {
            let after = entry.books_after();
            let before = Books {
                balance: after.balance.checked_sub(change.balance).unwrap(),
                held: after.held.checked_sub(change.held).unwrap(),
            };
            assert_eq!(apply(before, entry.kind, entry.amount).unwrap(), after);
        })
        .unwrap();
}

#[test]
fn entries_come_newest_first_from_a_seq() {
    let store = store();
    let all: Vec<u64> = store
        .entries_newest_first(ANN, u64::MAX)
        .map(|e| e.unwrap().seq)
        .collect();
    let mut forward: Vec<u64> = store.entries_for(ANN, 0).map(|e| e.unwrap().seq).collect();
    forward.reverse();
    assert_eq!(all, forward);
    let middle = all[all.len() / 2];
    let older: Vec<u64> = store
        .entries_newest_first(ANN, middle)
        .map(|e| e.unwrap().seq)
        .collect();
    assert_eq!(older, all[all.len() / 2 + 1..].to_vec());
    assert_eq!(
        store
            .entries_newest_first(AccountId::new(9), u64::MAX)
            .count(),
        0
    );
}

#[test]
fn an_alert_flag_flips_once() {
    let store = store();
    assert!(store.low_balance_watches().unwrap().is_empty());
    assert!(
        !store.set_low_balance_alerted(ANN, true).unwrap(),
        "no profile, no alert"
    );
    let profile = Profile {
        low_balance: Some(Nanos::new(5)),
        ..Profile::default()
    };
    store.put_profile(ANN, &profile).unwrap();
    store.put_profile(BOB, &Profile::default()).unwrap();
    let watches = store.low_balance_watches().unwrap();
    assert_eq!(
        watches,
        vec![AlertWatch {
            account: ANN,
            threshold: Nanos::new(5),
            alerted: false
        }]
    );
    assert!(store.set_low_balance_alerted(ANN, true).unwrap());
    assert!(
        !store.set_low_balance_alerted(ANN, true).unwrap(),
        "only once"
    );
    assert!(store.profile(ANN).unwrap().low_balance_alerted);
    assert!(store.set_low_balance_alerted(ANN, false).unwrap());
    assert_eq!(store.profile(ANN).unwrap().low_balance, Some(Nanos::new(5)));
}

#[test]
fn the_writer_feeds_each_durable_entry_of_a_followed_account_once_in_order() {
    let store = store_with(|store| store.feeds().entries.subscribe(ANN));
    let crate::feed::Taken::Items(fed) = store.feeds().entries.take(ANN) else {
        panic!("Ann is followed");
    };
    let mut stored: Vec<LedgerEntry> = store
        .entries_newest_first(ANN, u64::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    stored.reverse();
    assert_eq!(fed, stored);
    // Bob is not followed; Ann's queue is empty once taken.
    assert_eq!(store.feeds().entries.take(BOB), crate::feed::Taken::Lost);
    assert_eq!(
        store.feeds().entries.take(ANN),
        crate::feed::Taken::Items(Vec::new())
    );
}
