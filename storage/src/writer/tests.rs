//! Writer tests that need the fault switches; the rest are in `tests/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::ids::{AccountId, HoldId};
use crate::ledger::{Books, EntryKind};
use crate::money::Nanos;
use crate::ops::NewEntry;
use crate::price::Price;
use crate::records::AccountRecord;

/// Switches that make the writer fail at a chosen point.
#[derive(Default)]
pub(crate) struct Faults {
    fail_commit: AtomicBool,
    fail_flush: AtomicBool,
}

impl Faults {
    pub(super) fn check(&self, fault: Fault) -> Result<(), StorageError> {
        let switch = match fault {
            Fault::Commit => &self.fail_commit,
            Fault::Flush => &self.fail_flush,
        };
        if switch.load(Ordering::SeqCst) {
            let injected =
                sled::Error::Io(std::io::Error::other(format!("injected {fault:?} failure")));
            return Err(StorageError::sled("inject a fault")(injected));
        }
        Ok(())
    }
}

fn account(id: u64) -> AccountRecord {
    AccountRecord {
        id: AccountId::new(id),
        email: format!("user{id}@example.com"),
        created_ms: 1,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    }
}

fn topup(id: u64, amount: i64, balance_after: i64) -> WriteOp {
    let after = Books {
        balance: Nanos::new(balance_after),
        held: Nanos::ZERO,
    };
    WriteOp::Entry(NewEntry::new(
        2,
        AccountId::new(id),
        EntryKind::Topup,
        Nanos::new(amount),
        after,
    ))
}

/// Starts a writer over a temporary store with fault switches. How
/// submissions fall into batches is up to timing; the assertions hold for
/// every split.
fn writer(faults: &Arc<Faults>) -> (Store, WriterHandle, JoinHandle<()>) {
    let store = Store::temporary().unwrap();
    let config = WriterConfig {
        max_batch_delay: Duration::from_secs(5),
        ..WriterConfig::default()
    };
    let (handle, join) =
        LedgerWriter::start_with_faults(store.clone(), config, Arc::clone(faults)).unwrap();
    (store, handle, join)
}

#[test]
fn a_failed_commit_errs_every_ack_and_writes_nothing() {
    let faults = Arc::new(Faults::default());
    let (store, handle, join) = writer(&faults);
    handle
        .submit_wait(vec![WriteOp::PutAccount(account(1))])
        .unwrap();
    faults.fail_commit.store(true, Ordering::SeqCst);
    let waits: Vec<_> = (0..20)
        .map(|i| {
            let (ack, done) = Ack::channel();
            handle.submit(vec![topup(1, 10, 10 * (i + 1))], ack);
            done
        })
        .collect();
    for done in waits {
        assert!(matches!(
            done.recv().unwrap(),
            Err(StorageError::Sled { .. } | StorageError::WriterPoisoned { .. })
        ));
    }
    assert_eq!(store.last_seq().unwrap(), 0);
    assert_eq!(store.books(AccountId::new(1)).unwrap(), Books::ZERO);
    assert_eq!(store.entries(0).count(), 0);
    // Poisoned: nothing is accepted any more, even with the fault gone.
    faults.fail_commit.store(false, Ordering::SeqCst);
    let later = handle.submit_wait(vec![topup(1, 10, 10)]);
    assert!(
        matches!(later, Err(StorageError::WriterPoisoned { .. })),
        "{later:?}"
    );
    assert_eq!(handle.stats().snapshot().failed_batches, 1);
    handle.close();
    join.join().unwrap();
}

