//! The load generator: keep-alive workers, one request after another, and the scenarios.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: HeaderValue,
    pub(crate) path: &'static str,
    pub(crate) auth: Option<HeaderValue>,
}

impl Target {
    pub(crate) fn new(addr: SocketAddr, path: &'static str, auth: Option<HeaderValue>) -> Target {
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
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) streaming: bool,
    pub(crate) slow: bool,
    pub(crate) concurrency: usize,
    pub(crate) duration: f64,
    pub(crate) warmup: f64,
    /// Connection `i` of `n` starts its first request `i / n × stagger` late.
    pub(crate) stagger: f64,
    /// Open loop: every connection starts a request each `interval` (the
    /// offered rate is `concurrency / interval`), not one after another.
    pub(crate) interval: Option<Duration>,
}

impl Spec {
    pub(crate) fn json(name: &'static str, concurrency: usize, duration: f64, warmup: f64) -> Spec {
        Spec {
            name,
            streaming: false,
            slow: false,
            concurrency,
            duration,
            warmup,
            stagger: 0.0,
            interval: None,
        }
    }

    pub(crate) fn stream(
        name: &'static str,
        concurrency: usize,
        duration: f64,
        warmup: f64,
    ) -> Spec {
        Spec {
            name,
            streaming: true,
            slow: false,
            concurrency,
            duration,
            warmup,
            stagger: 0.0,
            interval: None,
        }
    }

    pub(crate) fn body(&self) -> Bytes {
        let model = if self.slow { "bench-slow" } else { "bench" };
        Bytes::from(format!(
            r#"{{"model":"{model}","stream":{},"messages":[{{"role":"user","content":"Say hello to tokun, then count to three."}}]}}"#,
            self.streaming
        ))
    }

    pub(crate) fn path(&self) -> &'static str {
        if self.slow {
            "/slow/v1/chat/completions"
        } else {
            "/v1/chat/completions"
        }
    }
}

pub(crate) struct Plan {
    pub(crate) target: Target,
    pub(crate) body: Bytes,
    pub(crate) streaming: bool,
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
    pub(crate) interval: Option<Duration>,
}

#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) ttft: Duration,
    pub(crate) events: u32,
}

#[derive(Default)]
pub(crate) struct WorkerOut {
    pub(crate) samples: Vec<Sample>,
    pub(crate) errors: u64,
    pub(crate) reconnects: u64,
    pub(crate) billed: u64,
    pub(crate) first_error: Option<String>,
}

impl WorkerOut {
    pub(crate) fn error(&mut self, error: String, counts: bool) {
        if counts {
            self.errors += 1;
            self.first_error.get_or_insert(error);
        }
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
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
pub(crate) struct SseScan {
    pub(crate) events: u32,
    pub(crate) tail: Vec<u8>,
}

pub(crate) const DATA: &[u8] = b"data: ";

impl SseScan {
    pub(crate) fn feed(&mut self, data: &[u8]) {
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

pub(crate) async fn one_request(
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

pub(crate) async fn worker(plan: Arc<Plan>, delay: Duration) -> WorkerOut {
    tokio::time::sleep(delay).await;
    let mut out = WorkerOut::default();
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    let mut due = Instant::now();
    while Instant::now() < plan.end {
        if let Some(interval) = plan.interval {
            // Open loop: the next request is due one interval after the last
            // was due, however long that one took (a late request goes at
            // once, it does not shift the schedule).
            tokio::time::sleep_until(due.into()).await;
            due += interval;
            if Instant::now() >= plan.end {
                break;
            }
        }
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
pub(crate) struct Percentiles {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

pub(crate) fn percentiles(mut values: Vec<Duration>) -> Percentiles {
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

pub(crate) struct Outcome {
    pub(crate) via: String,
    pub(crate) concurrency: usize,
    pub(crate) completed: usize,
    pub(crate) rate: f64,
    pub(crate) events_rate: f64,
    pub(crate) latency: Percentiles,
    pub(crate) ttft: Percentiles,
    pub(crate) errors: u64,
    pub(crate) reconnects: u64,
    /// Connections the mock accepted during the whole run, and requests made.
    pub(crate) mock_connections: u64,
    pub(crate) requests: usize,
    pub(crate) billed: u64,
    pub(crate) first_error: Option<String>,
    /// Sampled peak RSS during the run and the kernel's high-water mark, KiB.
    pub(crate) rss_peak: Option<u64>,
    pub(crate) hwm: Option<u64>,
    pub(crate) rss_idle: Option<u64>,
    /// CPU seconds used during the measured window.
    pub(crate) cpu: Cpu,
    pub(crate) rss_of: &'static str,
}

pub(crate) struct ScenarioResult {
    pub(crate) spec: Spec,
    pub(crate) outcomes: Vec<Outcome>,
}

pub(crate) fn run_scenario(
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
pub(crate) fn run_load(
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
    let interval = spec.interval;
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
            interval,
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
