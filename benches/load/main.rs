//! End-to-end load benchmark: tokun in front of a mock OpenAI-compatible
//! upstream, driven by an HTTP/1.1 load generator, all on 127.0.0.1.
//!
//! Run it with `cargo bench --bench load` (`-- --help` lists the flags);
//! `benches/README.md` has the commands and the numbers. Every scenario is
//! measured three ways in the same run: `direct` (the load generator calling
//! the mock itself: the floor), tokun with billing OFF (no key, `[billing]
//! enabled = false`) and tokun with billing ON (the demo account's key, a
//! hold before and a durable settlement after every request).
//!
//! - `single`: one connection, one request at a time: non-streaming latency
//!   and streaming time to first token (TTFT).
//! - `a`: non-streaming, `--concurrency-a` (50) connections: req/s, p50/p99.
//! - `b`: streaming `--chunks` (64) content chunks, `--concurrency-b` (50)
//!   connections: streams/s, TTFT, SSE events/s.
//! - `paced`: `a` as an open loop: the `--concurrency-a` connections together
//!   offer each rate of `--paced-rates` (every connection starts a request
//!   every `concurrency / rate` seconds, whether or not the last one took
//!   long): latency at a load the gateway can carry, where `a` measures it
//!   at saturation (p50 ≈ connections / throughput there). Latency is timed
//!   from the send; a request that had to wait for its connection's last one
//!   would hide that wait, so check the run's p99 stays well under the
//!   interval (50 ms at 1,000 req/s).
//! - `console`: the web console's pages at `--console-fill` (10,000)
//!   requests in the log, and A and B beside console loads (`console.rs`).
//! - `c`: slow streams, every event `--token-delay-ms` (20) apart,
//!   `--concurrency-c` (500) connections: TTFT p99, errors, tokun's RSS peak.
//!
//! With `--nginx`, nginx (a pass-through that parses nothing, one worker)
//! joins every run as the floor PEERS.md measures peers against.
//!
//! With `--bare`, every run of `single`, `a`, `paced` and `b` also goes
//! through a bare hyper proxy (`bare.rs`: bodies handed across untouched,
//! one upstream connection per inbound one): the floor of what any gateway
//! adds on this machine.
//!
//! Threads and processes. The mock upstream and the load generator share one
//! tokio runtime with `--client-threads` (1) worker, like the peers' rig where
//! they shared one core. tokun runs either
//! - in this process (`--gateway inproc`, the default for `single`, `a`, `b`)
//!   on its own tokio runtime with `--gateway-threads` (1) worker — "one
//!   core" for its async work; the ledger writer is tokun's own extra thread,
//!   and nothing is pinned, so the OS may spread threads over both cores; or
//! - as a child process `tokun serve --config …` (`--gateway child`, the
//!   default for `c` through `--c-gateway`), whose RSS is tokun's alone
//!   (`/proc/<pid>/status`); with `--pin` the child runs under `taskset` on
//!   one core (its runtime then has one worker) and this process on the other.
//!
//! Timing. Each run has `--warmup` seconds not measured, then `--duration`
//! measured seconds; no request starts after that, and requests still in
//! flight finish (bounded) so their errors count. Rates count requests that
//! completed inside the window; percentiles cover requests that started in
//! it. TTFT is the time from sending the request to the first body bytes (the
//! first SSE event). A streamed response that does not end with
//! `data: [DONE]`, any status other than 200, and any connection error count
//! as errors.
//!
//! This is a benchmark program, not a test: it reports on stdout.

#![expect(clippy::print_stdout, reason = "a benchmark program reports on stdout")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use memchr::memmem;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokun::config::Config;
use tokun::server::RunningServer;

mod bare;
mod console;
mod gateway;
mod generator;
mod machine;
mod mock;
mod nginx;
mod report;
mod soak;

use bare::*;
use gateway::*;
use generator::*;
use machine::*;
use mock::*;
use report::*;

