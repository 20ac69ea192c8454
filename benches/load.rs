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
//! - `c`: slow streams, every event `--token-delay-ms` (20) apart,
//!   `--concurrency-c` (500) connections: TTFT p99, errors, tokun's RSS peak.
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

/// Extra time a run may take after its window for in-flight requests to end.
const DRAIN: Duration = Duration::from_secs(20);
/// How often RSS is sampled during a run.
const RSS_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
#[command(about = "tokun end-to-end load benchmark (127.0.0.1 only)")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "single,a,b,c"
    )]
    scenarios: Vec<Scenario>,
    /// Billing modes to measure tokun with.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off,on")]
    billing: Vec<Billing>,
    /// Measured seconds per run (each scenario has a direct, OFF and ON run).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Unmeasured seconds before each run's window.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Measured seconds for the one-request-at-a-time runs.
    #[arg(long, default_value_t = 2.0)]
    single_duration: f64,
    #[arg(long, default_value_t = 50)]
    concurrency_a: usize,
    #[arg(long, default_value_t = 50)]
    concurrency_b: usize,
    #[arg(long, default_value_t = 500)]
    concurrency_c: usize,
    /// Content chunks per stream in `single` and `b`.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Content chunks per slow stream in `c`.
    #[arg(long, default_value_t = 64)]
    c_chunks: usize,
    /// Pause before every event of a slow stream in `c`.
    #[arg(long, default_value_t = 20)]
    token_delay_ms: u64,
    /// Measured seconds for `c`; its warm-up is one slow stream's length,
    /// over which the connections' first requests are spread.
    #[arg(long, default_value_t = 6.0)]
    c_duration: f64,
    /// Where tokun runs for `single`, `a` and `b`.
    #[arg(long, value_enum, default_value = "inproc")]
    gateway: Mode,
    /// Where tokun runs for `c` (a fresh gateway per billing mode).
    #[arg(long, value_enum, default_value = "child")]
    c_gateway: Mode,
    /// Child gateways run on core 1 (`taskset -c 1`), this process on core 0.
    /// Requires child gateways only.
    #[arg(long)]
    pin: bool,
    /// Worker threads of the in-process gateway's runtime.
    #[arg(long, default_value_t = 1)]
    gateway_threads: usize,
    /// Worker threads of the runtime shared by the mock and the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// The tokun binary for child gateways (default: the one cargo built).
    #[arg(long)]
    tokun_bin: Option<PathBuf>,
    /// Parent folder of the gateways' data dirs (default: the system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `off` sets `[metrics] enabled = false`: no recorder, `/metrics` is 404.
    /// The recorder is process-wide, so compare on and off with `--gateway child`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    metrics: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Single,
    A,
    B,
    C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Billing {
    Off,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Inproc,
    Child,
}

fn main() -> anyhow::Result<()> {
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
    let shared_needed = args.scenarios.iter().any(|s| *s != Scenario::C);
    let mut shared = Vec::new();
    if shared_needed {
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
            Scenario::B => {
                let spec = Spec::stream(
                    "B streaming",
                    args.concurrency_b,
                    args.duration,
                    args.warmup,
                );
                results.push(run_scenario(&env, &spec, &shared)?);
            }
            Scenario::C => {}
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
        for billing in &args.billing {
            fresh.push(Gateway::start(&env, args.c_gateway, *billing)?);
        }
        results.push(run_scenario(&env, &spec, &fresh)?);
        for gateway in fresh {
            gateway.stop(&env);
        }
    }
    print_results(&results);
    gateway_rt.shutdown_timeout(Duration::from_secs(5));
    client.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

struct Env<'a> {
    args: &'a Args,
    client: &'a Runtime,
    gateway_rt: &'a Runtime,
    mock: SocketAddr,
}

// ---------------------------------------------------------------- machine

fn print_machine(args: &Args) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("# tokun load benchmark");
    println!(
        "machine: {cpus} CPUs available to this process, {model}, Linux {}",
        kernel.trim()
    );
    println!("load average at start: {}", loadavg());
    println!(
        "gateway: {:?} for single/A/B, {:?} for C; gateway runtime workers (inproc): {}; mock+client runtime workers: {}; pinned: {}",
        args.gateway, args.c_gateway, args.gateway_threads, args.client_threads, args.pin
    );
    println!(
        "window: {}s measured after {}s warm-up ({}s for single); chunks: {} (B), {} every {} ms (C)",
        args.duration,
        args.warmup,
        args.single_duration,
        args.chunks,
        args.c_chunks,
        args.token_delay_ms
    );
    println!();
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pins every thread of `pid` to `core` with `taskset` (children inherit it).
fn pin(pid: u32, core: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("taskset (util-linux) is needed for --pin")?;
    if !status.success() {
        bail!("taskset failed: {status}");
    }
    Ok(())
}

