//! `soak`: mixed open-loop traffic (non-streaming and streaming; billing ON
//! unless `--billing off`) against a child gateway for `--soak-secs`, with tokun's RSS, open file
//! descriptors and live actors sampled every second; after `--soak-warmup`
//! the least-squares slope of each, per minute, is the verdict (a leak grows,
//! a healthy server stays flat).

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

/// One second's reading of the gateway.
struct Reading {
    at: f64,
    rss_mib: f64,
    fds: f64,
    actors: f64,
}

pub(crate) fn soak(env: &Env<'_>) -> anyhow::Result<()> {
    let args = env.args;
    // Billing OFF beside ON splits what the ledger's store keeps from the rest.
    let billing = if args.billing.contains(&Billing::On) {
        Billing::On
    } else {
        Billing::Off
    };
    let gateway = Gateway::start(env, Mode::Child, billing)?;
    let pid = gateway.pid();
    let secs = args.soak_secs;
    let connections = args.concurrency_a.max(2) / 2;
    // Each half of the connections offers half the rate.
    let interval = Duration::from_secs_f64(connections as f64 / (f64::from(args.soak_rate) / 2.0));
    let json = Spec {
        stagger: interval.as_secs_f64(),
        interval: Some(interval),
        ..Spec::json("soak json", connections, secs, 0.0)
    };
    let sse = Spec {
        stagger: interval.as_secs_f64(),
        interval: Some(interval),
        ..Spec::stream("soak sse", connections, secs, 0.0)
    };
    let metrics = gateway.target("/metrics").addr;
    let target = gateway.target("/v1/chat/completions");
    let (readings, outs) = env.client.block_on(async move {
        let begin = Instant::now();
        let end = begin + Duration::from_secs_f64(secs);
        let mut workers = Vec::new();
        for spec in [json, sse] {
            let plan = Arc::new(Plan {
                target: target.clone(),
                body: spec.body(),
                streaming: spec.streaming,
                measure_from: begin,
                end,
                interval: spec.interval,
            });
            for i in 0..spec.concurrency {
                let delay = interval.mul_f64(i as f64 / spec.concurrency as f64);
                workers.push(tokio::spawn(worker(plan.clone(), delay)));
            }
        }
        let mut readings = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < end {
            tick.tick().await;
            readings.push(Reading {
                at: begin.elapsed().as_secs_f64(),
                rss_mib: proc_status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
                fds: open_fds(pid) as f64,
                actors: live_actors(metrics).await.unwrap_or(f64::NAN),
            });
        }
        let mut outs = Vec::new();
        for worker in workers {
            outs.push(worker.await.unwrap_or_default());
        }
        (readings, outs)
    });
    let requests: usize = outs.iter().map(|o| o.samples.len()).sum();
    let errors: u64 = outs.iter().map(|o| o.errors).sum();
    let steady: Vec<&Reading> = readings
        .iter()
        .filter(|r| r.at >= args.soak_warmup)
        .collect();
    println!(
        "soak: {secs:.0} s at {} req/s offered (half streaming), billing {}, child gateway {}: {requests} requests, {errors} errors",
        args.soak_rate,
        if billing == Billing::On { "ON" } else { "OFF" },
        gateway.label()
    );
    for (name, unit, value, limit) in [
        (
            "RSS",
            "MiB",
            (|r: &Reading| r.rss_mib) as fn(&Reading) -> f64,
            1.0,
        ),
        ("open fds", "fds", |r: &Reading| r.fds, 0.0),
        ("live actors", "actors", |r: &Reading| r.actors, 0.0),
    ] {
        let points: Vec<(f64, f64)> = steady.iter().map(|r| (r.at, value(r))).collect();
        let slope = slope_per_minute(&points);
        let (min, max) = points
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| {
                (lo.min(*v), hi.max(*v))
            });
        println!(
            "  {name:<12} after {:.0} s: min {min:.1} max {max:.1} {unit}; slope {slope:+.3} {unit}/min (limit {limit:+.1})  {}",
            args.soak_warmup,
            if slope <= limit { "ok" } else { "OVER" }
        );
    }
    let minutes: Vec<String> = readings
        .iter()
        .filter(|r| (r.at as u64) % 60 == 0)
        .map(|r| format!("{:.0}s {:.1}/{:.0}/{:.0}", r.at, r.rss_mib, r.fds, r.actors))
        .collect();
    println!(
        "  each minute (RSS MiB / fds / actors): {}",
        minutes.join(", ")
    );
    gateway.stop(env);
    Ok(())
}

/// The least-squares slope of `points` (seconds, value), per minute.
fn slope_per_minute(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

fn open_fds(pid: Option<u32>) -> usize {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/fd"),
        None => "/proc/self/fd".to_owned(),
    };
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// The sum of `tokun_actors_alive` over every kind, from `/metrics`.
async fn live_actors(addr: SocketAddr) -> Option<f64> {
    let mut sender = connect(addr).await.ok()?;
    let request = Request::get("/metrics")
        .header(HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    Some(
        text.lines()
            .filter(|line| line.starts_with("tokun_actors_alive"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
    )
}
