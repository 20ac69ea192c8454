//! WebSocket load benchmark: many completions open at once on `/v1/ws`,
//! each streaming slowly, against a `tokun serve` child process whose RSS is
//! tokun's alone (`/proc/<pid>/status`).
//!
//! Run it with `cargo bench --bench ws_load` (`-- --help` lists the flags);
//! `benches/README.md` has the command and the numbers. `--sockets` sockets
//! each keep `--per-socket` completions running: when one ends (`done`), the
//! client starts the next on the same socket, so `sockets × per-socket`
//! completions stay open for the whole window. The upstream is tokun's
//! built-in `echo` provider with `--token-delay-ms` (20) between tokens and
//! `--tokens` (100) tokens per reply: no network upstream, so what is
//! measured is tokun's WebSocket edge, stream actors and billing.
//!
//! Reported: completions open (min over the window), completions finished,
//! chunks/s, the gap between two chunks of one completion as the client saw
//! it (p50/p99/max: 20 ms when tokun keeps up), time to first chunk, errors
//! (an `error` message, a socket that closed or failed), tokun's RSS (idle,
//! peak, high-water mark), its CPU seconds in the window, and how long
//! `GET /admin/actors` takes with all those stream actors alive (polled every
//! `--actors-poll-ms`).
//!
//! This is a benchmark program, not a test: it reports on stdout.

#![expect(clippy::print_stdout, reason = "a benchmark program reports on stdout")]

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod actors_view;
mod child;

use actors_view::poll_actors;
use child::{cpu_seconds, proc_kib, spawn_tokun};

/// The bench gateway's admin token (a throwaway data dir on 127.0.0.1).
const ADMIN_TOKEN: &str = "bench-admin-token";

#[derive(Debug, Parser)]
#[command(about = "tokun WebSocket load benchmark (127.0.0.1 only)")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Completions each socket keeps running.
    #[arg(long, default_value_t = 10)]
    per_socket: usize,
    #[arg(long, default_value_t = 20)]
    token_delay_ms: u64,
    /// Tokens per reply.
    #[arg(long, default_value_t = 100)]
    tokens: u32,
    /// Seconds over which the first completions are started (spread evenly);
    /// default: one reply's length.
    #[arg(long)]
    ramp: Option<f64>,
    /// Measured seconds, after every completion was started and `--warmup`.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Accounts the sockets are spread over (billing on): one account actor
    /// serializes its account's holds, and real traffic has many accounts.
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// `off`: no key, nothing held or settled (the edge and stream actors alone).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    billing: String,
    /// tokun runs on core 1 (`taskset -c 1`), this process on the rest.
    #[arg(long)]
    pin: bool,
    /// The tokun binary (default: the one cargo built).
    #[arg(long)]
    tokun_bin: Option<PathBuf>,
    /// How often `GET /admin/actors` is timed during the window (0: never).
    #[arg(long, default_value_t = 500)]
    actors_poll_ms: u64,
    /// Where `/admin/actors` is polled: `operator` = the `server.admin_listen`
    /// listener (its own thread), `main` = the API listener.
    #[arg(long, default_value = "operator", value_parser = ["operator", "main"])]
    actors_via: String,
}

/// Counters shared by every socket task.
#[derive(Default)]
struct Stats {
    open: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
    chunks: AtomicU64,
    errors: AtomicU64,
    socket_failures: AtomicU64,
    measuring: AtomicBool,
    stopping: AtomicBool,
    /// Chunk gaps and first-chunk times in 1 ms buckets (the last one: 10 s or more).
    gaps: Histogram,
    first: Histogram,
}

struct Histogram(Vec<AtomicU64>);