/// `VmRSS` or `VmHWM` of a process, in KiB.
fn proc_status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds used in the measured window by tokun and by the load
/// generator + mock (this process's `bench-client` threads).
#[derive(Default, Clone, Copy)]
struct Cpu {
    gateway: Option<f64>,
    client: f64,
}

/// Sums `utime + stime` (clock ticks) of `pid`'s threads whose name passes `keep`.
fn thread_ticks(pid: Option<u32>, keep: impl Fn(&str) -> bool) -> u64 {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            let (head, tail) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1;
            if !keep(name) {
                return None;
            }
            let fields: Vec<&str> = tail.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Some(ticks(11) + ticks(12))
        })
        .sum()
}

/// Clock ticks used by the process (`Some(pid)`: all of it, exited threads
/// included) or by this process's tokun threads (`None`: in-process gateway).
fn gateway_ticks(pid: Option<u32>) -> u64 {
    match pid {
        Some(pid) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, t)| t)
                .split_whitespace()
                .collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            ticks(11) + ticks(12)
        }
        None => thread_ticks(None, |name| {
            name.starts_with("tokun-") || name.starts_with("sled-")
        }),
    }
}

/// CPU used between `from` and `to`; `gateway`: as in `run_load`'s `rss`.
async fn cpu_during(gateway: Option<Option<u32>>, from: Instant, to: Instant) -> Cpu {
    let tick = 1.0 / 100.0; // USER_HZ on Linux
    let client = || thread_ticks(None, |name| name.starts_with("bench-client"));
    tokio::time::sleep_until(from.into()).await;
    let (gateway_start, client_start) = (gateway.map(gateway_ticks), client());
    tokio::time::sleep_until(to.into()).await;
    let (gateway_end, client_end) = (gateway.map(gateway_ticks), client());
    Cpu {
        gateway: gateway_start
            .zip(gateway_end)
            .map(|(a, b)| b.saturating_sub(a) as f64 * tick),
        client: client_end.saturating_sub(client_start) as f64 * tick,
    }
}

// ---------------------------------------------------------------- mock upstream

/// A lean OpenAI-compatible upstream: canned bodies, no bookkeeping.
/// `/v1/chat/completions` answers at once; `/slow/v1/chat/completions`
/// streams with a pause before every event but the usage chunk and `[DONE]`.
struct Mock {
    completion: Bytes,
    fast: Arc<[Bytes]>,
    slow: Arc<[Bytes]>,
    fast_usage: Bytes,
    slow_usage: Bytes,
    done: Bytes,
    delay: Duration,
}

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

fn sse_chunk(delta: &str, finish: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
         \"model\":\"upstream-model\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{{\"index\":0,\
         \"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

fn usage_chunk(completion_tokens: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
         \"model\":\"upstream-model\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{completion_tokens},\
         \"total_tokens\":{}}}}}\n\n",
        completion_tokens + 12
    ))
}

