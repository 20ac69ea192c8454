//! The results: tables and the comparison with the direct floor.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

pub(crate) fn print_results(results: &[ScenarioResult]) {
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