/// Extra time a run may take after its window for in-flight requests to end.
pub(crate) const DRAIN: Duration = Duration::from_secs(20);
/// How often RSS is sampled during a run.
pub(crate) const RSS_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
#[command(about = "tokun end-to-end load benchmark (127.0.0.1 only)")]
pub(crate) struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "single,a,b,c"
    )]
    pub(crate) scenarios: Vec<Scenario>,
    /// Billing modes to measure tokun with.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off,on")]
    pub(crate) billing: Vec<Billing>,
    /// Measured seconds per run (each scenario has a direct, OFF and ON run).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) duration: f64,
    /// Unmeasured seconds before each run's window.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) warmup: f64,
    /// Measured seconds for the one-request-at-a-time runs.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) single_duration: f64,
    #[arg(long, default_value_t = 50)]
    pub(crate) concurrency_a: usize,
    /// Offered req/s of the `paced` runs, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000,5000")]
    pub(crate) paced_rates: Vec<u32>,
    #[arg(long, default_value_t = 50)]
    pub(crate) concurrency_b: usize,
    #[arg(long, default_value_t = 500)]
    pub(crate) concurrency_c: usize,
    /// Content chunks per stream in `single` and `b`.
    #[arg(long, default_value_t = 64)]
    pub(crate) chunks: usize,
    /// Content chunks per slow stream in `c`.
    #[arg(long, default_value_t = 64)]
    pub(crate) c_chunks: usize,
    /// Pause before every event of a slow stream in `c`.
    #[arg(long, default_value_t = 20)]
    pub(crate) token_delay_ms: u64,
    /// Measured seconds for `c`; its warm-up is one slow stream's length,
    /// over which the connections' first requests are spread.
    #[arg(long, default_value_t = 6.0)]
    pub(crate) c_duration: f64,
    /// Also measure a bare hyper proxy (no parsing, one upstream connection
    /// per inbound one) in `single`, `a`, `paced` and `b`: the floor of what
    /// any gateway adds on this machine. It runs on the in-process gateway's
    /// runtime.
    #[arg(long)]
    pub(crate) bare: bool,
    /// Also measure nginx as a pass-through (`nginx.rs`; installed with apt
    /// when missing, skipped when it cannot be): run as a child process,
    /// pinned with `--pin` like tokun.
    #[arg(long)]
    pub(crate) nginx: bool,
    /// Where tokun runs for `single`, `a` and `b`.
    #[arg(long, value_enum, default_value = "inproc")]
    pub(crate) gateway: Mode,
    /// Where tokun runs for `c` (a fresh gateway per billing mode).
    #[arg(long, value_enum, default_value = "child")]
    pub(crate) c_gateway: Mode,
    /// Child gateways run on core 1 (`taskset -c 1`), this process on core 0.
    /// Requires child gateways only.
    #[arg(long)]
    pub(crate) pin: bool,
    /// Worker threads of the in-process gateway's runtime.
    #[arg(long, default_value_t = 1)]
    pub(crate) gateway_threads: usize,
    /// Worker threads of the runtime shared by the mock and the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) client_threads: usize,
    /// The tokun binary for child gateways (default: the one cargo built).
    #[arg(long)]
    pub(crate) tokun_bin: Option<PathBuf>,
    /// Parent folder of the gateways' data dirs (default: the system temp dir).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// `soak`: seconds of mixed traffic (a child gateway, billing ON).
    #[arg(long, default_value_t = 600.0)]
    pub(crate) soak_secs: f64,
    /// `soak`: seconds before the slopes are measured.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) soak_warmup: f64,
    /// `soak`: req/s offered in all, half non-streaming and half streaming.
    #[arg(long, default_value_t = 1000)]
    pub(crate) soak_rate: u32,
    /// `off` sets `[metrics] enabled = false`: no recorder, `/metrics` is 404.
    /// The recorder is process-wide, so compare on and off with `--gateway child`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub(crate) metrics: String,
    /// `console`: completions put in the log before the pages are loaded.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) console_fill: u64,
    /// `console`: measured loads of each page.
    #[arg(long, default_value_t = 200)]
    pub(crate) console_loads: usize,
    /// `console`: also run A and B alone and beside this many console page
    /// loads per second (0: skip).
    #[arg(long, default_value_t = 0)]
    pub(crate) console_rate: u32,
    /// `console`: pages left out of the loads beside A and B (paths as listed).
    #[arg(long, value_delimiter = ',')]
    pub(crate) console_skip: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    Single,
    A,
    Paced,
    B,
    C,
    /// Mixed traffic for `--soak-secs`: RSS, fds and actors must stay flat.
    Soak,
    /// The web console's pages with `--console-fill` requests in the log
    /// (`console.rs`); with `--console-rate`, A and B beside console loads.
    Console,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Billing {
    Off,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Inproc,
    Child,
}