#[test]
fn a_failed_flush_errs_every_ack_of_the_batch() {
    let faults = Arc::new(Faults::default());
    let (_store, handle, join) = writer(&faults);
    handle
        .submit_wait(vec![WriteOp::PutAccount(account(1))])
        .unwrap();
    faults.fail_flush.store(true, Ordering::SeqCst);
    let (ack, done) = Ack::channel();
    handle.submit(vec![topup(1, 10, 10), topup(1, 5, 15)], ack);
    let err = done.recv().unwrap().unwrap_err();
    assert!(!err.is_refusal());
    assert!(err.to_string().contains("injected Flush failure"), "{err}");
    assert!(matches!(
        handle.submit_wait(vec![]),
        Err(StorageError::WriterPoisoned { .. })
    ));
    drop(handle);
    join.join().unwrap();
}

#[test]
fn only_a_sync_flushes_an_otherwise_empty_batch() {
    let faults = Arc::new(Faults::default());
    let (_store, handle, join) = writer(&faults);
    faults.fail_flush.store(true, Ordering::SeqCst);
    // An empty barrier has nothing to flush: earlier batches already were.
    handle.submit_wait(vec![]).unwrap();
    // A sync flushes (here: fails to), and says so; the writer stays usable.
    let err = handle.submit_wait(vec![WriteOp::Sync]).unwrap_err();
    assert!(err.to_string().contains("injected Flush failure"), "{err}");
    faults.fail_flush.store(false, Ordering::SeqCst);
    handle.submit_wait(vec![WriteOp::Sync]).unwrap();
    handle
        .submit_wait(vec![WriteOp::PutAccount(account(1))])
        .unwrap();
    drop(handle);
    join.join().unwrap();
}

#[test]
fn a_refused_submission_does_not_disturb_its_batch() {
    let faults = Arc::new(Faults::default());
    let (store, handle, join) = writer(&faults);
    handle
        .submit_wait(vec![WriteOp::PutAccount(account(1))])
        .unwrap();
    let (good, good_done) = Ack::channel();
    let (bad, bad_done) = Ack::channel();
    let (after, after_done) = Ack::channel();
    handle.submit(vec![topup(1, 10, 10)], good);
    // Claims the wrong balance after its first op: the whole submission goes.
    handle.submit(vec![topup(1, 1, 11), topup(1, 1, 13)], bad);
    handle.submit(vec![topup(1, 5, 15)], after);
    assert_eq!(good_done.recv().unwrap().unwrap().seqs, 1..2);
    let refused = bad_done.recv().unwrap().unwrap_err();
    assert!(
        matches!(refused, StorageError::Rejected { op_index: 1, .. }),
        "{refused}"
    );
    assert!(refused.is_refusal());
    assert_eq!(after_done.recv().unwrap().unwrap().seqs, 2..3);
    assert_eq!(
        store.books(AccountId::new(1)).unwrap().balance,
        Nanos::new(15)
    );
    assert!(store.verify().unwrap().is_clean());
    handle.close();
    join.join().unwrap();
}

