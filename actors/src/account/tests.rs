//! Property tests of the account book: any interleaving of reserve, extend,
//! settle, release, recover and transfers keeps the money exact. Every
//! entry the book emits goes through the real group-commit writer into a
//! temporary sled store, and `verify` must find nothing wrong.

use proptest::prelude::*;
use tokun_storage::{
    AccountRecord, Books, EntryKind, HoldId, KeyId, LedgerWriter, Nanos, Price, Store, WriteOp,
    WriterConfig,
};

use super::book::{AccountBook, AccountError, KeyLimit, ReserveRequest};

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        prompt: u64,
        max_output: u64,
        increment: u64,
        key: bool,
    },
    Extend(usize),
    Settle {
        hold: usize,
        prompt: u64,
        completion: u64,
        estimated: bool,
    },
    Release(usize),
    Recover {
        hold: usize,
        checkpoint: Option<(u64, u64)>,
    },
    Topup(i64),
    Debit(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..5_000, 1u64..5_000, 1u64..600, any::<bool>())
            .prop_map(|(prompt, max_output, increment, key)| Op::Reserve { prompt, max_output, increment, key }),
        2 => (0usize..8).prop_map(Op::Extend),
        3 => (0usize..8, 0u64..6_000, 0u64..6_000, any::<bool>())
            .prop_map(|(hold, prompt, completion, estimated)| Op::Settle { hold, prompt, completion, estimated }),
        1 => (0usize..8).prop_map(Op::Release),
        1 => (0usize..8, proptest::option::of((0u64..3_000, 0u64..3_000)))
            .prop_map(|(hold, checkpoint)| Op::Recover { hold, checkpoint }),
        1 => (1i64..50_000_000).prop_map(Op::Topup),
        1 => (1i64..50_000_000).prop_map(Op::Debit),
    ]
}

