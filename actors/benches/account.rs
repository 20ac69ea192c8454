//! The account actor's round trips through `AccountsHandle`, as the edge
//! makes them for every billed request:
//!
//! - `reserve_release`: reserve a hold, then release it. Nothing waits for the
//!   disk (the entries go to the ledger without an ack): the pure actor cost.
//! - `extend`: one hold extension round trip (no flush waited for).
//! - `reserve_settle/tmpfs` and `reserve_settle/disk`: reserve, then settle
//!   with a usage record. Settling answers only once the ledger writer has
//!   flushed the batch holding it, so this includes a group commit: on
//!   `Store::temporary()` (sled puts it in /dev/shm, so the flush is cheap)
//!   and on a real directory of the system temp dir (a real fsync).
//! - `reserve_settle_applied/disk`: the account actor's round trip for
//!   reserve → settle: both answers, the settlement decided and its entries
//!   handed to the ledger (`settle_applied`). The wait for the flush that
//!   follows is not timed (see `reserve_settle/disk` for it).
//! - `reserve_settle_50_concurrent/disk`: 50 tasks doing reserve → settle on
//!   one account at once (one account actor, flushes shared by their batch);
//!   criterion's throughput is round trips per second.
//!
//! Criterion reports the mean per round trip; after it, the per-round-trip
//! distribution (p50, p90, p99, max) is printed, since criterion's samples
//! are means over many round trips and hide the tail.
//!
//! Every actor and the measuring task run on one tokio runtime with ONE
//! worker thread (as the in-process gateway of `benches/load.rs`); the
//! ledger writer is its own thread, as in tokun.

#![expect(
    clippy::expect_used,
    reason = "benchmark setup: a failure should abort the run"
)]
#![expect(
    clippy::print_stdout,
    reason = "prints the per-round-trip distribution criterion does not report"
)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use tokio::runtime::Runtime;
use tokun_actors::account::{Applied, Billed, ReserveRequest, Settled};
use tokun_actors::{AccountsHandle, LedgerHandle};
use tokun_storage::{
    AccountId, AccountRecord, EntryKind, Nanos, Price, Store, UsageRecord, WriteOp, WriterConfig,
};

/// Concurrent requests on one account in `reserve_settle_50_concurrent`.
const CONCURRENT: u64 = 50;

struct Bench {
    runtime: Runtime,
    accounts: AccountsHandle,
    ledger: LedgerHandle,
    account: AccountId,
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy)]
enum Disk {
    Tmpfs,
    Real,
}