/// Role chunk, `tokens` content chunks, finish chunk.
fn stream_frames(tokens: usize) -> Arc<[Bytes]> {
    let mut frames = Vec::with_capacity(tokens + 2);
    frames.push(sse_chunk(r#"{"role":"assistant","content":""}"#, "null"));
    frames.extend((0..tokens).map(|i| sse_chunk(&format!(r#"{{"content":" tok{i}"}}"#), "null")));
    frames.push(sse_chunk("{}", r#""stop""#));
    frames.into()
}

impl Mock {
    fn new(chunks: usize, slow_chunks: usize, delay: Duration) -> Mock {
        let completion = Bytes::from_static(
            br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"upstream-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark's mock upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20},"system_fingerprint":"fp_bench"}"#,
        );
        Mock {
            completion,
            fast: stream_frames(chunks),
            slow: stream_frames(slow_chunks),
            fast_usage: usage_chunk(chunks),
            slow_usage: usage_chunk(slow_chunks),
            done: Bytes::from_static(b"data: [DONE]\n\n"),
            delay,
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<MockBody> {
        let slow = request.uri().path().starts_with("/slow/");
        let body = request
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut response = if memmem::find(&body, br#""stream":true"#).is_none() {
            let mut response = Response::new(Full::new(self.completion.clone()).boxed_unsync());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        } else {
            let include_usage = memmem::find(&body, br#""include_usage":true"#).is_some();
            let (frames, usage, delay) = if slow {
                (self.slow.clone(), self.slow_usage.clone(), self.delay)
            } else {
                (self.fast.clone(), self.fast_usage.clone(), Duration::ZERO)
            };
            let tail: Vec<Bytes> = include_usage
                .then_some(usage)
                .into_iter()
                .chain([self.done.clone()])
                .collect();
            let delayed = frames.len();
            let events = stream::unfold(
                (0usize, frames, tail),
                move |(i, frames, tail)| async move {
                    let frame = if i < delayed {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        frames[i].clone()
                    } else {
                        tail.get(i - delayed)?.clone()
                    };
                    Some((
                        Ok::<_, Infallible>(Frame::data(frame)),
                        (i + 1, frames, tail),
                    ))
                },
            );
            let mut response = Response::new(StreamBody::new(events).boxed_unsync());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            response
        };
        *response.status_mut() = StatusCode::OK;
        response
    }
}

/// Connections the mock accepted: tokun's upstream connections during a run
/// through tokun (the pool should keep them to about the concurrency).
static MOCK_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

async fn start_mock(mock: Arc<Mock>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors, most likely: back off.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            MOCK_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
            let mock = mock.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let mock = mock.clone();
                    async move { Ok::<_, Infallible>(mock.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------- tokun

struct Gateway {
    billing: Billing,
    addr: SocketAddr,
    key: Option<String>,
    dir: PathBuf,
    kind: GatewayKind,
}

enum GatewayKind {
    InProc(Box<RunningServer>),
    Child {
        child: Child,
        stderr: Arc<Mutex<VecDeque<String>>>,
    },
}

fn gateway_toml(mock: SocketAddr, billing: Billing, metrics: bool, dir: &Path) -> String {
    let dir = toml::Value::String(dir.display().to_string());
    let enabled = billing == Billing::On;
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = {dir}
shutdown_grace_secs = 5

[log]
level = "warn"

[metrics]
enabled = {metrics}

[billing]
enabled = {enabled}
demo_credit_usd = 1000000.0

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-mock"
first_byte_timeout_ms = 30000
idle_timeout_ms = 30000

[[providers]]
name = "mock-slow"
kind = "openai"
base_url = "http://{mock}/slow/v1"
api_key = "sk-mock"
first_byte_timeout_ms = 30000
idle_timeout_ms = 30000

[[models]]
id = "bench"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "mock", model = "upstream-model" }}]

[[models]]
id = "bench-slow"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "mock-slow", model = "upstream-model" }}]
"#
    )
}

static GATEWAYS: AtomicU64 = AtomicU64::new(0);

impl Gateway {
    fn start(env: &Env<'_>, mode: Mode, billing: Billing) -> anyhow::Result<Gateway> {
        let parent = env.args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let n = GATEWAYS.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("tokun-load-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let toml = gateway_toml(env.mock, billing, env.args.metrics == "on", &dir);
        match mode {
            Mode::Inproc => {
                let config = Config::parse(&toml, |_| None).context("bench config")?;
                let server = env.gateway_rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    RunningServer::start(config, listener).await
                })?;
                let key = server.first_start().demo_key.clone();
                Ok(Gateway {
                    billing,
                    addr: server.addr(),
                    key,
                    dir,
                    kind: GatewayKind::InProc(Box::new(server)),
                })
            }
            Mode::Child => Self::spawn_child(env, billing, dir, &toml),
        }
    }

    fn spawn_child(
        env: &Env<'_>,
        billing: Billing,
        dir: PathBuf,
        toml: &str,
    ) -> anyhow::Result<Gateway> {
        let config_path = dir.join("bench.toml");
        std::fs::write(&config_path, toml)?;
        let bin = env
            .args
            .tokun_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokun")));
        let mut command = if env.args.pin {
            let mut command = Command::new("taskset");
            command.args(["-c", "1"]).arg(&bin);
            command
        } else {
            Command::new(&bin)
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (found, ready) = std::sync::mpsc::channel::<(Option<SocketAddr>, Option<String>)>();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let lines = tail.clone();
        // Reads the announcement, then keeps draining stderr (a full pipe would block tokun).
        std::thread::spawn(move || {
            let mut key = None;
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(start) = line.find("sk-tokun-") {
                    key = line[start..].split_whitespace().next().map(str::to_owned);
                }
                if !sent && line.contains("listening on http://") {
                    let addr = line
                        .rsplit("http://")
                        .next()
                        .and_then(|a| a.trim().parse().ok());
                    let _ = found.send((addr, key.clone()));
                    sent = true;
                }
                let mut tail = lines.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            if !sent {
                let _ = found.send((None, None));
            }
        });
        let announced = ready.recv_timeout(Duration::from_secs(60));
        let Ok((Some(addr), key)) = announced else {
            let _ = child.kill();
            let _ = child.wait();
            let tail: Vec<String> = tail
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            bail!(
                "the tokun child did not announce its address; stderr:\n{}",
                tail.join("\n")
            );
        };
        Ok(Gateway {
            billing,
            addr,
            key,
            dir,
            kind: GatewayKind::Child {
                child,
                stderr: tail,
            },
        })
    }

    fn pid(&self) -> Option<u32> {
        match &self.kind {
            GatewayKind::InProc(_) => None,
            GatewayKind::Child { child, .. } => Some(child.id()),
        }
    }

    fn label(&self) -> String {
        let billing = match self.billing {
            Billing::Off => "OFF",
            Billing::On => "ON",
        };
        let kind = match self.kind {
            GatewayKind::InProc(_) => "inproc",
            GatewayKind::Child { .. } => "child",
        };
        format!("tokun {kind} billing {billing}")
    }

    fn target(&self, path: &'static str) -> Target {
        let auth = match (self.billing, &self.key) {
            (Billing::On, Some(key)) => HeaderValue::from_str(&format!("Bearer {key}")).ok(),
            _ => None,
        };
        Target::new(self.addr, path, auth)
    }

    fn stop(self, env: &Env<'_>) {
        match self.kind {
            GatewayKind::InProc(server) => {
                if let Err(error) = env.gateway_rt.block_on(server.shutdown()) {
                    println!("(gateway shutdown: {error})");
                }
            }
            GatewayKind::Child { mut child, stderr } => {
                // SIGTERM the child we started (by its pid), then wait a bounded time.
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let tail = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                let warnings = tail
                    .iter()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .count();
                if warnings > 0 {
                    println!(
                        "(the tokun child logged {warnings} warning/error lines; last: {:?})",
                        tail.back()
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- load generator

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    path: &'static str,
    auth: Option<HeaderValue>,
}

impl Target {
    fn new(addr: SocketAddr, path: &'static str, auth: Option<HeaderValue>) -> Target {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or(HeaderValue::from_static("127.0.0.1"));
        Target {
            addr,
            host,
            path,
            auth,
        }
    }
}

/// One scenario's shape.
#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    streaming: bool,
    slow: bool,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    /// Connection `i` of `n` starts its first request `i / n × stagger` late.
    stagger: f64,
}

impl Spec {
    fn json(name: &'static str, concurrency: usize, duration: f64, warmup: f64) -> Spec {
        Spec {
            name,
            streaming: false,
            slow: false,
            concurrency,
            duration,
            warmup,
            stagger: 0.0,
        }
    }

    fn stream(name: &'static str, concurrency: usize, duration: f64, warmup: f64) -> Spec {
        Spec {
            name,
            streaming: true,
            slow: false,
            concurrency,
            duration,
            warmup,
            stagger: 0.0,
        }
    }

    fn body(&self) -> Bytes {
        let model = if self.slow { "bench-slow" } else { "bench" };
        Bytes::from(format!(
            r#"{{"model":"{model}","stream":{},"messages":[{{"role":"user","content":"Say hello to tokun, then count to three."}}]}}"#,
            self.streaming
        ))
    }

    fn path(&self) -> &'static str {
        if self.slow {
            "/slow/v1/chat/completions"
        } else {
            "/v1/chat/completions"
        }
    }
}

struct Plan {
    target: Target,
    body: Bytes,
    streaming: bool,
    measure_from: Instant,
    end: Instant,
}

#[derive(Clone, Copy)]
struct Sample {
    start: Instant,
    end: Instant,
    ttft: Duration,
    events: u32,
}

#[derive(Default)]
struct WorkerOut {
    samples: Vec<Sample>,
    errors: u64,
    reconnects: u64,
    billed: u64,
    first_error: Option<String>,
}

impl WorkerOut {
    fn error(&mut self, error: String, counts: bool) {
        if counts {
            self.errors += 1;
            self.first_error.get_or_insert(error);
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Counts `data: ` across frame boundaries; keeps the stream's last bytes.
#[derive(Default)]
struct SseScan {
    events: u32,
    tail: Vec<u8>,
}

const DATA: &[u8] = b"data: ";

impl SseScan {
    fn feed(&mut self, data: &[u8]) {
        let carry = self.tail.len().min(DATA.len() - 1);
        let mut edge = self.tail[self.tail.len() - carry..].to_vec();
        edge.extend_from_slice(&data[..data.len().min(DATA.len() - 1)]);
        self.events += memmem::find_iter(&edge, DATA)
            .filter(|&at| at < carry)
            .count() as u32;
        self.events += memmem::find_iter(data, DATA).count() as u32;
        if data.len() >= 64 {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - 64..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(64);
            self.tail.drain(..excess);
        }
    }
}

async fn one_request(
    sender: &mut SendRequest<Full<Bytes>>,
    plan: &Plan,
) -> Result<(Sample, bool), String> {
    let mut request = Request::post(plan.target.path)
        .header(HOST, plan.target.host.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(auth) = &plan.target.auth {
        request = request.header(AUTHORIZATION, auth.clone());
    }
    let request = request
        .body(Full::new(plan.body.clone()))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    // Sent only when an account paid for the request.
    let billed = response.headers().contains_key("x-tokun-balance-remaining");
    let mut body = response.into_body();
    let mut ttft = None;
    let mut scan = SseScan::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if data.is_empty() {
                continue;
            }
            ttft.get_or_insert_with(|| start.elapsed());
            scan.feed(&data);
        }
    }
    let end = Instant::now();
    if status != StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&scan.tail)
        ));
    }
    if plan.streaming && !scan.tail.ends_with(b"data: [DONE]\n\n") {
        return Err(format!(
            "stream ended without [DONE]: {:?}",
            String::from_utf8_lossy(&scan.tail)
        ));
    }
    let ttft = ttft.unwrap_or(end - start);
    Ok((
        Sample {
            start,
            end,
            ttft,
            events: scan.events,
        },
        billed,
    ))
}

async fn worker(plan: Arc<Plan>, delay: Duration) -> WorkerOut {
    tokio::time::sleep(delay).await;
    let mut out = WorkerOut::default();
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < plan.end {
        let mut sender = match connection.take() {
            Some(sender) => sender,
            None => match connect(plan.target.addr).await {
                Ok(sender) => sender,
                Err(error) => {
                    out.error(error, Instant::now() >= plan.measure_from);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            out.reconnects += 1;
            continue;
        }
        let started = Instant::now();
        match one_request(&mut sender, &plan).await {
            Ok((sample, billed)) => {
                out.samples.push(sample);
                out.billed += u64::from(billed);
                connection = Some(sender);
            }
            Err(error) => out.error(error, started >= plan.measure_from),
        }
    }
    out
}

#[derive(Default, Clone, Copy)]
struct Percentiles {
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut values: Vec<Duration>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_unstable();
    let at =
        |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

struct Outcome {
    via: String,
    concurrency: usize,
    completed: usize,
    rate: f64,
    events_rate: f64,
    latency: Percentiles,
    ttft: Percentiles,
    errors: u64,
    reconnects: u64,
    /// Connections the mock accepted during the whole run, and requests made.
    mock_connections: u64,
    requests: usize,
    billed: u64,
    first_error: Option<String>,
    /// Sampled peak RSS during the run and the kernel's high-water mark, KiB.
    rss_peak: Option<u64>,
    hwm: Option<u64>,
    rss_idle: Option<u64>,
    /// CPU seconds used during the measured window.
    cpu: Cpu,
    rss_of: &'static str,
}

struct ScenarioResult {
    spec: Spec,
    outcomes: Vec<Outcome>,
}

fn run_scenario(
    env: &Env<'_>,
    spec: &Spec,
    gateways: &[Gateway],
) -> anyhow::Result<ScenarioResult> {
    let spec = *spec;
    let mut outcomes = Vec::new();
    let direct = Target::new(env.mock, spec.path(), None);
    outcomes.push(run_load(env, &spec, direct, "direct (mock)".into(), None)?);
    for gateway in gateways {
        let rss = Some(gateway.pid());
        outcomes.push(run_load(
            env,
            &spec,
            gateway.target("/v1/chat/completions"),
            gateway.label(),
            rss,
        )?);
    }
    for outcome in &outcomes {
        let ttft = if spec.streaming {
            format!(
                "  TTFT p50 {:>8.3} ms  p99 {:>8.3} ms",
                ms(outcome.ttft.p50),
                ms(outcome.ttft.p99)
            )
        } else {
            String::new()
        };
        println!(
            "{:<22} {:<28} {:>8.0}/s  p50 {:>8.3} ms  p99 {:>8.3} ms{ttft}  errors {}{}",
            spec.name,
            outcome.via,
            outcome.rate,
            ms(outcome.latency.p50),
            ms(outcome.latency.p99),
            outcome.errors,
            outcome
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(ScenarioResult { spec, outcomes })
}

/// Runs `spec` against `target`. `rss` says where tokun is: `None` for a
/// direct run, `Some(None)` in this process, `Some(Some(pid))` a child. Its
/// CPU time is measured over the window, and for slow streams (`c`) its RSS
/// (this whole process's when in-process) is sampled.
fn run_load(
    env: &Env<'_>,
    spec: &Spec,
    target: Target,
    via: String,
    rss: Option<Option<u32>>,
) -> anyhow::Result<Outcome> {
    let warmup = Duration::from_secs_f64(spec.warmup);
    let stagger = Duration::from_secs_f64(spec.stagger);
    let window = Duration::from_secs_f64(spec.duration);
    let concurrency = spec.concurrency.max(1);
    let body = spec.body();
    let streaming = spec.streaming;
    let rss_idle = rss.and_then(|pid| proc_status_kib(pid, "VmRSS:"));
    let sample_rss = rss.is_some() && spec.slow;
    let connections_before = MOCK_CONNECTIONS.load(Ordering::Relaxed);
    let outcome = env.client.block_on(async move {
        let begin = Instant::now();
        let plan = Arc::new(Plan {
            target,
            body,
            streaming,
            measure_from: begin + warmup,
            end: begin + warmup + window,
        });
        let cpu = tokio::spawn(cpu_during(rss, plan.measure_from, plan.end));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = rss.filter(|_| sample_rss).map(|pid| {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                while sampling.load(Ordering::Relaxed) {
                    peak = peak.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
                    tokio::time::sleep(RSS_EVERY).await;
                }
                peak
            })
        });
        let workers: Vec<_> = (0..concurrency)
            .map(|i| {
                tokio::spawn(worker(
                    plan.clone(),
                    stagger.mul_f64(i as f64 / concurrency as f64),
                ))
            })
            .collect();
        let mut merged = WorkerOut::default();
        for handle in workers {
            match tokio::time::timeout_at((plan.end + DRAIN).into(), handle).await {
                Ok(Ok(out)) => {
                    merged.samples.extend(out.samples);
                    merged.errors += out.errors;
                    merged.reconnects += out.reconnects;
                    merged.billed += out.billed;
                    if merged.first_error.is_none() {
                        merged.first_error = out.first_error;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    merged.errors += 1;
                    merged
                        .first_error
                        .get_or_insert_with(|| "a worker hung past the drain deadline".into());
                }
            }
        }
        sampling.store(false, Ordering::Relaxed);
        let rss_peak = match sampler {
            Some(sampler) => sampler.await.ok(),
            None => None,
        };
        let cpu = cpu.await.unwrap_or_default();
        (plan, merged, rss_peak, cpu)
    });
    let (plan, merged, rss_peak, cpu) = outcome;
    let mock_connections = MOCK_CONNECTIONS.load(Ordering::Relaxed) - connections_before;
    let in_window: Vec<&Sample> = merged
        .samples
        .iter()
        .filter(|s| s.end >= plan.measure_from && s.end <= plan.end)
        .collect();
    let started_in_window: Vec<&Sample> = merged
        .samples
        .iter()
        .filter(|s| s.start >= plan.measure_from)
        .collect();
    let secs = window.as_secs_f64();
    let events: u64 = in_window.iter().map(|s| u64::from(s.events)).sum();
    Ok(Outcome {
        via,
        concurrency,
        completed: in_window.len(),
        rate: in_window.len() as f64 / secs,
        events_rate: events as f64 / secs,
        latency: percentiles(started_in_window.iter().map(|s| s.end - s.start).collect()),
        ttft: percentiles(started_in_window.iter().map(|s| s.ttft).collect()),
        errors: merged.errors,
        reconnects: merged.reconnects,
        mock_connections,
        requests: merged.samples.len(),
        billed: merged.billed,
        first_error: merged.first_error,
        rss_peak,
        hwm: rss
            .filter(|_| sample_rss)
            .and_then(|pid| proc_status_kib(pid, "VmHWM:")),
        rss_idle: rss_idle.filter(|_| sample_rss),
        cpu,
        rss_of: match rss.filter(|_| sample_rss) {
            Some(Some(_)) => "tokun process",
            Some(None) => "whole bench process (client+mock+tokun)",
            None => "",
        },
    })
}

// ---------------------------------------------------------------- report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn print_results(results: &[ScenarioResult]) {
    println!();
    println!("## Results (load average now: {})", loadavg());
    println!();
    println!(
        "| scenario | via | conn | done in window | rate /s | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | SSE events /s | errors | reconnects | mock conns / requests | billed | tokun CPU % / µs per req | client+mock CPU % | RSS idle / peak / HWM MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for result in results {
        for o in &result.outcomes {
            let rss = if o.rss_of.is_empty() {
                "".to_owned()
            } else {
                format!(
                    "{} / {} / {} ({})",
                    mib(o.rss_idle),
                    mib(o.rss_peak),
                    mib(o.hwm),
                    o.rss_of
                )
            };
            let stream = result.spec.streaming;
            let secs = result.spec.duration;
            let gateway_cpu = o.cpu.gateway.map_or_else(String::new, |cpu| {
                let per = cpu / (o.completed.max(1) as f64) * 1e6;
                format!("{:.0} % / {per:.0}", 100.0 * cpu / secs)
            });
            let client_cpu = format!("{:.0} %", 100.0 * o.cpu.client / secs);
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                result.spec.name,
                o.via,
                o.concurrency,
                o.completed,
                o.rate,
                ms(o.latency.p50),
                ms(o.latency.p99),
                if stream {
                    format!("{:.3}", ms(o.ttft.p50))
                } else {
                    "".into()
                },
                if stream {
                    format!("{:.3}", ms(o.ttft.p99))
                } else {
                    "".into()
                },
                if stream {
                    format!("{:.0}", o.events_rate)
                } else {
                    "".into()
                },
                o.errors,
                o.reconnects,
                o.mock_connections,
                o.requests,
                o.billed,
                gateway_cpu,
                client_cpu,
                rss
            );
        }
    }
    println!();
    println!("## Against the direct floor of the same run");
    println!();
    for result in results {
        let Some(direct) = result.outcomes.first() else {
            continue;
        };
        for o in result.outcomes.iter().skip(1) {
            let added = |a: Duration, b: Duration| (ms(a) - ms(b)) * 1e3;
            if result.spec.streaming {
                println!(
                    "- {} / {}: {:.0}% of direct streams/s, SSE events/s ratio {:.2}, TTFT p50 {:+.0} µs, p99 {:+.0} µs, full stream p50 {:+.0} µs",
                    result.spec.name,
                    o.via,
                    100.0 * o.rate / direct.rate.max(f64::MIN_POSITIVE),
                    o.events_rate / direct.events_rate.max(f64::MIN_POSITIVE),
                    added(o.ttft.p50, direct.ttft.p50),
                    added(o.ttft.p99, direct.ttft.p99),
                    added(o.latency.p50, direct.latency.p50),
                );
            } else {
                println!(
                    "- {} / {}: {:.0}% of direct req/s, latency p50 {:+.0} µs, p99 {:+.0} µs",
                    result.spec.name,
                    o.via,
                    100.0 * o.rate / direct.rate.max(f64::MIN_POSITIVE),
                    added(o.latency.p50, direct.latency.p50),
                    added(o.latency.p99, direct.latency.p99),
                );
            }
        }
    }
}