#[test]
fn hold_rules_are_enforced() {
    let faults = Arc::new(Faults::default());
    let (store, handle, join) = writer(&faults);
    let id = AccountId::new(1);
    let hold = HoldId::new(7);
    let price = Price::default();
    let books = |balance, held| Books {
        balance: Nanos::new(balance),
        held: Nanos::new(held),
    };
    let entry = |kind, amount, after| NewEntry::new(3, id, kind, Nanos::new(amount), after);
    handle
        .submit_wait(vec![WriteOp::PutAccount(account(1)), topup(1, 100, 100)])
        .unwrap();
    let refused = |ops: Vec<WriteOp>| handle.submit_wait(ops).unwrap_err();
    // Unknown hold, no price, no hold id.
    let settle = entry(EntryKind::Settle, 0, books(100, 0)).with_hold(hold);
    assert!(matches!(
        refused(vec![WriteOp::Entry(settle)]),
        StorageError::Rejected { .. }
    ));
    let no_price = entry(EntryKind::Hold, 10, books(100, 10)).with_hold(hold);
    assert!(matches!(
        refused(vec![WriteOp::Entry(no_price)]),
        StorageError::Rejected { .. }
    ));
    let no_id = entry(EntryKind::Hold, 10, books(100, 10)).with_price(price);
    assert!(matches!(
        refused(vec![WriteOp::Entry(no_id)]),
        StorageError::Rejected { .. }
    ));
    // Open, then try to take more than remains.
    let open = entry(EntryKind::Hold, 10, books(100, 10))
        .with_hold(hold)
        .with_price(price);
    handle.submit_wait(vec![WriteOp::Entry(open)]).unwrap();
    let greedy = entry(EntryKind::Settle, 11, books(89, -1)).with_hold(hold);
    assert!(matches!(
        refused(vec![WriteOp::Entry(greedy)]),
        StorageError::Rejected { .. }
    ));
    // Settle part, checkpoint, release the rest: closed.
    let part = entry(EntryKind::Settle, 4, books(96, 6)).with_hold(hold);
    let checkpoint = WriteOp::Checkpoint {
        hold,
        prompt_tokens: 3,
        completion_tokens: 2,
    };
    handle
        .submit_wait(vec![WriteOp::Entry(part), checkpoint])
        .unwrap();
    assert_eq!(
        store.open_hold(hold).unwrap().unwrap().checkpoint_tokens,
        Some((3, 2))
    );
    let rest = entry(EntryKind::Release, 6, books(96, 0)).with_hold(hold);
    handle.submit_wait(vec![WriteOp::Entry(rest)]).unwrap();
    assert!(store.open_holds().unwrap().is_empty());
    // A late checkpoint is harmless; a late release is refused.
    handle
        .submit_wait(vec![WriteOp::Checkpoint {
            hold,
            prompt_tokens: 9,
            completion_tokens: 9,
        }])
        .unwrap();
    let late = entry(EntryKind::Release, 0, books(96, 0)).with_hold(hold);
    assert!(matches!(
        refused(vec![WriteOp::Entry(late)]),
        StorageError::Rejected { .. }
    ));
    assert!(store.verify().unwrap().is_clean());
    assert_eq!(handle.stats().snapshot().rejected, 5);
    handle.close();
    join.join().unwrap();
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send_sync::<WriterHandle>();
    send_sync::<WriterStats>();
    send::<Ack>();
    send::<WriteOp>();
}

/// While the writer is held (inside an ack) and its one-slot queue is full,
/// `try_submit` gives the submission back untouched; once the writer goes
/// on, it goes in like any other.
#[test]
fn try_submit_gives_the_submission_back_while_the_queue_is_full() {
    let store = Store::temporary().unwrap();
    let config = WriterConfig {
        queue_capacity: 1,
        ..WriterConfig::default()
    };
    let (handle, join) = LedgerWriter::start(store.clone(), config).unwrap();
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let held = Ack::new(move |result| {
        assert!(result.is_ok(), "{result:?}");
        entered_tx.send(()).unwrap();
        released.recv().unwrap();
    });
    handle.submit(vec![WriteOp::PutAccount(account(1))], held);
    entered.recv().unwrap();
    let (ack, first) = Ack::channel();
    assert!(handle.try_submit(vec![topup(1, 10, 10)], ack).is_none());
    let (ack, second) = Ack::channel();
    let (ops, ack) = handle
        .try_submit(vec![topup(1, 5, 15)], ack)
        .expect("the queue is full");
    assert_eq!(ops.len(), 1);
    assert!(second.try_recv().is_err(), "given back, not answered");
    release.send(()).unwrap();
    handle.submit(ops, ack);
    first.recv().unwrap().unwrap();
    second.recv().unwrap().unwrap();
    assert_eq!(
        store.books(AccountId::new(1)).unwrap().balance,
        Nanos::new(15)
    );
    // Once the writer is gone, `try_submit` answers the ack itself.
    handle.close();
    join.join().unwrap();
    let (ack, late) = Ack::channel();
    assert!(handle.try_submit(vec![topup(1, 1, 16)], ack).is_none());
    assert!(matches!(
        late.recv().unwrap(),
        Err(StorageError::WriterClosed)
    ));
}
