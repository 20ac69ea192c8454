//! Retention's ledger pruning through the real writer and a real sled
//! store: the oldest entries go in batches of at most `PRUNE_BATCH`, never
//! through an open hold, only as far as the cutoff; `verify` stays clean
//! from the checkpoint (books, revenue, money in, Stripe payments), the
//! balances do not move, `export_jsonl` holds exactly the entries left, and
//! all of it survives reopening the store. A property test prunes at
//! random points of random ledgers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::collections::BTreeMap;

use common::{Action, Sim, TempDir};
use proptest::prelude::*;
use tokun_storage::{
    AccountId, Books, EntryKind, HoldId, LedgerWriter, Nanos, NewEntry, PRUNE_BATCH, PaymentRecord,
    PaymentStatus, Price, Store, VerifyReport, WriteOp, WriterConfig, WriterHandle,
};

/// A writer with no batching delay, so each submission is its own batch.
fn start_writer(store: &Store) -> (WriterHandle, std::thread::JoinHandle<()>) {
    let config = WriterConfig {
        max_batch_delay: std::time::Duration::ZERO,
        ..WriterConfig::default()
    };
    LedgerWriter::start(store.clone(), config).unwrap()
}

/// Prunes everything older than `cutoff_ms` the way the retention sweeper
/// does (one bounded batch at a time); returns the prunes that moved.
fn prune_all(store: &Store, writer: &WriterHandle, cutoff_ms: u64) -> usize {
    let mut moved = 0;
    while let Some(target) = store.prune_target(cutoff_ms).unwrap() {
        let before = store.ledger_checkpoint().unwrap().unwrap_or_default();
        writer
            .submit_wait(vec![WriteOp::PruneLedger {
                through_seq: target,
            }])
            .unwrap();
        let after = store.ledger_checkpoint().unwrap().unwrap_or_default();
        assert!(after.through_seq - before.through_seq <= PRUNE_BATCH);
        if after == before {
            break;
        }
        moved += 1;
    }
    moved
}

fn books_of(store: &Store, accounts: &[AccountId]) -> BTreeMap<AccountId, Books> {
    accounts
        .iter()
        .map(|id| (*id, store.books(*id).unwrap()))
        .collect()
}

fn exported_seqs(store: &Store) -> Vec<u64> {
    let mut out = Vec::new();
    let count = store.export_jsonl(&mut out).unwrap();
    let seqs: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.len() as u64, count);
    seqs
}

/// The audit's totals, which pruning must not change.
fn totals(report: &VerifyReport) -> (u64, i128, i128, u64) {
    (
        report.last_seq,
        report.revenue,
        report.external_in,
        report.open_holds,
    )
}

/// Many requests (hold, settle, release) on two accounts with top-ups,
/// the last hold left open.
fn busy_ledger(sim: &mut Sim, requests: usize) -> Vec<Vec<WriteOp>> {
    let mut submissions = vec![sim.account_records()];
    for account in 0..2 {
        let credit = Action::Credit {
            account,
            amount: 1_000_000_000_000,
        };
        submissions.extend(sim.act(&credit));
    }
    for i in 0..requests {
        let reserve = Action::Reserve {
            account: i % 2,
            amount: 1_000_000,
        };
        submissions.extend(sim.act(&reserve));
        if i + 1 < requests {
            let settle = Action::Settle {
                pick: 0,
                fraction: 100,
            };
            submissions.extend(sim.act(&settle));
        }
    }
    submissions
}