fn price() -> Price {
    // $2.50 / $10 per million tokens, cached at $1.25.
    Price::per_million(
        Nanos::new(2_500_000_000),
        Nanos::new(10_000_000_000),
        Nanos::new(1_250_000_000),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_interleaving_keeps_the_ledger_exact(initial in 0i64..100_000_000, ops in proptest::collection::vec(op(), 1..60)) {
        let store = Store::temporary().unwrap();
        let (writer, thread) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
        let account = store.next_account_id().unwrap();
        let record = AccountRecord { id: account, email: "p@example.com".into(), created_ms: 0, disabled: false, floor: Nanos::ZERO, deleted_ms: None };
        writer.submit_wait(vec![WriteOp::PutAccount(record)]).unwrap();
        let mut book = AccountBook::new(account, Nanos::ZERO, Books::ZERO);
        let mut ops_out = vec![WriteOp::Entry(book.transfer(EntryKind::Topup, Nanos::new(initial.max(1)), "initial", 1).unwrap())];
        let mut holds: Vec<HoldId> = Vec::new();
        let mut next_hold = 1;
        for (i, op) in ops.into_iter().enumerate() {
            let now = 2 + i as u64;
            let pick = |n: usize| holds.get(n % holds.len().max(1)).copied();
            let entries = match op {
                Op::Reserve { prompt, max_output, increment, key } => {
                    let hold = HoldId::new(next_hold);
                    next_hold += 1;
                    let request = ReserveRequest {
                        request_id: format!("r{i}"),
                        key: key.then(|| KeyId::new(1)),
                        key_limit: key.then_some(KeyLimit {
                            amount: Nanos::new(30_000_000),
                            reset: tokun_storage::LimitReset::Total,
                        }),
                        price: price(),
                        prompt_tokens: prompt,
                        increment_tokens: increment,
                        max_output_tokens: max_output,
                        checkpoint: None,
                    };
                    let spendable_before = book.spendable();
                    match book.reserve(hold, &request, now) {
                        Ok((reservation, entry)) => {
                            prop_assert!(reservation.amount <= spendable_before, "a hold never exceeds what is spendable");
                            prop_assert_eq!(book.spendable(), spendable_before.saturating_sub(reservation.amount));
                            prop_assert!(reservation.max_tokens <= max_output);
                            holds.push(hold);
                            vec![entry]
                        }
                        Err(AccountError::Insufficient { .. } | AccountError::KeyLimit { .. }) => vec![],
                        Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
                    }
                }
                Op::Extend(n) => match pick(n).map(|h| book.extend(h, now)) {
                    Some(Ok((_, entry))) => vec![entry],
                    _ => vec![],
                },
                Op::Settle { hold, prompt, completion, estimated } => match pick(hold) {
                    Some(h) => {
                        holds.retain(|x| *x != h);
                        let (settled, entries) = book.settle(h, (prompt, prompt / 4, completion), estimated, EntryKind::Settle, now).unwrap();
                        prop_assert!(settled.cost.get() >= 0 && settled.shortfall.get() >= 0);
                        entries
                    }
                    None => vec![],
                },
                Op::Release(n) => match pick(n) {
                    Some(h) => {
                        holds.retain(|x| *x != h);
                        vec![book.release(h, now).unwrap()]
                    }
                    None => vec![],
                },
                Op::Recover { hold, checkpoint } => match pick(hold) {
                    Some(h) => {
                        holds.retain(|x| *x != h);
                        book.recover(h, checkpoint, now).unwrap().1
                    }
                    None => vec![],
                },
                Op::Topup(n) => vec![book.transfer(EntryKind::Topup, Nanos::new(n), "topup", now).unwrap()],
                Op::Debit(n) => book.transfer(EntryKind::Adjustment, Nanos::new(-n), "debit", now).into_iter().collect(),
            };
            // The floor holds after every step.
            prop_assert!(book.books().available() >= Nanos::ZERO);
            prop_assert!(book.books().held >= Nanos::ZERO);
            ops_out.extend(entries.into_iter().map(WriteOp::Entry));
        }
        for h in holds.drain(..) {
            ops_out.push(WriteOp::Entry(book.release(h, 10_000).unwrap()));
        }
        prop_assert_eq!(book.books().held, Nanos::ZERO);
        writer.submit_wait(ops_out).unwrap();
        writer.close();
        thread.join().unwrap();
        let report = store.verify().unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
        prop_assert_eq!(store.books(account).unwrap(), book.books());
        prop_assert_eq!(report.open_holds, 0);
    }
}

#[test]
fn reserve_caps_max_tokens_to_what_the_balance_affords() {
    let mut book = AccountBook::new(tokun_storage::AccountId::new(1), Nanos::ZERO, Books::ZERO);
    book.transfer(EntryKind::Topup, Nanos::new(1_000_000), "t", 0)
        .unwrap();
    let request = ReserveRequest {
        request_id: "r".into(),
        key: None,
        key_limit: None,
        price: price(),
        prompt_tokens: 100,
        increment_tokens: 10_000,
        max_output_tokens: 10_000,
        checkpoint: None,
    };
    // $0.001 − 100 × $2.5/M = $0.00075 → 75 output tokens at $10/M.
    let (reservation, _) = book.reserve(HoldId::new(1), &request, 1).unwrap();
    assert_eq!(reservation.max_tokens, 75);
    assert_eq!(reservation.amount, Nanos::new(1_000_000));
    assert_eq!(book.spendable(), Nanos::ZERO);
    let refused = book.reserve(HoldId::new(2), &request, 2).unwrap_err();
    assert!(matches!(refused, AccountError::Insufficient { .. }));
    // Settling at the exact usage returns the unused part.
    let (settled, entries) = book
        .settle(HoldId::new(1), (100, 0, 10), false, EntryKind::Settle, 3)
        .unwrap();
    assert_eq!(settled.cost, Nanos::new(350_000));
    assert_eq!(
        entries.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EntryKind::Settle, EntryKind::Release]
    );
    assert_eq!(
        book.books(),
        Books {
            balance: Nanos::new(650_000),
            held: Nanos::ZERO
        }
    );
}