impl Bench {
    fn start(disk: Disk) -> Bench {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (store, dir) = match disk {
            Disk::Tmpfs => (Store::temporary().expect("temporary store"), None),
            Disk::Real => {
                let dir = std::env::temp_dir()
                    .join(format!("tokun-bench-account-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                (Store::open(&dir).expect("store on disk"), Some(dir))
            }
        };
        let (accounts, ledger, account) = runtime.block_on(async {
            let ledger = LedgerHandle::start(store.clone(), WriterConfig::default())
                .await
                .expect("ledger");
            let accounts =
                AccountsHandle::start(store.clone(), ledger.clone(), Duration::from_secs(3600))
                    .await
                    .expect("accounts");
            let account = store.next_account_id().expect("account id");
            let record = AccountRecord {
                id: account,
                email: "bench@tokun.local".into(),
                created_ms: 0,
                disabled: false,
                floor: Nanos::ZERO,
                deleted_ms: None,
            };
            ledger
                .append(vec![WriteOp::PutAccount(record)])
                .await
                .expect("put account");
            let credit = Nanos::from_whole_usd(1_000_000_000).expect("credit");
            accounts
                .transfer(account, EntryKind::Topup, credit, "bench credit")
                .await
                .expect("top-up");
            (accounts, ledger, account)
        });
        Bench {
            runtime,
            accounts,
            ledger,
            account,
            dir,
        }
    }

    /// Runs `f` as a task on the runtime's worker (where tokun's handlers run).
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.runtime
            .block_on(self.runtime.spawn(f))
            .expect("bench task")
    }

    fn stop(self) {
        let ledger = self.ledger.clone();
        self.runtime.block_on(async move {
            let _ = ledger.barrier().await;
            ledger.stop().await;
        });
        drop(self.accounts);
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn request(increment_tokens: u64, max_output_tokens: u64) -> ReserveRequest {
    let dollar = Nanos::from_whole_usd(1).expect("price");
    ReserveRequest {
        request_id: "0123456789abcdef".into(),
        key: None,
        key_limit: None,
        price: Price::per_million(dollar, Nanos::from_whole_usd(2).expect("price"), dollar)
            .expect("price"),
        prompt_tokens: 24,
        increment_tokens,
        max_output_tokens,
        checkpoint: None,
    }
}

fn billed() -> Billed {
    Billed {
        prompt_tokens: 24,
        cached_tokens: 0,
        completion_tokens: 64,
        estimated: false,
    }
}

fn usage(account: AccountId) -> UsageRecord {
    UsageRecord {
        request_id: "0123456789abcdef".into(),
        at_ms: 1_700_000_000_000,
        account,
        key: None,
        model: "bench".into(),
        served_model: "upstream-model".into(),
        provider: "mock".into(),
        prompt_tokens: 24,
        completion_tokens: 64,
        cost: Nanos::ZERO,
        estimated: false,
        status: 200,
        transport: "http".into(),
        latency_ms: 1,
        ttft_ms: Some(1),
        error_kind: None,
        cached_tokens: 0,
        route: None,
    }
}

async fn reserve_release(accounts: &AccountsHandle, account: AccountId) {
    let reservation = accounts
        .reserve(account, request(256, 4096))
        .await
        .expect("reserve");
    accounts.release_nowait(account, reservation.hold);
}

async fn reserve_settle(accounts: &AccountsHandle, account: AccountId) {
    let reservation = accounts
        .reserve(account, request(256, 4096))
        .await
        .expect("reserve");
    let settled = accounts
        .settle(account, reservation.hold, billed(), Some(usage(account)))
        .await
        .expect("settle");
    black_box(settled);
}

/// Reserve → settle as the account actor answers it (balance decided,
/// entries handed to the ledger); returns that time. The wait for the
/// ledger's flush follows, untimed, so each round trip starts with the
/// writer idle, as for a lone request.
async fn reserve_settle_applied(accounts: &AccountsHandle, account: AccountId) -> Duration {
    let (elapsed, applied) = timed_reserve_settle(accounts, account).await;
    durable(applied).await;
    elapsed
}

/// Reserve → settle up to the settlement's answer: that time, and the answer.
async fn timed_reserve_settle(
    accounts: &AccountsHandle,
    account: AccountId,
) -> (Duration, Applied<Settled>) {
    let start = Instant::now();
    let reservation = accounts
        .reserve(account, request(256, 4096))
        .await
        .expect("reserve");
    let applied = accounts
        .settle_applied(account, reservation.hold, billed(), Some(usage(account)))
        .await
        .expect("settle");
    let elapsed = start.elapsed();
    black_box(applied.value());
    (elapsed, applied)
}

async fn durable(applied: Applied<Settled>) {
    applied
        .durable(Duration::from_secs(10))
        .await
        .expect("durable");
}

/// Reserve → settle (applied) back to back, as under load: the durability
/// of each settlement is awaited `IN_FLIGHT` round trips later (untimed), so
/// the writer is busy with earlier batches instead of parked. Returns the
/// time of the round trip alone.
async fn reserve_settle_applied_loaded(
    accounts: &AccountsHandle,
    account: AccountId,
    in_flight: &mut VecDeque<Applied<Settled>>,
) -> Duration {
    if in_flight.len() >= IN_FLIGHT {
        if let Some(oldest) = in_flight.pop_front() {
            durable(oldest).await;
        }
    }
    let (elapsed, applied) = timed_reserve_settle(accounts, account).await;
    in_flight.push_back(applied);
    elapsed
}

/// Settlements whose durability is still outstanding in the loaded variant
/// (like 64 streams waiting for their `[DONE]`).
const IN_FLIGHT: usize = 64;

fn applied_loaded_timed(bench: &Bench, iters: u64) -> Duration {
    let (accounts, account) = (bench.accounts.clone(), bench.account);
    bench.run(async move {
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += reserve_settle_applied_loaded(&accounts, account, &mut in_flight).await;
        }
        for applied in in_flight {
            durable(applied).await;
        }
        total
    })
}

fn applied_timed(bench: &Bench, iters: u64) -> Duration {
    let (accounts, account) = (bench.accounts.clone(), bench.account);
    bench.run(async move {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += reserve_settle_applied(&accounts, account).await;
        }
        total
    })
}

/// Times `iters` round trips of `round_trip` on the bench's worker.
fn timed<F, Fut>(bench: &Bench, iters: u64, round_trip: F) -> Duration
where
    F: Fn(AccountsHandle, AccountId) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (accounts, account) = (bench.accounts.clone(), bench.account);
    bench.run(async move {
        let start = Instant::now();
        for _ in 0..iters {
            round_trip(accounts.clone(), account).await;
        }
        start.elapsed()
    })
}