#[test]
fn pruning_keeps_verify_clean_balances_exact_and_survives_a_reopen() {
    let dir = TempDir::new("prune-reopen");
    let mut sim = Sim::new();
    let accounts: Vec<AccountId> = sim.accounts.iter().map(|a| a.id).collect();
    let store = Store::open(dir.path()).unwrap();
    let (writer, thread) = start_writer(&store);
    for ops in busy_ledger(&mut sim, 1_500) {
        writer.submit_wait(ops).unwrap();
    }
    let before = store.verify().unwrap();
    assert!(before.is_clean(), "{:?}", before.problems);
    let books = books_of(&store, &accounts);

    let prunes = prune_all(&store, &writer, u64::MAX);
    let checkpoint = store.ledger_checkpoint().unwrap().unwrap();
    assert!(prunes >= 3, "{prunes} prunes of ≤ {PRUNE_BATCH} entries");
    // The last hold is open: its `Hold` entry and everything after it stay.
    let open_hold_seq = before.last_seq;
    assert_eq!(checkpoint.through_seq, open_hold_seq - 1);

    let after = store.verify().unwrap();
    assert!(after.is_clean(), "{:?}", after.problems);
    assert_eq!(totals(&after), totals(&before));
    assert_eq!(after.pruned_through, checkpoint.through_seq);
    assert_eq!(after.entries, before.last_seq - checkpoint.through_seq);
    assert_eq!(books_of(&store, &accounts), books);
    assert_eq!(exported_seqs(&store), vec![open_hold_seq]);
    assert_eq!(sim.revenue, after.revenue);

    writer.close();
    thread.join().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let reopened = store.verify().unwrap();
    assert!(reopened.is_clean(), "{:?}", reopened.problems);
    assert_eq!(totals(&reopened), totals(&before));
    assert_eq!(books_of(&store, &accounts), books);

    // The open hold still settles on the pruned ledger, and verify follows.
    let (writer, thread) = start_writer(&store);
    let settle = Action::Settle {
        pick: 0,
        fraction: 255,
    };
    writer.submit_wait(sim.act(&settle).unwrap()).unwrap();
    let settled = store.verify().unwrap();
    assert!(settled.is_clean(), "{:?}", settled.problems);
    assert_eq!(settled.open_holds, 0);
    assert_eq!(settled.revenue, sim.revenue);
    writer.close();
    thread.join().unwrap();
}

#[test]
fn a_prune_stops_at_the_cutoff_and_at_the_batch_bound() {
    let store = Store::temporary().unwrap();
    let (writer, _thread) = start_writer(&store);
    let mut sim = Sim::new();
    writer.submit_wait(sim.account_records()).unwrap();
    // 2,500 top-ups one millisecond apart (`Sim`'s clock).
    for _ in 0..2_500 {
        let credit = Action::Credit {
            account: 0,
            amount: 5,
        };
        writer.submit_wait(sim.act(&credit).unwrap()).unwrap();
    }
    let entry_at = |seq: u64| store.entries(seq).next().unwrap().unwrap().at_ms;
    let cutoff = entry_at(1_800);
    assert_eq!(store.prune_target(cutoff).unwrap(), Some(1_000));
    writer
        .submit_wait(vec![WriteOp::PruneLedger {
            through_seq: u64::MAX,
        }])
        .unwrap();
    assert_eq!(
        store.ledger_checkpoint().unwrap().unwrap().through_seq,
        1_000
    );
    // Up to the cutoff, not past it: the entry at the cutoff stays.
    assert_eq!(store.prune_target(cutoff).unwrap(), Some(1_799));
    prune_all(&store, &writer, cutoff);
    let checkpoint = store.ledger_checkpoint().unwrap().unwrap();
    assert_eq!(checkpoint.through_seq, 1_799);
    assert_eq!(checkpoint.through_at_ms, entry_at(1_800) - 1);
    assert_eq!(store.prune_target(cutoff).unwrap(), None);
    assert_eq!(checkpoint.external, -5 * 1_799);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.external_in, 5 * 2_500);
    assert_eq!(
        store.books(AccountId::new(1)).unwrap().balance,
        Nanos::new(5 * 2_500)
    );
}

#[test]
fn a_prune_never_cuts_through_an_open_hold() {
    let store = Store::temporary().unwrap();
    let (writer, _thread) = start_writer(&store);
    let mut sim = Sim::new();
    writer.submit_wait(sim.account_records()).unwrap();
    let credit = |account| Action::Credit {
        account,
        amount: 1_000_000_000,
    };
    for ops in [credit(0), credit(1)].iter().filter_map(|a| sim.act(a)) {
        writer.submit_wait(ops).unwrap();
    }
    // seq 3: a hold on account 1 that stays open; then account 0 works on.
    let reserve = |account| Action::Reserve {
        account,
        amount: 1_000,
    };
    writer.submit_wait(sim.act(&reserve(1)).unwrap()).unwrap();
    for _ in 0..10 {
        writer.submit_wait(sim.act(&reserve(0)).unwrap()).unwrap();
        let release = Action::Release { pick: 1 };
        writer.submit_wait(sim.act(&release).unwrap()).unwrap();
    }
    prune_all(&store, &writer, u64::MAX);
    assert_eq!(store.ledger_checkpoint().unwrap().unwrap().through_seq, 2);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.open_holds, 1);

    // Once it is released, everything can go.
    writer
        .submit_wait(sim.act(&Action::Release { pick: 0 }).unwrap())
        .unwrap();
    prune_all(&store, &writer, u64::MAX);
    let last_seq = store.last_seq().unwrap();
    assert_eq!(
        store.ledger_checkpoint().unwrap().unwrap().through_seq,
        last_seq
    );
    assert_eq!(store.entries(0).count(), 0);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.entries, report.last_seq), (0, last_seq));
    sim.check();
}

