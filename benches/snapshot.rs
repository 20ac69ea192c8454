//! Postgres snapshot benchmark, against the local Postgres
//! (`TOKUN_TEST_PG_URL`, a fresh schema per measurement):
//!
//! - `throughput`: a store of `--entries` ledger entries snapshotted into an
//!   empty schema, best of `--rounds`: entries/s (the whole snapshot:
//!   entries, balances, accounts, keys, request metadata, one transaction).
//! - `latency`: a tokun server (billing on, echo provider) whose store holds
//!   `--entries` entries, under an open-loop load: `--concurrency`
//!   keep-alive connections together start `--rate` non-streaming
//!   completions a second on a fixed schedule (a slow answer does not
//!   delay the next request), from their own thread and runtime. Latency
//!   with no snapshot running (baseline, `--baseline-secs`), then while a
//!   full snapshot of the store runs (Postgres emptied before each round),
//!   alternating for `--rounds` rounds; mean/p50/p90/p99 of both, per round
//!   and pooled. An open loop at a rate the server carries is how a
//!   production gateway sees load; a closed loop at saturation would only
//!   measure how the CPU the snapshot takes (it and Postgres share the 2
//!   cores with tokun) slows everything.
//! - `--control`: the latency run with an outside client COPying synthetic
//!   rows into a scratch table at the same pace instead of a snapshot: what
//!   Postgres ingesting on the same two cores costs by itself.
//!
//! Run: `TOKUN_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench snapshot`.
//! Numbers: `benches/README.md`. A benchmark program, not a test: it reports on stdout.

#![expect(clippy::print_stdout, reason = "a benchmark program reports on stdout")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark fails loudly"
)]

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use pg_support::{TestSchema, build_ledger, key_secret, pg_url};
use tokun::config::Config;
use tokun::server::RunningServer;
use tokun_storage::{AccountId, Store};

#[derive(Parser)]
struct Args {
    /// Ledger entries in the store.
    #[arg(long, default_value_t = 300_000)]
    entries: u64,
    /// Accounts the entries are spread over.
    #[arg(long, default_value_t = 1_000)]
    accounts: u64,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Connections sending completions in the latency run.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Completions per second the connections start together (open loop).
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Seconds of baseline load.
    #[arg(long, default_value_t = 5)]
    baseline_secs: u64,
    /// `postgres.max_rows_per_sec` for the latency run (0: unpaced).
    #[arg(long, default_value_t = 0)]
    max_rows_per_sec: u64,
    /// `[ledger] cache_mib` of the server (default: tokun's).
    #[arg(long)]
    cache_mib: Option<u64>,
    /// Print when each window starts (seconds since the latency run began)
    /// and p50/p99 per half second of every snapshot window.
    #[arg(long)]
    timeline: bool,
    /// Control run: in each snapshot window, tokun takes no snapshot; an
    /// outside client (its own thread and connection) COPies synthetic
    /// ledger rows into a scratch table shaped like `ledger_entries` at
    /// `--max-rows-per-sec` for `--control-secs`. What that costs the
    /// requests is what Postgres ingesting at that pace on the same two
    /// cores costs, with none of tokun's snapshot code running.
    #[arg(long)]
    control: bool,
    /// Length of each control window.
    #[arg(long, default_value_t = 20)]
    control_secs: u64,
    /// Skip the throughput measurement.
    #[arg(long)]
    latency_only: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if !args.latency_only {
            throughput(&args).await;
        }
        latency(&args).await;
    });
}

async fn throughput(args: &Args) {
    let store = Store::temporary().unwrap();
    let built = Instant::now();
    build_ledger(&store, args.accounts, args.entries, 0);
    println!(
        "built {} entries in {:.1}s",
        store.last_seq().unwrap(),
        built.elapsed().as_secs_f64()
    );
    let mut best = f64::MAX;
    for round in 0..args.rounds {
        let schema = TestSchema::new().await;
        let mut conn = schema.target().connect("tokun-bench").await.unwrap();
        let report = tokun_storage::postgres::snapshot(&store, &mut conn)
            .await
            .unwrap();
        let secs = report.duration.as_secs_f64();
        best = best.min(secs);
        println!(
            "throughput round {round}: {} entries, {} rows in {secs:.2}s = {:.0} entries/s",
            report.entries,
            report.rows(),
            report.entries as f64 / secs
        );
        drop(conn);
        schema.drop_schema().await;
    }
    println!(
        "throughput best: {:.0} entries/s",
        store.last_seq().unwrap() as f64 / best
    );
}

