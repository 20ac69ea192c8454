//! Benchmarks of the ledger's hot paths: `Price::cost`, durable settled
//! entries per second through the group-commit writer (on a real disk
//! directory, not /dev/shm, so every flush is a real fsync), and the raw
//! atomic-write choice behind the writer (one multi-tree transaction vs one
//! prefixed tree with `apply_batch`).

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: any failure should abort the run"
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Sender, unbounded};
use sled::transaction::Transactional;
use tokun_storage::{
    AccountId, AccountRecord, Ack, Books, EntryKind, HoldId, LedgerWriter, Nanos, NewEntry, Price,
    Store, WriteOp, WriterConfig, WriterHandle,
};

/// Requests per measured iteration; each is three entries (hold; settle +
/// release) in two submissions.
const REQUESTS: u64 = 4_000;
/// Accounts the requests are spread over, each driven like an account actor.
const ACCOUNTS: u64 = 64;
/// Threads submitting (the ledger actor's callers).
const PRODUCERS: u64 = 2;

fn bench_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ledger-bench-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn price_cost(c: &mut Criterion) {
    let price = Price::from_usd_per_million(0.15, 0.60, 0.075).unwrap();
    c.bench_function("price_cost", |b| {
        b.iter(|| black_box(price).cost(black_box(1_234), black_box(512), black_box(789)))
    });
    c.bench_function("price_output_tokens_affordable", |b| {
        b.iter(|| black_box(price).output_tokens_affordable(black_box(Nanos::new(5_000_000_000))))
    });
}

/// One account's running books, as its actor keeps them.
struct Account {
    id: AccountId,
    books: Books,
}

fn books(balance: i64, held: i64) -> Books {
    Books {
        balance: Nanos::new(balance),
        held: Nanos::new(held),
    }
}

fn setup(writer: &WriterHandle) -> Vec<Account> {
    (1..=ACCOUNTS)
        .map(|id| {
            let id = AccountId::new(id);
            let record = AccountRecord {
                id,
                email: format!("{id}@bench"),
                created_ms: 0,
                disabled: false,
                floor: Nanos::ZERO,
                deleted_ms: None,
            };
            let start = books(1_000_000_000_000, 0);
            let topup = NewEntry::new(0, id, EntryKind::Topup, start.balance, start);
            writer
                .submit_wait(vec![WriteOp::PutAccount(record), WriteOp::Entry(topup)])
                .unwrap();
            Account { id, books: start }
        })
        .collect()
}

/// Submits `requests` requests round-robin over `accounts`, without waiting.
fn produce(
    writer: &WriterHandle,
    accounts: &mut [Account],
    requests: u64,
    next_hold: &AtomicU64,
    done: &Sender<()>,
) {
    let ack = || {
        let done = done.clone();
        Ack::new(move |result| {
            assert!(result.is_ok(), "{result:?}");
            let _ = done.send(());
        })
    };
    let price = Price::from_usd_per_million(0.15, 0.60, 0.075).unwrap();
    for i in 0..requests {
        let account = &mut accounts[(i as usize) % accounts.len()];
        let hold = HoldId::new(next_hold.fetch_add(1, Ordering::Relaxed));
        let (balance, id) = (account.books.balance.get(), account.id);
        let open = NewEntry::new(
            1,
            id,
            EntryKind::Hold,
            Nanos::new(10_000),
            books(balance, 10_000),
        )
        .with_hold(hold)
        .with_request_id(format!("req-{}", hold.get()))
        .with_price(price);
        writer.submit(vec![WriteOp::Entry(open)], ack());
        let settle = NewEntry::new(
            2,
            id,
            EntryKind::Settle,
            Nanos::new(4_500),
            books(balance - 4_500, 5_500),
        )
        .with_hold(hold);
        let release = NewEntry::new(
            2,
            id,
            EntryKind::Release,
            Nanos::new(5_500),
            books(balance - 4_500, 0),
        )
        .with_hold(hold);
        writer.submit(vec![WriteOp::Entry(settle), WriteOp::Entry(release)], ack());
        account.books = books(balance - 4_500, 0);
    }
}