pub(crate) fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.pin {
        if args.gateway != Mode::Child || args.c_gateway != Mode::Child {
            bail!("--pin needs --gateway child (and --c-gateway child)");
        }
        pin(std::process::id(), 0)?;
    }
    print_machine(&args);

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gateway_threads.max(1))
        .thread_name("tokun-gw")
        .enable_all()
        .build()?;
    let mock = Arc::new(Mock::new(
        args.chunks,
        args.c_chunks,
        Duration::from_millis(args.token_delay_ms),
    ));
    let mock_addr = client.block_on(start_mock(mock))?;
    let env = Env {
        args: &args,
        client: &client,
        gateway_rt: &gateway_rt,
        mock: mock_addr,
    };

    let mut results = Vec::new();
    let shared_needed = args
        .scenarios
        .iter()
        .any(|s| !matches!(s, Scenario::C | Scenario::Soak | Scenario::Console));
    let mut shared = Vec::new();
    if shared_needed {
        if args.bare {
            shared.push(Gateway::start_bare(&env)?);
        }
        if args.nginx {
            shared.extend(Gateway::start_nginx(&env)?);
        }
        for billing in &args.billing {
            shared.push(Gateway::start(&env, args.gateway, *billing)?);
        }
    }
    for scenario in &args.scenarios {
        match scenario {
            Scenario::Single => {
                let json = Spec::json("single non-streaming", 1, args.single_duration, args.warmup);
                results.push(run_scenario(&env, &json, &shared)?);
                let sse = Spec::stream("single streaming", 1, args.single_duration, args.warmup);
                results.push(run_scenario(&env, &sse, &shared)?);
            }
            Scenario::A => {
                let spec = Spec::json(
                    "A non-streaming",
                    args.concurrency_a,
                    args.duration,
                    args.warmup,
                );
                results.push(run_scenario(&env, &spec, &shared)?);
            }
            Scenario::Paced => {
                for &rate in &args.paced_rates {
                    let connections = args.concurrency_a.max(1);
                    let interval =
                        Duration::from_secs_f64(connections as f64 / f64::from(rate.max(1)));
                    let name: &'static str =
                        Box::leak(format!("A paced {rate}/s").into_boxed_str());
                    let spec = Spec {
                        stagger: interval.as_secs_f64(),
                        interval: Some(interval),
                        ..Spec::json(name, connections, args.duration, args.warmup)
                    };
                    results.push(run_scenario(&env, &spec, &shared)?);
                }
            }
            Scenario::B => {
                let spec = Spec::stream(
                    "B streaming",
                    args.concurrency_b,
                    args.duration,
                    args.warmup,
                );
                results.push(run_scenario(&env, &spec, &shared)?);
            }
            Scenario::C | Scenario::Soak | Scenario::Console => {}
        }
    }
    for gateway in shared {
        gateway.stop(&env);
    }
    if args.scenarios.contains(&Scenario::C) {
        let stream_secs = (args.c_chunks + 2) as f64 * args.token_delay_ms as f64 / 1e3;
        let spec = Spec {
            slow: true,
            stagger: stream_secs,
            ..Spec::stream(
                "C slow streams",
                args.concurrency_c,
                args.c_duration,
                stream_secs.max(args.warmup),
            )
        };
        let mut fresh = Vec::new();
        if args.nginx {
            fresh.extend(Gateway::start_nginx(&env)?);
        }
        for billing in &args.billing {
            fresh.push(Gateway::start(&env, args.c_gateway, *billing)?);
        }
        results.push(run_scenario(&env, &spec, &fresh)?);
        for gateway in fresh {
            gateway.stop(&env);
        }
    }
    if args.scenarios.contains(&Scenario::Soak) {
        soak::soak(&env)?;
    }
    if args.scenarios.contains(&Scenario::Console) {
        console::console(&env)?;
    }
    print_results(&results);
    gateway_rt.shutdown_timeout(Duration::from_secs(5));
    client.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

pub(crate) struct Env<'a> {
    pub(crate) args: &'a Args,
    pub(crate) client: &'a Runtime,
    pub(crate) gateway_rt: &'a Runtime,
    pub(crate) mock: SocketAddr,
}