async fn latency(args: &Args) {
    let began = Instant::now();
    let data = std::env::temp_dir().join(format!("tokun-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    {
        let store = Store::open(data.join("ledger")).unwrap();
        build_ledger(&store, args.accounts, args.entries, 0);
    }
    let schema = TestSchema::new().await;
    let toml = format!(
        "[postgres]\nurl = \"{}\"\nschema = \"{}\"\nsnapshot_interval_secs = 3600\nmax_rows_per_sec = {}\n",
        pg_url(),
        schema.name,
        args.max_rows_per_sec
    );
    let toml = match args.cache_mib {
        Some(mib) => format!("{toml}[ledger]\ncache_mib = {mib}\n"),
        None => toml,
    };
    let mut config = Config::parse(&toml, |_| None).unwrap();
    config.server.data_dir = data.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = RunningServer::start(config, listener).await.unwrap();
    let snapshots = server.services().snapshots.clone().unwrap();
    // The startup snapshot copies everything; wait for it before measuring.
    // Twice: the actor's first tick may be queued behind the first call, and
    // a tick still running when a round resets the schema would deadlock
    // with the reset, fail, and run again (a full copy) inside the round's
    // baseline window.
    for _ in 0..2 {
        snapshots
            .snapshot_now(Duration::from_secs(600))
            .await
            .unwrap();
    }
    let url = format!("http://{}/v1/chat/completions", server.addr());

    // Baseline and snapshot windows alternate, so drift over the run (the
    // store growing, the disk's mood, Postgres's background work after the
    // TRUNCATE) lands on both sides.
    let mut baseline = Vec::new();
    let mut during = Vec::new();
    // What the "during" windows measure.
    let what = if args.control {
        "outside COPY"
    } else {
        "snapshot"
    };
    for round in 0..args.rounds {
        schema
            .client
            .batch_execute(
                "TRUNCATE ledger_entries, balances, open_holds, requests; \
                 UPDATE snapshot_state SET last_seq = 0",
            )
            .await
            .unwrap();
        // Let Postgres settle after the TRUNCATE before the baseline window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if args.timeline {
            println!(
                "round {round}: baseline from t = {:.1} s",
                began.elapsed().as_secs_f64()
            );
        }
        let before = load(
            &url,
            args,
            LoadUntil::For(Duration::from_secs(args.baseline_secs)),
        )
        .await;
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        if args.timeline {
            println!(
                "round {round}: {what} from t = {:.1} s",
                began.elapsed().as_secs_f64()
            );
        }
        let while_running = if args.control {
            let (schema_name, rate, secs) = (
                schema.name.clone(),
                args.max_rows_per_sec.max(1),
                args.control_secs,
            );
            let copier = std::thread::spawn(move || {
                let rows = outside_copy(&schema_name, rate, Duration::from_secs(secs));
                flag.store(false, Ordering::SeqCst);
                rows
            });
            let while_running = load(&url, args, LoadUntil::While(running)).await;
            let rows = copier.join().unwrap();
            println!(
                "round {round}: control: an outside COPY of {rows} rows in {secs} s, no snapshot"
            );
            while_running
        } else {
            let handle = snapshots.clone();
            let snapshot = tokio::spawn(async move {
                let report = handle.snapshot_now(Duration::from_secs(600)).await.unwrap();
                flag.store(false, Ordering::SeqCst);
                report
            });
            let while_running = load(&url, args, LoadUntil::While(running)).await;
            let report = snapshot.await.unwrap();
            println!(
                "round {round}: snapshot under load: {} entries in {:.2}s = {:.0} entries/s",
                report.entries,
                report.duration.as_secs_f64(),
                report.entries as f64 / report.duration.as_secs_f64()
            );
            while_running
        };
        report_line(&format!("  without {what}"), &before);
        report_line(&format!("  during {what}"), &while_running);
        if args.timeline {
            timeline(&while_running);
        }
        baseline.extend(before);
        during.extend(while_running);
    }
    report_line(&format!("without {what}, all rounds"), &baseline);
    report_line(&format!("during {what}, all rounds"), &during);
    server.shutdown().await.unwrap();
    schema.drop_schema().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// The control's outside client: on this thread, its own runtime and
/// connection, one COPY into `control_entries` (created like
/// `ledger_entries`, emptied first) of text rows sent in slices of 500,
/// each when the rows before it are due at `rows_per_sec`, for `length`.
/// Returns the rows Postgres took.
fn outside_copy(schema: &str, rows_per_sec: u64, length: Duration) -> u64 {
    use futures_util::SinkExt;
    use std::fmt::Write;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
        config.options(format!("-c search_path={schema}"));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS control_entries (LIKE ledger_entries INCLUDING ALL); \
                 TRUNCATE control_entries",
            )
            .await
            .unwrap();
        let sink = client
            .copy_in::<_, bytes::Bytes>("COPY control_entries FROM STDIN")
            .await
            .unwrap();
        let mut sink = std::pin::pin!(sink);
        let started = tokio::time::Instant::now();
        let mut seq = 0u64;
        while started.elapsed() < length {
            let mut slice = String::with_capacity(500 * 120);
            for _ in 0..500 {
                seq += 1;
                let account = 1 + seq % 1_000;
                writeln!(
                    slice,
                    "{seq}\t{}\t{account}\tsettle\t-{}\t{seq}\treq-{seq:016x}\t\\N\tf\t{}\t0",
                    1_700_000_000_000 + seq,
                    1_000 + seq % 977,
                    1_000_000_000 - seq
                )
                .unwrap();
            }
            sink.send(bytes::Bytes::from(slice)).await.unwrap();
            let due = Duration::from_secs_f64(seq as f64 / rows_per_sec as f64);
            tokio::time::sleep_until(started + due).await;
        }
        sink.as_mut().finish().await.unwrap()
    })
}

