//! The machine: CPU model, load average, pinning, and CPU and memory of threads from `/proc`.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

pub(crate) fn print_machine(args: &Args) {
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

pub(crate) fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pins every thread of `pid` to `core` with `taskset` (children inherit it).
pub(crate) fn pin(pid: u32, core: usize) -> anyhow::Result<()> {
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
pub(crate) fn proc_status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
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
pub(crate) struct Cpu {
    pub(crate) gateway: Option<f64>,
    pub(crate) client: f64,
}

/// Sums `utime + stime` (clock ticks) of `pid`'s threads whose name passes `keep`.
pub(crate) fn thread_ticks(pid: Option<u32>, keep: impl Fn(&str) -> bool) -> u64 {
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
pub(crate) fn gateway_ticks(pid: Option<u32>) -> u64 {
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
pub(crate) async fn cpu_during(gateway: Option<Option<u32>>, from: Instant, to: Instant) -> Cpu {
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
