//! A permit round trip through a provider actor, as a stream actor makes it
//! before every upstream attempt: `acquire` (one call to the actor, which
//! checks the breaker, the buckets and the concurrency cap) and `finish`
//! (one cast reporting the outcome). Limits are configured so every check
//! runs; none is ever exhausted. One tokio worker thread, as in the gateway.
//! After criterion's mean, the per-round-trip p50/p99 are printed.

#![expect(
    clippy::expect_used,
    reason = "benchmark setup: a failure should abort the run"
)]
#![expect(
    clippy::print_stdout,
    reason = "prints the per-round-trip distribution criterion does not report"
)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use tokun_actors::provider::{Outcome, ProviderHandle, ProviderLimits};

fn limits() -> ProviderLimits {
    ProviderLimits {
        rpm: Some(u32::MAX / 2),
        tpm: Some(u32::MAX / 2),
        max_concurrency: Some(1_000_000),
        ..ProviderLimits::default()
    }
}

fn permit_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let provider = runtime
        .block_on(ProviderHandle::start("bench".into(), limits()))
        .expect("provider actor");
    c.bench_function("provider/permit_round_trip", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    provider
                        .acquire(100)
                        .await
                        .expect("permit")
                        .finish(Outcome::Success);
                }
                started.elapsed()
            })
        });
    });
    let samples = runtime.block_on(async {
        let mut samples = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let started = Instant::now();
            provider
                .acquire(100)
                .await
                .expect("permit")
                .finish(Outcome::Success);
            samples.push(started.elapsed());
        }
        samples
    });
    report(samples);
}

fn report(mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "provider/permit_round_trip: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1]
    );
}

criterion_group!(benches, permit_round_trip);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
