//! The payment rules, staged directly (so "the same batch" is exact, not a
//! matter of timing) and through the real writer.

use super::*;
use crate::ids::AccountId;
use crate::ledger::Books;
use crate::money::Nanos;
use crate::payments::PaymentStatus;
use crate::writer::{LedgerWriter, WriterConfig};

const ACCOUNT: AccountId = AccountId::new(1);
const SESSION: &str = "cs_test_1";

fn account(id: AccountId) -> AccountRecord {
    AccountRecord {
        id,
        email: format!("{id}@example.com"),
        created_ms: 1,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    }
}

fn topup(session: &str, amount: i64, balance_after: i64) -> WriteOp {
    let after = Books {
        balance: Nanos::new(balance_after),
        held: Nanos::ZERO,
    };
    let entry = NewEntry::new(2, ACCOUNT, EntryKind::Topup, Nanos::new(amount), after);
    WriteOp::Entry(entry.with_reference(session))
}

fn refund(session: &str, amount: i64, balance_after: i64) -> WriteOp {
    let after = Books {
        balance: Nanos::new(balance_after),
        held: Nanos::ZERO,
    };
    let entry = NewEntry::new(3, ACCOUNT, EntryKind::Refund, Nanos::new(amount), after);
    WriteOp::Entry(entry.with_reference(session))
}

fn open(session: &str) -> PaymentRecord {
    PaymentRecord::open(session, ACCOUNT, Nanos::new(100), "usd", 1)
}

fn paid(session: &str, amount: i64) -> PaymentRecord {
    PaymentRecord {
        status: PaymentStatus::Paid,
        paid_amount: Nanos::new(amount),
        payment_intent: Some(format!("pi_{session}")),
        ..open(session)
    }
}

fn mark(key: &str) -> WriteOp {
    WriteOp::MarkProcessed {
        key: key.into(),
        at_ms: 2,
    }
}

/// A store with the account and an open payment, written by a writer that
/// is then closed, so tests can stage against it directly.
fn store_with_open_payment() -> Store {
    let store = Store::temporary().unwrap();
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    writer
        .submit_wait(vec![
            WriteOp::PutAccount(account(ACCOUNT)),
            WriteOp::PutAccount(account(AccountId::new(2))),
            WriteOp::PutPayment(open(SESSION)),
        ])
        .unwrap();
    writer.close();
    join.join().unwrap();
    store
}

fn credit(event: &str) -> Vec<WriteOp> {
    credit_after(event, 100)
}

/// A credit of 100 whose entry leaves the balance at `balance_after`.
fn credit_after(event: &str, balance_after: i64) -> Vec<WriteOp> {
    vec![
        topup(SESSION, 100, balance_after),
        WriteOp::PutPayment(paid(SESSION, 100)),
        mark(event),
    ]
}

fn reason(result: Result<Changes, StorageError>) -> String {
    match result {
        Ok(_) => "accepted".into(),
        Err(err) => {
            assert!(err.is_refusal(), "{err}");
            err.to_string()
        }
    }
}

#[test]
fn a_session_is_credited_once_even_within_one_batch() {
    let store = store_with_open_payment();
    let mut batch = Changes::default();
    let first = stage(&store, &batch, 1, &credit("evt_1")).unwrap();
    batch.absorb(first);
    // The same event again, and the same session under another event id.
    let again = reason(stage(&store, &batch, 2, &credit_after("evt_1", 200)));
    assert!(again.contains("already paid"), "{again}");
    let other_event = reason(stage(&store, &batch, 2, &credit_after("evt_2", 200)));
    assert!(other_event.contains("already paid"), "{other_event}");
}

#[test]
fn an_event_mark_is_used_once_even_within_one_batch() {
    let store = store_with_open_payment();
    let mut batch = Changes::default();
    batch.absorb(stage(&store, &batch, 1, &[mark("evt_1")]).unwrap());
    let again = reason(stage(&store, &batch, 1, &[mark("evt_1")]));
    assert!(again.contains("already processed"), "{again}");
    let twice = reason(stage(
        &store,
        &Changes::default(),
        1,
        &[mark("k"), mark("k")],
    ));
    assert!(twice.contains("already processed"), "{twice}");
    let empty = reason(stage(&store, &Changes::default(), 1, &[mark("")]));
    assert!(empty.contains("already processed"), "{empty}");
}

#[test]
fn a_credit_needs_exactly_its_topup_entry() {
    let store = store_with_open_payment();
    let none = Changes::default();
    let without = reason(stage(
        &store,
        &none,
        1,
        &[WriteOp::PutPayment(paid(SESSION, 100))],
    ));
    assert!(
        without.contains("without exactly one matching topup"),
        "{without}"
    );
    let wrong_amount = vec![
        topup(SESSION, 90, 90),
        WriteOp::PutPayment(paid(SESSION, 100)),
    ];
    let wrong = reason(stage(&store, &none, 1, &wrong_amount));
    assert!(wrong.contains("matching topup"), "{wrong}");
    let two = vec![
        topup(SESSION, 100, 100),
        topup(SESSION, 100, 200),
        WriteOp::PutPayment(paid(SESSION, 100)),
    ];
    assert!(reason(stage(&store, &none, 1, &two)).contains("matching topup"));
    let stray = reason(stage(&store, &none, 1, &[topup(SESSION, 100, 100)]));
    assert!(stray.contains("without being marked paid"), "{stray}");
    // A topup with an ordinary reason is no payment's business.
    assert_eq!(
        reason(stage(&store, &none, 1, &[topup("demo credit", 5, 5)])),
        "accepted"
    );
}

