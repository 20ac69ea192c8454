//! The writer and the store through their public API: group commit under
//! concurrent submitters, reopening a store, and the account, key and usage
//! records beside the ledger.

mod common;

use std::sync::Arc;
use std::thread;

use common::TempDir;
use crossbeam_channel::unbounded;
use tokun_storage::{
    AccountId, AccountRecord, Ack, Books, EntryKind, HoldId, IdKind, KeyId, KeyRecord,
    LedgerWriter, Nanos, NewEntry, Price, StorageError, Store, UsageRecord, WriteOp, WriterConfig,
    WriterHandle, hash_secret,
};

fn account(id: u64, email: &str) -> AccountRecord {
    AccountRecord {
        id: AccountId::new(id),
        email: email.into(),
        created_ms: 1,
        disabled: false,
        floor: Nanos::ZERO,
        deleted_ms: None,
    }
}

fn key(id: u64, account: u64, secret: &str) -> KeyRecord {
    KeyRecord {
        id: KeyId::new(id),
        account: AccountId::new(account),
        prefix: KeyRecord::prefix_of(secret),
        name: format!("key {id}"),
        created_ms: 1,
        last_used_ms: None,
        revoked_ms: None,
        spend_limit: None,
        rpm_limit: Some(60),
        allowed_models: vec![],
        debug: false,
    }
}

fn usage(account: u64, at_ms: u64, request: &str) -> UsageRecord {
    UsageRecord {
        request_id: request.into(),
        at_ms,
        account: AccountId::new(account),
        key: Some(KeyId::new(1)),
        model: "gpt-4o-mini".into(),
        served_model: "gpt-4o-mini".into(),
        provider: "echo".into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost: Nanos::new(4_500),
        estimated: false,
        status: 200,
        transport: "sse".into(),
        latency_ms: 3,
        ttft_ms: Some(1),
        error_kind: None,
    }
}

fn books(balance: i64, held: i64) -> Books {
    Books {
        balance: Nanos::new(balance),
        held: Nanos::new(held),
    }
}

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
fn accounts_keys_and_usage_are_indexed() {
    let store = Store::temporary().unwrap();
    let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    let put = |ops| writer.submit_wait(ops);
    put(vec![
        WriteOp::PutAccount(account(1, "ann@example.com")),
        WriteOp::PutAccount(account(2, "bob@example.com")),
    ])
    .unwrap();

    // Emails are unique, case-insensitively; changing one frees the old.
    let taken = put(vec![WriteOp::PutAccount(account(3, "ANN@example.com"))]).unwrap_err();
    assert!(matches!(taken, StorageError::EmailTaken { .. }), "{taken}");
    put(vec![WriteOp::PutAccount(account(1, "anne@example.com"))]).unwrap();
    assert!(store.account_by_email("ann@example.com").unwrap().is_none());
    put(vec![WriteOp::PutAccount(account(3, "ann@example.com"))]).unwrap();
    assert_eq!(store.accounts(Some("ANN"), 10).unwrap().len(), 2);
    assert_eq!(
        store.accounts(Some("acct_2"), 10).unwrap()[0].email,
        "bob@example.com"
    );
    assert_eq!(store.accounts(None, 2).unwrap().len(), 2);

    // Keys: by hash, by id, per account; a key keeps its secret and account.
    let (first, second) = (
        "sk-tokun-first-secret-000000000000",
        "sk-tokun-second-secret-00000000000",
    );
    put(vec![
        WriteOp::PutKey {
            hash: hash_secret(first),
            record: key(1, 1, first),
        },
        WriteOp::PutKey {
            hash: hash_secret(second),
            record: key(2, 1, second),
        },
    ])
    .unwrap();
    let mut revoked = key(1, 1, first);
    revoked.revoked_ms = Some(9);
    put(vec![WriteOp::PutKey {
        hash: hash_secret(first),
        record: revoked,
    }])
    .unwrap();
    assert!(store.key(KeyId::new(1)).unwrap().unwrap().is_revoked());
    assert_eq!(store.keys_for(AccountId::new(1)).unwrap().len(), 2);
    assert!(store.keys_for(AccountId::new(2)).unwrap().is_empty());
    let moved = put(vec![WriteOp::PutKey {
        hash: hash_secret(first),
        record: key(1, 2, first),
    }]);
    assert!(matches!(moved, Err(StorageError::KeyConflict { .. })));
    let reused = put(vec![WriteOp::PutKey {
        hash: hash_secret(first),
        record: key(3, 1, first),
    }]);
    assert!(matches!(reused, Err(StorageError::KeyConflict { .. })));
    let orphan = put(vec![WriteOp::PutKey {
        hash: hash_secret("x"),
        record: key(4, 99, "x"),
    }]);
    assert!(matches!(orphan, Err(StorageError::UnknownAccount { .. })));

    // Usage: per account, by time, several per millisecond.
    put((0..5)
        .map(|i| WriteOp::PutUsage(usage(1, 100 + i / 2, &format!("r{i}"))))
        .collect())
    .unwrap();
    put(vec![WriteOp::PutUsage(usage(2, 101, "other"))]).unwrap();
    let window: Vec<_> = store
        .usage_for(AccountId::new(1), 101, 102)
        .map(|u| u.unwrap().request_id)
        .collect();
    assert_eq!(window, ["r2", "r3"]);
    assert_eq!(store.usage_for(AccountId::new(1), 0, u64::MAX).count(), 5);

    // An entry for an unknown account is refused.
    let stray = NewEntry::new(
        1,
        AccountId::new(42),
        EntryKind::Topup,
        Nanos::new(1),
        books(1, 0),
    );
    assert!(matches!(
        put(vec![WriteOp::Entry(stray)]),
        Err(StorageError::Rejected { .. })
    ));
    writer.close();
    join.join().unwrap();
    assert!(matches!(put(vec![]), Err(StorageError::WriterClosed)));
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
