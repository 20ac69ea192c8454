//! Unit tests of `apply` and the postings; the interleaving properties are in
//! `tests/ledger_props.rs`.

use proptest::prelude::*;

use super::*;

fn books(balance: i64, held: i64) -> Books {
    Books {
        balance: Nanos::new(balance),
        held: Nanos::new(held),
    }
}

fn entry(kind: EntryKind, amount: i64) -> LedgerEntry {
    LedgerEntry {
        seq: 1,
        at_ms: 0,
        account: AccountId::new(1),
        kind,
        amount: Nanos::new(amount),
        hold: None,
        request_id: None,
        reference: None,
        estimated: false,
        balance_after: Nanos::ZERO,
        held_after: Nanos::ZERO,
    }
}

#[test]
fn each_kind_moves_the_right_book() {
    let start = books(100, 30);
    let cases = [
        (EntryKind::Topup, 10, books(110, 30)),
        (EntryKind::Adjustment, -10, books(90, 30)),
        (EntryKind::Refund, 10, books(90, 30)),
        (EntryKind::Hold, 10, books(100, 40)),
        (EntryKind::Extend, 10, books(100, 40)),
        (EntryKind::Settle, 10, books(90, 20)),
        (EntryKind::Recovered, 10, books(90, 20)),
        (EntryKind::Release, 10, books(100, 20)),
    ];
    for (kind, amount, expected) in cases {
        assert_eq!(
            apply(start, kind, Nanos::new(amount)),
            Ok(expected),
            "{kind:?}"
        );
    }
}

#[test]
fn refuses_negative_amounts_except_adjustments() {
    for kind in EntryKind::ALL {
        let result = apply(books(100, 30), kind, Nanos::new(-1));
        assert_eq!(result.is_ok(), kind == EntryKind::Adjustment, "{kind:?}");
    }
}

#[test]
fn refuses_taking_more_than_is_held() {
    for kind in [EntryKind::Settle, EntryKind::Release, EntryKind::Recovered] {
        assert_eq!(
            apply(books(100, 30), kind, Nanos::new(31)),
            Err(LedgerError::HeldNegative {
                kind,
                held: Nanos::new(-1)
            })
        );
    }
}

#[test]
fn refuses_overflow() {
    let full = books(i64::MAX, 0);
    assert!(matches!(
        apply(full, EntryKind::Topup, Nanos::new(1)),
        Err(LedgerError::Overflow { .. })
    ));
    assert!(matches!(
        apply(books(0, 0), EntryKind::Adjustment, Nanos::new(i64::MIN)),
        Err(LedgerError::Overflow { .. })
    ));
    // A state whose `available` would not fit is refused too.
    assert!(apply(books(i64::MIN + 5, 0), EntryKind::Hold, Nanos::new(10)).is_err());
}

#[test]
fn floor_refuses_only_entries_that_lower_available() {
    let start = books(100, 30);
    let floor = Nanos::ZERO;
    assert!(apply_within_floor(start, EntryKind::Hold, Nanos::new(70), floor).is_ok());
    assert_eq!(
        apply_within_floor(start, EntryKind::Hold, Nanos::new(71), floor),
        Err(LedgerError::BelowFloor {
            kind: EntryKind::Hold,
            available: Nanos::new(-1),
            floor
        })
    );
    // A postpaid account with a floor of −50 may reserve into its credit line.
    assert!(apply_within_floor(start, EntryKind::Hold, Nanos::new(120), Nanos::new(-50)).is_ok());
    // An account already below its floor may still settle, release and top up.
    let under = books(-20, 10);
    for kind in [EntryKind::Settle, EntryKind::Release, EntryKind::Topup] {
        assert!(
            apply_within_floor(under, kind, Nanos::new(5), floor).is_ok(),
            "{kind:?}"
        );
    }
    assert!(apply_within_floor(under, EntryKind::Refund, Nanos::new(1), floor).is_err());
}

#[test]
fn kind_names_match_serde() {
    for kind in EntryKind::ALL {
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
    }
}

#[test]
fn postings_of_a_topup_come_from_outside() {
    let posted = entry(EntryKind::Topup, 5).postings();
    assert_eq!(
        posted,
        [
            (Book::External, -5),
            (Book::Available(AccountId::new(1)), 5)
        ]
    );
}

fn kinds() -> impl Strategy<Value = EntryKind> {
    prop::sample::select(EntryKind::ALL.to_vec())
}

proptest! {
    /// The postings and `apply` are written separately; they must agree on
    /// how each kind moves the available and held books.
    #[test]
    fn postings_agree_with_apply(
        balance in -1_000_000i64..1_000_000,
        held in 0i64..1_000_000,
        kind in kinds(),
        amount in -1_000_000i64..1_000_000,
    ) {
        let before = books(balance, held);
        if let Ok(after) = apply(before, kind, Nanos::new(amount)) {
            let posted = entry(kind, amount).postings();
            prop_assert_eq!(posted[0].1 + posted[1].1, 0);
            let moved = |book: Book| -> i64 {
                posted.iter().filter(|(b, _)| *b == book).map(|(_, n)| n).sum()
            };
            let account = AccountId::new(1);
            prop_assert_eq!(
                after.available().get() - before.available().get(),
                moved(Book::Available(account))
            );
            prop_assert_eq!(after.held.get() - before.held.get(), moved(Book::Held(account)));
        }
    }
}
