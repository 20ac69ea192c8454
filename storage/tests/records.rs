//! The records beside the ledger through the writer and the store's reads:
//! accounts by email, API keys by hash, id and account, usage by time.

mod common;

use common::{account, books, key, usage};
use tokun_storage::{
    AccountId, EntryKind, KeyId, LedgerWriter, Nanos, NewEntry, StorageError, Store, WriteOp,
    WriterConfig, hash_secret,
};

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