/// One completion: when it was sent and how long it took.
#[derive(Clone, Copy)]
struct Sample {
    sent: Instant,
    took: Duration,
}

enum LoadUntil {
    For(Duration),
    While(Arc<AtomicBool>),
}

/// Latencies of non-streaming completions: `--concurrency` connections,
/// each starting one every `concurrency / rate` seconds, on their own
/// thread and current-thread runtime (off the server's workers).
async fn load(url: &str, args: &Args, until: LoadUntil) -> Vec<Sample> {
    let (url, accounts, concurrency) = (url.to_owned(), args.accounts, args.concurrency.max(1));
    let interval = Duration::from_secs_f64(concurrency as f64 / f64::from(args.rate.max(1)));
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let latencies = runtime.block_on(open_loop(url, accounts, concurrency, interval, until));
        let _ = done.send(latencies);
    });
    result.await.unwrap()
}

async fn open_loop(
    url: String,
    accounts: u64,
    concurrency: usize,
    interval: Duration,
    until: LoadUntil,
) -> Vec<Sample> {
    let until = Arc::new(until);
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..concurrency {
        let account = AccountId::new(1 + client as u64 % accounts);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let (url, until, key) = (url.clone(), until.clone(), key_secret(account));
        // Connection `client` of `n` is due first `client / n` of an interval in.
        let mut due = started + interval.mul_f64(client as f64 / concurrency as f64);
        clients.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "model": "echo-mini",
                "messages": [{"role": "user", "content": "Say hello to tokun"}],
            });
            let mut latencies = Vec::new();
            loop {
                tokio::time::sleep_until(due.into()).await;
                due += interval;
                let go_on = match &*until {
                    LoadUntil::For(limit) => started.elapsed() < *limit,
                    LoadUntil::While(running) => running.load(Ordering::SeqCst),
                };
                if !go_on {
                    return latencies;
                }
                let sent = Instant::now();
                let response = http.post(&url).bearer_auth(&key).json(&body).send().await;
                let response = response.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                latencies.push(Sample {
                    sent,
                    took: sent.elapsed(),
                });
            }
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    all
}

/// p50 and p99 of each half second of a window.
fn timeline(samples: &[Sample]) {
    let Some(first) = samples.iter().map(|s| s.sent).min() else {
        return;
    };
    let mut buckets: std::collections::BTreeMap<u64, Vec<Sample>> = Default::default();
    for sample in samples {
        let slot = (sample.sent - first).as_millis() as u64 / 500;
        buckets.entry(slot).or_default().push(*sample);
    }
    for (slot, bucket) in buckets {
        report_line(&format!("    {:>5.1}s", slot as f64 / 2.0), &bucket);
    }
}

fn report_line(label: &str, samples: &[Sample]) {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.took).collect();
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    let mean = latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / latencies.len() as f64;
    println!(
        "{label}: {} requests, mean {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        mean * 1000.0,
        at(0.5),
        at(0.9),
        at(0.99)
    );
}