#[test]
fn a_pruned_stripe_credit_still_matches_its_payment() {
    let store = Store::temporary().unwrap();
    let (writer, _thread) = start_writer(&store);
    let sim = Sim::new();
    writer.submit_wait(sim.account_records()).unwrap();
    let account = AccountId::new(1);
    let open = PaymentRecord::open("cs_old", account, Nanos::new(700), "usd", 1);
    writer
        .submit_wait(vec![WriteOp::PutPayment(open.clone())])
        .unwrap();
    let paid = PaymentRecord {
        status: PaymentStatus::Paid,
        paid_amount: Nanos::new(700),
        payment_intent: Some("pi_old".into()),
        ..open
    };
    let after = Books {
        balance: Nanos::new(700),
        held: Nanos::ZERO,
    };
    let topup = NewEntry::new(2, account, EntryKind::Topup, Nanos::new(700), after)
        .with_reference("cs_old");
    writer
        .submit_wait(vec![
            WriteOp::Entry(topup),
            WriteOp::PutPayment(paid.clone()),
        ])
        .unwrap();
    let refund = NewEntry::new(3, account, EntryKind::Refund, Nanos::new(200), {
        Books {
            balance: Nanos::new(500),
            held: Nanos::ZERO,
        }
    })
    .with_reference("cs_old");
    let refunded = PaymentRecord {
        status: PaymentStatus::PartiallyRefunded,
        refunded_amount: Nanos::new(200),
        debited_amount: Nanos::new(200),
        ..paid
    };
    writer
        .submit_wait(vec![WriteOp::Entry(refund), WriteOp::PutPayment(refunded)])
        .unwrap();
    let hold = NewEntry::new(4, account, EntryKind::Hold, Nanos::new(10), {
        Books {
            balance: Nanos::new(500),
            held: Nanos::new(10),
        }
    })
    .with_hold(HoldId::new(9))
    .with_price(Price::default());
    writer.submit_wait(vec![WriteOp::Entry(hold)]).unwrap();

    prune_all(&store, &writer, u64::MAX);
    assert_eq!(store.ledger_checkpoint().unwrap().unwrap().through_seq, 2);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.external_in, 500);
    // A payment whose credit was pruned still refuses a second credit.
    let again = NewEntry::new(5, account, EntryKind::Topup, Nanos::new(700), {
        Books {
            balance: Nanos::new(1_200),
            held: Nanos::new(10),
        }
    })
    .with_reference("cs_old");
    assert!(writer.submit_wait(vec![WriteOp::Entry(again)]).is_err());
}

fn action() -> impl Strategy<Value = Action> {
    let account = 0usize..8;
    let amount = 0i64..2_000_000_000;
    prop_oneof![
        2 => (account.clone(), amount.clone()).prop_map(|(account, amount)| Action::Credit { account, amount }),
        1 => (account.clone(), amount.clone()).prop_map(|(account, amount)| Action::Refund { account, amount }),
        4 => (account, amount.clone()).prop_map(|(account, amount)| Action::Reserve { account, amount }),
        2 => (any::<usize>(), amount).prop_map(|(pick, amount)| Action::Extend { pick, amount }),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(pick, fraction)| Action::Settle { pick, fraction }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pick, fraction)| Action::Recover { pick, fraction }),
        2 => any::<usize>().prop_map(|pick| Action::Release { pick }),
    ]
}

proptest! {
    // Each case starts a store and a writer thread.
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn pruning_at_any_point_keeps_the_audit_and_the_books(
        actions in prop::collection::vec(action(), 1..150),
        prune_at in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let mut sim = Sim::new();
        let store = Store::temporary().unwrap();
        let (writer, _thread) = start_writer(&store);
        writer.submit_wait(sim.account_records()).unwrap();
        let points: Vec<usize> = prune_at.iter().map(|i| i.index(actions.len())).collect();
        for (i, action) in actions.iter().enumerate() {
            if let Some(ops) = sim.act(action) {
                writer.submit_wait(ops).unwrap();
            }
            if points.contains(&i) {
                let through = store.last_seq().unwrap();
                writer.submit_wait(vec![WriteOp::PruneLedger { through_seq: through }]).unwrap();
            }
        }
        let report = store.verify().unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
        prop_assert_eq!(report.revenue, sim.revenue);
        prop_assert_eq!(report.open_holds, sim.open.len() as u64);
        for account in &sim.accounts {
            prop_assert_eq!(store.books(account.id).unwrap(), account.books);
        }
    }
}