#[test]
fn a_credited_payment_stays_credited_and_refunds_only_grow() {
    let store = store_with_open_payment();
    let mut batch = Changes::default();
    batch.absorb(stage(&store, &batch, 1, &credit("evt_1")).unwrap());
    let put = |payment: PaymentRecord| vec![WriteOp::PutPayment(payment)];
    let expired = PaymentRecord {
        status: PaymentStatus::Expired,
        ..open(SESSION)
    };
    assert!(reason(stage(&store, &batch, 2, &put(expired))).contains("is credited"));
    let moved = PaymentRecord {
        account: Some(AccountId::new(2)),
        ..paid(SESSION, 100)
    };
    assert!(reason(stage(&store, &batch, 2, &put(moved))).contains("another account"));
    let partly = PaymentRecord {
        status: PaymentStatus::PartiallyRefunded,
        refunded_amount: Nanos::new(40),
        debited_amount: Nanos::new(40),
        ..paid(SESSION, 100)
    };
    let ops = vec![
        refund(SESSION, 40, 60),
        WriteOp::PutPayment(partly.clone()),
        mark("refund:1"),
    ];
    batch.absorb(stage(&store, &batch, 2, &ops).unwrap());
    let less = PaymentRecord {
        refunded_amount: Nanos::new(30),
        debited_amount: Nanos::new(30),
        ..partly.clone()
    };
    assert!(reason(stage(&store, &batch, 3, &put(less))).contains("take back a refund"));
    let repaid = PaymentRecord {
        paid_amount: Nanos::new(200),
        ..partly
    };
    assert!(reason(stage(&store, &batch, 3, &put(repaid))).contains("paid amount"));
}

#[test]
fn refunds_need_a_credit_and_amounts_must_fit_the_status() {
    let store = store_with_open_payment();
    let none = Changes::default();
    let refunded = PaymentRecord {
        status: PaymentStatus::Refunded,
        refunded_amount: Nanos::new(100),
        ..paid(SESSION, 100)
    };
    let put = |payment: PaymentRecord| vec![WriteOp::PutPayment(payment)];
    assert!(reason(stage(&store, &none, 1, &put(refunded.clone()))).contains("no credit"));
    let fresh = PaymentRecord {
        session_id: "cs_other".into(),
        ..refunded
    };
    assert!(reason(stage(&store, &none, 1, &put(fresh))).contains("no credit"));
    let zero = paid(SESSION, 0);
    assert!(reason(stage(&store, &none, 1, &put(zero))).contains("do not fit"));
    let over = PaymentRecord {
        debited_amount: Nanos::new(10),
        ..paid(SESSION, 100)
    };
    assert!(reason(stage(&store, &none, 1, &put(over))).contains("more debited"));
}

#[test]
fn orphans_may_name_unknown_accounts_and_nothing_else_may() {
    let store = store_with_open_payment();
    let none = Changes::default();
    let stranger = AccountId::new(99);
    let orphan = PaymentRecord {
        session_id: "cs_orphan".into(),
        account: Some(stranger),
        status: PaymentStatus::Orphaned,
        note: Some("unknown account".into()),
        ..open("cs_orphan")
    };
    let ops = vec![WriteOp::PutPayment(orphan.clone()), mark("evt_9")];
    assert_eq!(reason(stage(&store, &none, 1, &ops)), "accepted");
    let no_account = PaymentRecord {
        account: None,
        ..orphan.clone()
    };
    let ops = vec![WriteOp::PutPayment(no_account)];
    assert_eq!(reason(stage(&store, &none, 1, &ops)), "accepted");
    let open_for_stranger = PaymentRecord {
        status: PaymentStatus::Open,
        ..orphan
    };
    let ops = vec![WriteOp::PutPayment(open_for_stranger)];
    assert!(reason(stage(&store, &none, 1, &ops)).contains("unknown account"));
}

#[test]
fn the_writer_credits_once_and_verify_agrees() {
    let store = Store::temporary().unwrap();
    let config = WriterConfig {
        max_batch_delay: std::time::Duration::from_millis(20),
        ..WriterConfig::default()
    };
    let (writer, join) = LedgerWriter::start(store.clone(), config).unwrap();
    writer
        .submit_wait(vec![
            WriteOp::PutAccount(account(ACCOUNT)),
            WriteOp::PutPayment(open(SESSION)),
        ])
        .unwrap();
    // Five identical credits queued at once: however they fall into
    // batches, exactly one is written.
    let waits: Vec<_> = (0..5)
        .map(|_| {
            let (ack, done) = crate::ops::Ack::channel();
            writer.submit(credit("evt_1"), ack);
            done
        })
        .collect();
    let results: Vec<_> = waits.into_iter().map(|w| w.recv().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().flatten().count() == 1);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(StorageError::is_refusal)
    );
    writer.close();
    join.join().unwrap();
    assert_eq!(store.books(ACCOUNT).unwrap().balance, Nanos::new(100));
    assert!(store.is_processed("evt_1").unwrap());
    let payment = store.payment(SESSION).unwrap().unwrap();
    assert_eq!(payment.status, PaymentStatus::Paid);
    assert_eq!(store.payments_for(ACCOUNT).unwrap(), vec![payment.clone()]);
    assert_eq!(
        store.payment_by_intent("pi_cs_test_1").unwrap(),
        Some(payment)
    );
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn verify_notices_a_payment_that_disagrees_with_the_ledger() {
    let store = store_with_open_payment();
    assert!(store.verify().unwrap().is_clean());
    let forged = crate::codec::encode("a payment", &paid(SESSION, 100)).unwrap();
    store
        .trees
        .payments
        .insert(SESSION.as_bytes(), forged)
        .unwrap();
    let report = store.verify().unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(SESSION) && p.contains("0 topup entries")),
        "{:?}",
        report.problems
    );
}