impl Default for Histogram {
    fn default() -> Self {
        Self((0..10_001).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Histogram {
    fn record(&self, elapsed: Duration) {
        let ms = (elapsed.as_millis() as usize).min(self.0.len() - 1);
        self.0[ms].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile and the maximum, in ms.
    fn quantiles(&self, qs: &[f64]) -> (Vec<usize>, usize) {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let at = |q: f64| {
            let target = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts
                .iter()
                .position(|c| {
                    seen += c;
                    seen >= target
                })
                .unwrap_or(0)
        };
        let max = counts.iter().rposition(|c| *c > 0).unwrap_or(0);
        (qs.iter().map(|q| at(*q)).collect(), max)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("tokun-ws-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut child, addr, key, operator) = spawn_tokun(&args, &dir)?;
    let pid = child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()?;
    let actors_at = if args.actors_via == "operator" {
        operator
    } else {
        addr
    };
    let result = runtime.block_on(run(&args, addr, key.as_deref(), pid, actors_at));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    args: &Args,
    addr: SocketAddr,
    key: Option<&str>,
    pid: u32,
    actors_at: SocketAddr,
) -> anyhow::Result<()> {
    let target = (args.sockets * args.per_socket) as u64;
    println!(
        "ws_load: {} sockets × {} completions = {target} open, {} tokens × {} ms, billing {}{}, {} client thread(s){}",
        args.sockets,
        args.per_socket,
        args.tokens,
        args.token_delay_ms,
        args.billing,
        if key.is_some() {
            format!(" over {} accounts", args.accounts)
        } else {
            String::new()
        },
        args.client_threads,
        if args.pin {
            ", tokun pinned to core 1"
        } else {
            ""
        }
    );
    let rss_idle = proc_kib(pid, "VmRSS:");
    let stats = Arc::new(Stats::default());
    // At most this many handshakes at once: the listen backlog is finite.
    let handshakes = Arc::new(Semaphore::new(256));
    let ramp = Instant::now();
    let reply = Duration::from_millis(args.token_delay_ms) * args.tokens;
    let plan = Arc::new(Plan {
        addr,
        keys: match key {
            Some(_) => create_accounts(addr, args.accounts.max(1)).await?,
            None => Vec::new(),
        },
        sockets: args.sockets,
        per_socket: args.per_socket,
        start: tokio::time::Instant::now(),
        ramp: args.ramp.map_or(reply, Duration::from_secs_f64),
    });
    let mut sockets = Vec::with_capacity(args.sockets);
    for n in 0..args.sockets {
        let (stats, handshakes, plan) = (stats.clone(), handshakes.clone(), plan.clone());
        sockets.push(tokio::spawn(async move {
            if let Err(error) = socket(n, &plan, &stats, &handshakes).await {
                if !stats.stopping.load(Ordering::Relaxed) {
                    println!("socket {n}: {error:#}");
                }
                stats.socket_failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while stats.started.load(Ordering::Relaxed) < target {
        if stats.socket_failures.load(Ordering::Relaxed) > 0 {
            bail!("a socket failed during the ramp-up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "all {target} completions started in {:.1} s",
        ramp.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let cpu_before = cpu_seconds(pid);
    let client_before = cpu_seconds(std::process::id());
    let (finished_before, chunks_before) = (
        stats.finished.load(Ordering::Relaxed),
        stats.chunks.load(Ordering::Relaxed),
    );
    stats.measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    let poller = (args.actors_poll_ms > 0).then(|| {
        let every = Duration::from_millis(args.actors_poll_ms);
        let until = window + Duration::from_secs_f64(args.duration);
        tokio::spawn(poll_actors(actors_at, every, until))
    });
    let (mut rss_peak, mut open_min) = (0, u64::MAX);
    while window.elapsed().as_secs_f64() < args.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_peak = rss_peak.max(proc_kib(pid, "VmRSS:").unwrap_or(0));
        open_min = open_min.min(stats.open.load(Ordering::Relaxed));
    }
    let seconds = window.elapsed().as_secs_f64();
    stats.measuring.store(false, Ordering::Relaxed);
    let actors_view = match poller {
        Some(poller) => Some(poller.await??),
        None => None,
    };
    let client = cpu_seconds(std::process::id())
        .zip(client_before)
        .map(|(after, before)| after - before);
    let cpu = cpu_seconds(pid)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let finished = stats.finished.load(Ordering::Relaxed) - finished_before;
    let chunks = stats.chunks.load(Ordering::Relaxed) - chunks_before;
    stats.stopping.store(true, Ordering::Relaxed);
    let rss_hwm = proc_kib(pid, "VmHWM:");
    for socket in sockets {
        socket.abort();
    }
    let (gaps, gap_max) = stats.gaps.quantiles(&[0.5, 0.99]);
    let (first, first_max) = stats.first.quantiles(&[0.5, 0.99]);
    let mib =
        |kib: Option<u64>| kib.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    println!("window {seconds:.1} s");
    println!("  completions open (min)   {open_min} of {target}");
    println!(
        "  completions finished     {finished} ({:.0}/s)",
        finished as f64 / seconds
    );
    println!(
        "  chunks                   {:.0}/s",
        chunks as f64 / seconds
    );
    println!(
        "  chunk gap p50/p99/max    {} / {} / {} ms",
        gaps[0], gaps[1], gap_max
    );
    println!(
        "  first chunk p50/p99/max  {} / {} / {} ms",
        first[0], first[1], first_max
    );
    println!(
        "  errors                   {} error messages, {} failed sockets",
        stats.errors.load(Ordering::Relaxed),
        stats.socket_failures.load(Ordering::Relaxed)
    );
    println!(
        "  tokun RSS idle/peak/HWM  {} / {} / {}",
        mib(rss_idle),
        mib(Some(rss_peak)),
        mib(rss_hwm)
    );
    println!(
        "  tokun CPU                {}",
        cpu.map_or("?".into(), |c| format!(
            "{c:.1} s ({:.0}% of a core)",
            100.0 * c / seconds
        ))
    );
    if let Some(view) = actors_view {
        let mut micros = view.latencies;
        micros.sort_unstable();
        let at =
            |q: f64| micros[((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1];
        println!(
            "  GET /admin/actors ({})  {} polls, p50/p99/max {:.2} / {:.2} / {:.2} ms, {}–{} live stream actors ({}–{} bytes)",
            args.actors_via,
            micros.len(),
            at(0.5) as f64 / 1000.0,
            at(0.99) as f64 / 1000.0,
            at(1.0) as f64 / 1000.0,
            view.streams_min,
            view.streams_max,
            view.bytes_min,
            view.bytes_max,
        );
    }
    println!(
        "  load generator CPU       {}",
        client.map_or("?".into(), |c| format!(
            "{c:.1} s ({:.0}% of a core)",
            100.0 * c / seconds
        ))
    );
    Ok(())
}

/// Where the sockets go and when their first completions start.
struct Plan {
    addr: SocketAddr,
    /// One key per account; empty with billing off.
    keys: Vec<String>,
    sockets: usize,
    per_socket: usize,
    start: tokio::time::Instant,
    ramp: Duration,
}

/// One socket: keeps `per_socket` completions running until told to stop.
async fn socket(
    n: usize,
    plan: &Plan,
    stats: &Stats,
    handshakes: &Semaphore,
) -> anyhow::Result<()> {
    let mut request = format!("ws://{}/v1/ws", plan.addr).into_client_request()?;
    if let Some(key) = plan.keys.get(n % plan.keys.len().max(1)) {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
    }
    let permit = handshakes.acquire().await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    drop(permit);
    // Per completion id: when it started and when its last chunk came.
    let mut running: HashMap<String, (Instant, Option<Instant>)> = HashMap::new();
    let mut next_id = 0u64;
    // The first completions start spread over the ramp, interleaved across sockets.
    let total = (plan.sockets * plan.per_socket) as f64;
    let mut first_starts = (0..plan.per_socket)
        .map(|k| plan.start + plan.ramp.mul_f64((k * plan.sockets + n) as f64 / total))
        .peekable();
    loop {
        let wake = first_starts.peek().copied();
        let message = tokio::select! {
            message = ws.next() => message,
            () = tokio::time::sleep_until(wake.unwrap_or(plan.start)), if wake.is_some() => {
                first_starts.next();
                start(&mut ws, n, &mut next_id, &mut running, stats).await?;
                continue;
            }
        };
        let Some(message) = message else { break };
        let Message::Text(text) = message? else {
            continue;
        };
        let id = message_id(&text)
            .context("a message without id")?
            .to_owned();
        let measuring = stats.measuring.load(Ordering::Relaxed);
        if text.starts_with(r#"{"type":"chunk""#) {
            stats.chunks.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            if let Some((started, last)) = running.get_mut(&id) {
                if measuring {
                    match last {
                        Some(last) => stats.gaps.record(now - *last),
                        None => stats.first.record(now - *started),
                    }
                }
                *last = Some(now);
            }
        } else if text.starts_with(r#"{"type":"done""#) {
            running.remove(&id);
            stats.open.fetch_sub(1, Ordering::Relaxed);
            stats.finished.fetch_add(1, Ordering::Relaxed);
            if !stats.stopping.load(Ordering::Relaxed) {
                start(&mut ws, n, &mut next_id, &mut running, stats).await?;
            }
        } else if text.starts_with(r#"{"type":"error""#) {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            println!("error: {text}");
        }
    }
    bail!("socket {n} closed")
}

async fn start(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    n: usize,
    next_id: &mut u64,
    running: &mut HashMap<String, (Instant, Option<Instant>)>,
    stats: &Stats,
) -> anyhow::Result<()> {
    let id = format!("s{n}-{next_id}");
    *next_id += 1;
    let create = format!(
        r#"{{"type":"chat.completion.create","id":"{id}","request":{{"model":"bench-slow","stream":true,"messages":[{{"role":"user","content":"Tell me about WebSockets"}}]}}}}"#
    );
    ws.send(Message::text(create)).await?;
    running.insert(id, (Instant::now(), None));
    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.started.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Creates `n` accounts with ample credit through the admin API; their keys.
async fn create_accounts(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let created: serde_json::Value = client
            .post(format!("http://{addr}/admin/accounts"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"email": format!("bench{i}@example.com"), "credit_usd": "100000"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        keys.push(
            created["api_key"]
                .as_str()
                .context("an api_key")?
                .to_owned(),
        );
    }
    Ok(keys)
}

/// The `id` of a server message, which tokun writes right after `type`.
fn message_id(text: &str) -> Option<&str> {
    let start = text.find(r#""id":""#)? + 6;
    let end = start + text[start..].find('"')?;
    Some(&text[start..end])
}