fn extend_timed(bench: &Bench, iters: u64) -> Duration {
    let (accounts, account) = (bench.accounts.clone(), bench.account);
    bench.run(async move {
        // One token per extension and no cap: the hold can grow for every iteration.
        let hold = accounts
            .reserve(account, request(1, 1 << 40))
            .await
            .expect("reserve")
            .hold;
        let start = Instant::now();
        for _ in 0..iters {
            black_box(accounts.extend(account, hold).await.expect("extend"));
        }
        let elapsed = start.elapsed();
        accounts.release_nowait(account, hold);
        elapsed
    })
}

fn concurrent_timed(bench: &Bench, iters: u64) -> Duration {
    let (accounts, account) = (bench.accounts.clone(), bench.account);
    bench.run(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let accounts = accounts.clone();
                let share = iters / CONCURRENT + u64::from(i < iters % CONCURRENT);
                tokio::spawn(async move {
                    for _ in 0..share {
                        reserve_settle(&accounts, account).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        start.elapsed()
    })
}

fn account_round_trips(c: &mut Criterion) {
    let tmpfs = Bench::start(Disk::Tmpfs);
    let mut group = c.benchmark_group("account");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reserve_release", |b| {
        b.iter_custom(|iters| {
            timed(&tmpfs, iters, |accounts, account| async move {
                reserve_release(&accounts, account).await
            })
        });
    });
    group.bench_function("extend", |b| {
        b.iter_custom(|iters| extend_timed(&tmpfs, iters))
    });
    group.bench_function("reserve_settle/tmpfs", |b| {
        b.iter_custom(|iters| {
            timed(&tmpfs, iters, |accounts, account| async move {
                reserve_settle(&accounts, account).await
            })
        });
    });
    tmpfs.stop();

    let disk = Bench::start(Disk::Real);
    group.bench_function("reserve_settle_applied/disk", |b| {
        b.iter_custom(|iters| applied_timed(&disk, iters));
    });
    group.bench_function("reserve_settle_applied_loaded/disk", |b| {
        b.iter_custom(|iters| applied_loaded_timed(&disk, iters));
    });
    group.bench_function("reserve_settle/disk", |b| {
        b.iter_custom(|iters| {
            timed(&disk, iters, |accounts, account| async move {
                reserve_settle(&accounts, account).await
            })
        });
    });
    group.bench_function("reserve_settle_50_concurrent/disk", |b| {
        b.iter_custom(|iters| concurrent_timed(&disk, iters));
    });
    group.finish();
    disk.stop();
}