fn writer_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer_settled_entries");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(REQUESTS * 3));
    for max_batch in [64usize, 1024] {
        let config = WriterConfig {
            max_batch,
            ..WriterConfig::default()
        };
        let dir = bench_dir("writer");
        let store = Store::open(&dir).unwrap();
        let (writer, join) = LedgerWriter::start(store, config).unwrap();
        let accounts = setup(&writer);
        let mut shards: Vec<Vec<Account>> = (0..PRODUCERS).map(|_| Vec::new()).collect();
        for (i, account) in accounts.into_iter().enumerate() {
            shards[i % PRODUCERS as usize].push(account);
        }
        let next_hold = AtomicU64::new(1);
        group.bench_function(
            BenchmarkId::from_parameter(format!("max_batch_{max_batch}")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (done, acked) = unbounded();
                        let started = Instant::now();
                        thread::scope(|scope| {
                            for shard in shards.iter_mut() {
                                let (writer, done, next_hold) = (&writer, &done, &next_hold);
                                scope.spawn(move || {
                                    produce(writer, shard, REQUESTS / PRODUCERS, next_hold, done)
                                });
                            }
                        });
                        for _ in 0..REQUESTS * 2 {
                            acked.recv().unwrap();
                        }
                        total += started.elapsed();
                    }
                    total
                })
            },
        );
        let stats = writer.stats().snapshot();
        let batches = stats.batches.max(1);
        eprintln!(
            "max_batch {max_batch}: {} entries in {} batches ({:.0} per batch), mean commit {} µs, mean flush {} µs",
            stats.entries,
            stats.batches,
            stats.entries as f64 / batches as f64,
            stats.commit_micros_total / batches,
            stats.flush_micros_total / stats.flushes.max(1),
        );
        writer.close();
        join.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

/// The raw cost of one atomic batch of 1,024 entries (five keys each, as
/// the writer writes them) plus one flush: a transaction over separate trees
/// vs `apply_batch` on one tree with key prefixes.
fn atomic_write(c: &mut Criterion) {
    const ENTRIES: u64 = 1024;
    let mut group = c.benchmark_group("atomic_write_1024_entries");
    group
        .sample_size(20)
        .throughput(Throughput::Elements(ENTRIES));
    let value = vec![7u8; 250];
    let dir = bench_dir("raw");
    let db = sled::Config::new()
        .path(&dir)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let trees: Vec<sled::Tree> = (0..5)
        .map(|i| db.open_tree(format!("t{i}")).unwrap())
        .collect();
    let single = db.open_tree("single").unwrap();
    let mut seq = 0u64;
    group.bench_function("multi_tree_transaction", |b| {
        b.iter(|| {
            let start = seq;
            seq += ENTRIES;
            let refs: Vec<&sled::Tree> = trees.iter().collect();
            refs[..]
                .transaction(
                    |tx| -> sled::transaction::ConflictableTransactionResult<(), ()> {
                        for n in start..start + ENTRIES {
                            for tree in tx {
                                tree.insert(&n.to_be_bytes(), value.as_slice())?;
                            }
                        }
                        Ok(())
                    },
                )
                .unwrap();
            db.flush().unwrap();
        })
    });
    group.bench_function("single_tree_apply_batch", |b| {
        b.iter(|| {
            let mut batch = sled::Batch::default();
            for n in seq..seq + ENTRIES {
                for prefix in 0u8..5 {
                    let mut key = vec![prefix];
                    key.extend_from_slice(&n.to_be_bytes());
                    batch.insert(key, value.as_slice());
                }
            }
            seq += ENTRIES;
            single.apply_batch(batch).unwrap();
            db.flush().unwrap();
        })
    });
    group.finish();
    drop((trees, single, db));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, price_cost, atomic_write, writer_throughput);
criterion_main!(benches);
