//! The writer and the store through their public API: group commit under
//! concurrent submitters, reopening a store, and a closed writer.

mod common;

use std::sync::Arc;
use std::thread;

use common::{TempDir, account, books, key, usage};
use crossbeam_channel::unbounded;
use tokun_storage::{
    AccountId, AccountRecord, Ack, EntryKind, HoldId, IdKind, LedgerWriter, Nanos, NewEntry, Price,
    StorageError, Store, WriteOp, WriterConfig, WriterHandle, hash_secret,
};

/// One "account actor" thread: tops up, then runs request after request
/// (hold; then settle + release), pipelined without waiting for acks.
/// Returns the number of entries submitted.
fn actor(
    writer: WriterHandle,
    id: u64,
    entries: usize,
    results: crossbeam_channel::Sender<Result<std::ops::Range<u64>, StorageError>>,
) -> usize {
    let account = AccountId::new(id);
    let ack = |results: &crossbeam_channel::Sender<_>| {
        let results = results.clone();
        Ack::new(
            move |result: Result<tokun_storage::Durable, StorageError>| {
                let _ = results.send(result.map(|durable| durable.seqs));
            },
        )
    };
    let start = books(1_000_000_000, 0);
    let topup = NewEntry::new(1, account, EntryKind::Topup, start.balance, start);
    writer.submit(
        vec![
            WriteOp::PutAccount(account_record(id)),
            WriteOp::Entry(topup),
        ],
        ack(&results),
    );
    let mut balance = start.balance.get();
    let mut submitted = 1;
    let mut request = 0;
    while submitted + 3 <= entries {
        request += 1;
        let hold = HoldId::new(id * 1_000_000 + request);
        let open = NewEntry::new(
            2,
            account,
            EntryKind::Hold,
            Nanos::new(1_000),
            books(balance, 1_000),
        )
        .with_hold(hold)
        .with_price(Price::default());
        writer.submit(vec![WriteOp::Entry(open)], ack(&results));
        balance -= 300;
        let settle = NewEntry::new(
            3,
            account,
            EntryKind::Settle,
            Nanos::new(300),
            books(balance, 700),
        )
        .with_hold(hold);
        let release = NewEntry::new(
            3,
            account,
            EntryKind::Release,
            Nanos::new(700),
            books(balance, 0),
        )
        .with_hold(hold);
        writer.submit(
            vec![WriteOp::Entry(settle), WriteOp::Entry(release)],
            ack(&results),
        );
        submitted += 3;
    }
    submitted
}

fn account_record(id: u64) -> AccountRecord {
    account(id, &format!("actor{id}@example.com"))
}

#[test]
fn ten_thousand_entries_from_four_threads_are_acked_contiguously() {
    let store = Store::temporary().unwrap();
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    let (results, acked) = unbounded();
    let actors: Vec<_> = (1..=4)
        .map(|id| {
            let (writer, results) = (writer.clone(), results.clone());
            thread::spawn(move || actor(writer, id, 2_500, results))
        })
        .collect();
    let submitted: usize = actors.into_iter().map(|a| a.join().unwrap()).sum();
    drop(results);
    let mut ranges: Vec<_> = acked.iter().map(|r| r.unwrap()).collect();
    assert_eq!(submitted, 10_000);
    ranges.sort_by_key(|r| r.start);
    let mut next = 1;
    for range in &ranges {
        assert_eq!(range.start, next, "seqs are contiguous");
        next = range.end;
    }
    assert_eq!(next - 1, submitted as u64);
    assert_eq!(store.last_seq().unwrap(), submitted as u64);

    let stats = writer.stats().snapshot();
    assert_eq!(stats.entries, submitted as u64);
    assert_eq!(stats.submissions, ranges.len() as u64);
    assert!(stats.batches >= 1 && stats.batches <= stats.submissions);
    writer.close();
    join.join().unwrap();

    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.entries, submitted as u64);
    assert_eq!(report.accounts, 4);
    assert_eq!(report.open_holds, 0);
    let mut exported = Vec::new();
    assert_eq!(store.export_jsonl(&mut exported).unwrap(), submitted as u64);
    assert_eq!(exported.iter().filter(|b| **b == b'\n').count(), submitted);
}