criterion_group!(benches, account_round_trips);

/// p50/p90/p99/max of `n` individually timed round trips, in µs.
fn distribution<F, Fut>(name: &str, bench: &Bench, n: usize, round_trip: F)
where
    F: Fn(AccountsHandle, AccountId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let round_trip = std::sync::Arc::new(round_trip);
    distribution_of(name, bench, n, move |accounts, account| {
        let round_trip = round_trip.clone();
        async move {
            let start = Instant::now();
            round_trip(accounts, account).await;
            start.elapsed()
        }
    });
}

/// The same for round trips that time themselves.
fn distribution_of<F, Fut>(name: &str, bench: &Bench, n: usize, round_trip: F)
where
    F: Fn(AccountsHandle, AccountId) -> Fut + Send + 'static,
    Fut: Future<Output = Duration> + Send,
{
    let (accounts, account) = (bench.accounts.clone(), bench.account);
    let mut times = bench.run(async move {
        // Warm up (actor spawned, caches hot) before timing.
        for _ in 0..n / 10 {
            round_trip(accounts.clone(), account).await;
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push(round_trip(accounts.clone(), account).await);
        }
        times
    });
    print_distribution(name, &mut times);
}

fn print_distribution(name: &str, times: &mut [Duration]) {
    let n = times.len();
    times.sort_unstable();
    let at = |q: f64| {
        times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1].as_secs_f64()
            * 1e6
    };
    println!(
        "{name:<40} n={n:<6} p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs  max {:>9.1} µs",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

fn distributions() {
    println!("\nPer-round-trip distribution (one worker thread, sequential calls):");
    let tmpfs = Bench::start(Disk::Tmpfs);
    distribution(
        "account/reserve_release",
        &tmpfs,
        20_000,
        |accounts, account| async move {
            reserve_release(&accounts, account).await;
        },
    );
    let (accounts, account) = (tmpfs.accounts.clone(), tmpfs.account);
    let hold = tmpfs.run(async move {
        accounts
            .reserve(account, request(1, 1 << 40))
            .await
            .expect("reserve")
            .hold
    });
    distribution(
        "account/extend",
        &tmpfs,
        20_000,
        move |accounts, account| async move {
            black_box(accounts.extend(account, hold).await.expect("extend"));
        },
    );
    distribution(
        "account/reserve_settle/tmpfs",
        &tmpfs,
        5_000,
        |accounts, account| async move {
            reserve_settle(&accounts, account).await;
        },
    );
    tmpfs.stop();
    let disk = Bench::start(Disk::Real);
    distribution_of(
        "account/reserve_settle_applied/disk",
        &disk,
        2_000,
        |accounts, account| async move { reserve_settle_applied(&accounts, account).await },
    );
    let (accounts, account) = (disk.accounts.clone(), disk.account);
    let mut times = disk.run(async move {
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
        for _ in 0..2_000 {
            reserve_settle_applied_loaded(&accounts, account, &mut in_flight).await;
        }
        let mut times = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            times.push(reserve_settle_applied_loaded(&accounts, account, &mut in_flight).await);
        }
        for applied in in_flight {
            durable(applied).await;
        }
        times
    });
    print_distribution("account/reserve_settle_applied_loaded/disk", &mut times);
    distribution(
        "account/reserve_settle/disk",
        &disk,
        2_000,
        |accounts, account| async move {
            reserve_settle(&accounts, account).await;
        },
    );
    disk.stop();
}

fn main() {
    benches();
    // `cargo bench -- --list` or a filter that matches nothing skip nothing
    // here; the distribution is cheap (a few seconds).
    if !std::env::args().any(|a| a == "--list") {
        distributions();
    }
    Criterion::default().configure_from_args().final_summary();
}
