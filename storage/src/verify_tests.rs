//! `verify` must notice every kind of damage: these tests write a clean
//! ledger through the writer, then tamper with the trees directly.

use super::*;
use crate::codec::encode;
use crate::ids::HoldId;
use crate::ledger::{Books, EntryKind, LedgerEntry};
use crate::money::Nanos;
use crate::ops::{NewEntry, WriteOp};
use crate::price::Price;
use crate::writer::{LedgerWriter, WriterConfig};

const ACCOUNT: AccountId = AccountId::new(1);
const HOLD: HoldId = HoldId::new(1);

fn books(balance: i64, held: i64) -> Books {
    Books {
        balance: Nanos::new(balance),
        held: Nanos::new(held),
    }
}

/// topup 100; hold 40 (open, hold 1); hold 10 settled 4 + released 6 (hold 2).
fn clean_store() -> Store {
    let store = Store::temporary().unwrap();
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    let account = AccountRecord {
        id: ACCOUNT,
        email: "a@example.com".into(),
        created_ms: 0,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    };
    let entry = |kind, amount, after| NewEntry::new(1, ACCOUNT, kind, Nanos::new(amount), after);
    let second = HoldId::new(2);
    let ops = vec![
        WriteOp::PutAccount(account),
        WriteOp::Entry(entry(EntryKind::Topup, 100, books(100, 0))),
        WriteOp::Entry(
            entry(EntryKind::Hold, 40, books(100, 40))
                .with_hold(HOLD)
                .with_price(Price::default()),
        ),
        WriteOp::Entry(
            entry(EntryKind::Hold, 10, books(100, 50))
                .with_hold(second)
                .with_price(Price::default()),
        ),
        WriteOp::Entry(entry(EntryKind::Settle, 4, books(96, 46)).with_hold(second)),
        WriteOp::Entry(entry(EntryKind::Release, 6, books(96, 40)).with_hold(second)),
    ];
    writer.submit_wait(ops).unwrap();
    writer.close();
    join.join().unwrap();
    store
}

fn entry(store: &Store, seq: u64) -> LedgerEntry {
    store.entries(seq).next().unwrap().unwrap()
}

fn rewrite(store: &Store, entry: &LedgerEntry) {
    store
        .trees
        .entries
        .insert(entry.seq.to_be_bytes(), encode("entry", entry).unwrap())
        .unwrap();
}

fn problems(store: &Store) -> Vec<String> {
    store.verify().unwrap().problems
}

#[test]
fn a_clean_ledger_verifies() {
    let report = clean_store().verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        (report.entries, report.accounts, report.open_holds),
        (5, 1, 1)
    );
    assert_eq!((report.revenue, report.external_in), (4, 100));
}

#[test]
fn notices_a_changed_amount() {
    let store = clean_store();
    let mut topup = entry(&store, 1);
    topup.amount = Nanos::new(1_000);
    rewrite(&store, &topup);
    let found = problems(&store);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("entry 1: says books after")),
        "{found:?}"
    );
}

#[test]
fn notices_a_missing_entry() {
    let store = clean_store();
    store.trees.entries.remove(3u64.to_be_bytes()).unwrap();
    let found = problems(&store);
    assert!(
        found.iter().any(|p| p == "entry 4: expected seq 3"),
        "{found:?}"
    );
}

#[test]
fn notices_a_wrong_balance_row() {
    let store = clean_store();
    let row = BalanceRow {
        books: books(1_000, 40),
        last_seq: 5,
    };
    store
        .trees
        .balances
        .insert(ACCOUNT.to_key(), encode("row", &row).unwrap())
        .unwrap();
    let found = problems(&store);
    assert!(
        found.iter().any(|p| p.starts_with("acct_1: stored")),
        "{found:?}"
    );
}

#[test]
fn notices_holds_tree_damage() {
    let store = clean_store();
    let mut open = store.open_hold(HOLD).unwrap().unwrap();
    store.trees.holds.remove(HOLD.to_key()).unwrap();
    assert!(
        problems(&store)
            .iter()
            .any(|p| p.contains("not in the holds tree"))
    );
    open.hold = HoldId::new(2);
    store
        .trees
        .holds
        .insert(open.hold.to_key(), encode("hold", &open).unwrap())
        .unwrap();
    let found = problems(&store);
    assert!(
        found
            .iter()
            .any(|p| p.contains("hold_2 is in the holds tree but not open")),
        "{found:?}"
    );
}

#[test]
fn notices_a_hold_taken_after_close_and_a_breached_floor() {
    let store = clean_store();
    let mut release = entry(&store, 5);
    release.seq = 6;
    release.amount = Nanos::ZERO;
    rewrite(&store, &release);
    let mut refund = entry(&store, 1);
    refund.seq = 7;
    refund.kind = EntryKind::Refund;
    refund.amount = Nanos::new(100);
    (refund.balance_after, refund.held_after) = (Nanos::new(-4), Nanos::new(40));
    rewrite(&store, &refund);
    store
        .trees
        .meta
        .insert(crate::store::META_LAST_SEQ, &7u64.to_be_bytes())
        .unwrap();
    let found = problems(&store);
    assert!(
        found.iter().any(|p| p.contains("after it closed")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("below acct_1's floor")),
        "{found:?}"
    );
}

#[test]
fn skips_accounts_written_after_the_cutoff() {
    let store = clean_store();
    // As if a batch landed after verify read `meta`: the row moved past it.
    let row = BalanceRow {
        books: books(1_000, 40),
        last_seq: 99,
    };
    store
        .trees
        .balances
        .insert(ACCOUNT.to_key(), encode("row", &row).unwrap())
        .unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.skipped_accounts, 1);
}

#[test]
fn notices_index_damage() {
    let store = clean_store();
    let (key, _) = store.trees.account_entries.first().unwrap().unwrap();
    store
        .trees
        .account_entries
        .insert(key, &1u64.to_be_bytes())
        .unwrap();
    let found = problems(&store);
    assert!(
        found.iter().any(|p| p.contains("index does not list")),
        "{found:?}"
    );
}
