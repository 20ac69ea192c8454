//! Property tests of ledger conservation: any interleaving of credits,
//! debits, refunds, holds, extensions, settlements, recoveries and releases
//! that a correct account actor allows keeps every closed hold conserved,
//! every account at or above its floor, and — written through the writer —
//! a store that `verify` finds clean and that matches the model.

mod common;

use std::collections::BTreeMap;

use common::{Action, Sim};
use proptest::prelude::*;
use tokun_storage::{Ack, LedgerWriter, Nanos, Store, WriteOp, WriterConfig};

fn action() -> impl Strategy<Value = Action> {
    let account = 0usize..8;
    let amount = 0i64..2_000_000_000;
    prop_oneof![
        2 => (account.clone(), amount.clone()).prop_map(|(account, amount)| Action::Credit { account, amount }),
        1 => (account.clone(), amount.clone()).prop_map(|(account, amount)| Action::OperatorCredit { account, amount }),
        1 => (account.clone(), amount.clone()).prop_map(|(account, amount)| Action::OperatorDebit { account, amount }),
        1 => (account.clone(), amount.clone()).prop_map(|(account, amount)| Action::Refund { account, amount }),
        4 => (account, amount.clone()).prop_map(|(account, amount)| Action::Reserve { account, amount }),
        2 => (any::<usize>(), amount).prop_map(|(pick, amount)| Action::Extend { pick, amount }),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(pick, fraction)| Action::Settle { pick, fraction }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pick, fraction)| Action::SettlePart { pick, fraction }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pick, fraction)| Action::Recover { pick, fraction }),
        2 => any::<usize>().prop_map(|pick| Action::Release { pick }),
    ]
}

/// Runs the actions on the model, checking its invariants after each, and
/// returns the submissions a correct actor would have made.
fn run(actions: &[Action]) -> (Sim, Vec<Vec<WriteOp>>) {
    let mut sim = Sim::new();
    let mut submissions = vec![sim.account_records()];
    for action in actions {
        if let Some(ops) = sim.act(action) {
            submissions.push(ops);
        }
        sim.check();
    }
    (sim, submissions)
}

proptest! {
    #[test]
    fn apply_conserves_holds_and_respects_floors(actions in prop::collection::vec(action(), 0..200)) {
        // `run` asserts after every action; reaching here is the property.
        let (sim, _) = run(&actions);
        let total_open: i128 = sim.open.iter().map(|h| h.remaining()).sum();
        let total_held: i128 = sim.accounts.iter().map(|a| i128::from(a.books.held.get())).sum();
        prop_assert_eq!(total_open, total_held);
    }
}

proptest! {
    // Each case starts a store and a writer thread; fewer cases, same depth.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_writer_stores_exactly_what_the_actor_decided(actions in prop::collection::vec(action(), 0..80)) {
        let (sim, submissions) = run(&actions);
        let store = Store::temporary().unwrap();
        let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
        // Pipelined, as the ledger actor does: submit everything, then wait.
        let waits: Vec<_> = submissions
            .into_iter()
            .map(|ops| {
                let (ack, done) = Ack::channel();
                writer.submit(ops, ack);
                done
            })
            .collect();
        for done in waits {
            prop_assert!(done.recv().unwrap().is_ok());
        }
        writer.close();
        join.join().unwrap();

        let report = store.verify().unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
        let all: Vec<_> = store.entries(0).map(Result::unwrap).collect();
        let middle = all.len() as u64 / 2;
        for account in &sim.accounts {
            prop_assert_eq!(store.books(account.id).unwrap(), account.books);
            for from in [0, middle] {
                let listed: Vec<_> = store.entries_for(account.id, from).map(Result::unwrap).collect();
                let expected: Vec<_> =
                    all.iter().filter(|e| e.account == account.id && e.seq >= from).cloned().collect();
                prop_assert_eq!(listed, expected);
            }
        }
        let stored: BTreeMap<_, _> = store.open_holds().unwrap().into_iter().map(|h| (h.hold, h.amount)).collect();
        let modelled: BTreeMap<_, _> =
            sim.open.iter().map(|h| (h.hold, Nanos::new(h.remaining() as i64))).collect();
        prop_assert_eq!(stored, modelled);
        prop_assert_eq!(report.open_holds, sim.open.len() as u64);
prop_assert_eq!(report.revenue, sim.revenue);
    }
}