#[test]
fn a_reopened_store_has_everything_and_continues_the_ledger() {
    let dir = TempDir::new("reopen");
    let secret = "sk-tokun-abcdefghijklmnopqrstuvwxyz0123456789";
    let hold = HoldId::new(5);
    let last_ids = {
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.was_recovered());
        let ids =
            [IdKind::Account, IdKind::Key, IdKind::Hold].map(|kind| store.next_id(kind).unwrap());
        let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
        let topup = NewEntry::new(
            1,
            AccountId::new(1),
            EntryKind::Topup,
            Nanos::new(5_000),
            books(5_000, 0),
        );
        let open = NewEntry::new(
            2,
            AccountId::new(1),
            EntryKind::Hold,
            Nanos::new(1_000),
            books(5_000, 1_000),
        )
        .with_hold(hold)
        .with_request_id("req-1")
        .with_price(Price::default());
        writer
            .submit_wait(vec![
                WriteOp::PutAccount(account(1, "Ann@Example.com")),
                WriteOp::PutKey {
                    hash: hash_secret(secret),
                    record: key(1, 1, secret),
                },
                WriteOp::Entry(topup),
                WriteOp::Entry(open),
                WriteOp::Checkpoint {
                    hold,
                    prompt_tokens: 100,
                    completion_tokens: 7,
                },
                WriteOp::PutUsage(usage(1, 10, "req-0")),
            ])
            .unwrap();
        writer.close();
        join.join().unwrap();
        ids
    };

    let store = Store::open(dir.path()).unwrap();
    assert!(store.was_recovered());
    assert_eq!(
        store
            .account_by_email("ann@example.com")
            .unwrap()
            .unwrap()
            .id,
        AccountId::new(1)
    );
    assert_eq!(
        store
            .key_by_hash(&hash_secret(secret))
            .unwrap()
            .unwrap()
            .prefix,
        "sk-tokun-abc"
    );
    assert_eq!(store.books(AccountId::new(1)).unwrap(), books(5_000, 1_000));
    let open = store.open_holds().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].checkpoint_tokens, Some((100, 7)));
    assert_eq!(open[0].request_id.as_deref(), Some("req-1"));
    assert_eq!(store.usage_for(AccountId::new(1), 0, u64::MAX).count(), 1);
    for (kind, before) in [IdKind::Account, IdKind::Key, IdKind::Hold]
        .into_iter()
        .zip(last_ids)
    {
        assert!(
            store.next_id(kind).unwrap() > before,
            "{kind:?} ids never repeat"
        );
    }

    // The writer continues after the last seq; recovery settles the hold.
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    let recovered = NewEntry::new(
        3,
        AccountId::new(1),
        EntryKind::Recovered,
        Nanos::new(400),
        books(4_600, 600),
    )
    .with_hold(hold)
    .estimated();
    let release = NewEntry::new(
        3,
        AccountId::new(1),
        EntryKind::Release,
        Nanos::new(600),
        books(4_600, 0),
    )
    .with_hold(hold);
    let durable = writer
        .submit_wait(vec![WriteOp::Entry(recovered), WriteOp::Entry(release)])
        .unwrap();
    assert_eq!(durable.seqs, 3..5);
    assert_eq!(durable.last_seq, 4);
    drop(writer);
    join.join().unwrap();
    assert!(store.open_holds().unwrap().is_empty());
    assert!(store.verify().unwrap().is_clean());
    let kinds: Vec<_> = store
        .entries_for(AccountId::new(1), 0)
        .map(|e| e.unwrap().kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EntryKind::Topup,
            EntryKind::Hold,
            EntryKind::Recovered,
            EntryKind::Release
        ]
    );
    assert_eq!(store.entries_for(AccountId::new(1), 4).count(), 1);
}

#[test]
fn acks_of_a_dropped_writer_fire_writer_closed() {
    let store = Store::temporary().unwrap();
    let (writer, join) = LedgerWriter::start(store, WriterConfig::default()).unwrap();
    writer.close();
    join.join().unwrap();
    let fired = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::clone(&fired);
    writer.submit(
        vec![],
        Ack::new(move |result| *seen.lock().unwrap() = Some(result.is_err())),
    );
    assert_eq!(*fired.lock().unwrap(), Some(true));
}

#[test]
fn a_store_has_one_writer_at_a_time() {
    let store = Store::temporary().unwrap();
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    let second = LedgerWriter::start(store.clone(), WriterConfig::default());
    assert!(matches!(second, Err(StorageError::WriterRunning)));
    writer.close();
    join.join().unwrap();
    let (again, join) = LedgerWriter::start(store, WriterConfig::default()).unwrap();
    drop(again);
    join.join().unwrap();
}
