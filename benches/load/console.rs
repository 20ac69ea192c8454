//! `console`: the web console's pages with a full request log (issue 18,
//! Performance: ≤ 5 ms p99 server time at 10,000 requests in the log, and
//! serving the console never slows the API).
//!
//! 1. A child gateway (billing ON, `--pin` honoured) gets `--console-fill`
//!    (10,000) real completions through the API with the demo key, 50
//!    connections as fast as it answers: real usage records in its store,
//!    one in ten for a second model (`bench-b`) so a model filter has
//!    something to find.
//! 2. The bench signs in as `demo@tokun.local` the way a person does
//!    (`POST /login`, the code from the child's log line `sign-in code for
//!    <email>: <code>`, `POST /login/code`) and keeps the session cookie.
//! 3. Each page (`/`, `/activity`, `/activity?model=bench-b`, one request's
//!    page linked from `/activity`, `/keys`, `/billing`,
//!    `/billing/statement`, `/account`) is loaded `--console-loads` times,
//!    one at a time on one keep-alive connection, the pages taken in turn,
//!    after 10 unmeasured rounds and 3 s for the fill's writes to settle.
//!    The time is the client's, from sending the request to the last body
//!    byte, over 127.0.0.1: an upper bound on the server's time.
//! 4. With `--console-rate R` (> 0), A and B run against the same gateway
//!    without and with R console page loads per second beside them (an open
//!    loop rotating through the pages, each load on its own connection),
//!    alternating which goes first over two rounds; the report gives the
//!    ratios with ÷ without. `--console-skip` leaves pages out of that
//!    rotation (to show which page costs what).

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

const EMAIL: &str = "demo@tokun.local";
/// Unmeasured loads of each page before its measured ones.
const WARM_LOADS: usize = 10;
/// Seconds between the fill and the first page load.
const SETTLE_SECS: u64 = 3;

/// One page load's answer.
struct Loaded {
    status: StatusCode,
    body: Bytes,
    cookie: Option<String>,
    took: Duration,
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> Result<Loaded, String> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if let Some(cookie) = cookie {
        request = request.header(hyper::header::COOKIE, cookie);
    }
    if form.is_some() {
        request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let request = request
        .body(Full::new(Bytes::from(form.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let start = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let cookie = response
        .headers()
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("tokun_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Loaded {
        status,
        body,
        cookie,
        took: start.elapsed(),
    })
}

/// Percent-encodes a form value (the email's `@`).
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn console(env: &Env<'_>) -> anyhow::Result<()> {
    let args = env.args;
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let n = GATEWAYS.fetch_add(1, Ordering::Relaxed);
    let dir = parent.join(format!("tokun-load-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The sign-in code is logged at INFO by the mailer; everything else stays at WARN.
    let toml = gateway_toml(env.mock, Billing::On, args.metrics == "on", &dir).replace(
        "level = \"warn\"",
        "level = \"warn,tokun::console::mail=info\"",
    ) + r#"
[[models]]
id = "bench-b"
price = { input = 3.0, output = 6.0 }
routes = [{ provider = "mock", model = "upstream-model" }]
"#;
    let gateway = Gateway::spawn_child(env, Billing::On, dir, &toml)?;
    let result = measure(env, &gateway);
    gateway.stop(env);
    result
}

fn measure(env: &Env<'_>, gateway: &Gateway) -> anyhow::Result<()> {
    let args = env.args;
    let addr = gateway.addr;
    let auth = gateway
        .target("/v1/chat/completions")
        .auth
        .context("the child did not print the demo key")?;
    println!(
        "console: {} (pid {:?}), filling the log with {} requests",
        gateway.label(),
        gateway.pid(),
        args.console_fill
    );
    let fill_started = Instant::now();
    let filled = env.client.block_on(fill(addr, auth, args.console_fill))?;
    println!(
        "  filled: {filled} completions in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );
    let GatewayKind::Child { stderr, .. } = &gateway.kind else {
        bail!("the console scenario needs a child gateway");
    };
    // The writer's last flushes and sled's page-outs after the fill are not the console's.
    std::thread::sleep(Duration::from_secs(SETTLE_SECS));
    let cookie = env.client.block_on(sign_in(addr, stderr))?;
    let pages = env.client.block_on(pages(addr, &cookie))?;
    println!(
        "  {} loads of each page, one at a time, the pages taken in turn, after {WARM_LOADS} unmeasured rounds; client time over 127.0.0.1 (send → last byte), an upper bound on server time",
        args.console_loads
    );
    let measured = env
        .client
        .block_on(load_pages(addr, &pages, &cookie, args.console_loads))?;
    let mut over = 0;
    for (page, (mut times, size)) in pages.iter().zip(measured) {
        times.sort_unstable();
        let p = percentiles(times.clone());
        let max = times.last().copied().unwrap_or_default();
        let met = p.p99 <= Duration::from_millis(5);
        over += usize::from(!met);
        println!(
            "  {page:<40} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  {:>7} bytes  {}",
            ms(p.p50),
            ms(p.p99),
            ms(max),
            size,
            if met { "≤ 5 ms" } else { "OVER 5 ms" }
        );
    }
    println!(
        "  pages over 5 ms p99: {over} of {} ({} requests in the log)",
        pages.len(),
        filled
    );
    if args.console_rate > 0 {
        beside_api(env, gateway, &pages, &cookie)?;
    }
    Ok(())
}

/// `count` completions, 50 connections, every tenth for `bench-b`.
async fn fill(addr: SocketAddr, auth: HeaderValue, count: u64) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (next, done, auth) = (next.clone(), done.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<(), String>(());
                }
                let model = if n % 10 == 9 { "bench-b" } else { "bench" };
                let body = format!(
                    r#"{{"model":"{model}","stream":false,"messages":[{{"role":"user","content":"Say hello to tokun, then count to three."}}]}}"#
                );
                let plan = Plan {
                    target: Target::new(addr, "/v1/chat/completions", Some(auth.clone())),
                    body: Bytes::from(body),
                    streaming: false,
                    measure_from: Instant::now(),
                    end: Instant::now(),
                    interval: None,
                };
                sender.ready().await.map_err(|e| format!("ready: {e}"))?;
                let (_, billed) = one_request(&mut sender, &plan).await?;
                if !billed {
                    return Err("a fill request was not billed".into());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => bail!("filling the log: {error}"),
            Err(error) => bail!("filling the log: {error}"),
        }
    }
    Ok(done.load(Ordering::Relaxed))
}

/// Signs in as the demo account with an email code; the session cookie.
async fn sign_in(addr: SocketAddr, stderr: &Mutex<VecDeque<String>>) -> anyhow::Result<String> {
    let mut sender = connect(addr).await.map_err(anyhow::Error::msg)?;
    let form = format!("email={}", form_value(EMAIL));
    let sent = send(&mut sender, addr, "POST", "/login", None, Some(form))
        .await
        .map_err(anyhow::Error::msg)?;
    if sent.status != StatusCode::OK {
        bail!("POST /login: {}", sent.status);
    }
    let marker = format!("sign-in code for {EMAIL}: ");
    let mut code = None;
    for _ in 0..100 {
        code = stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find_map(|line| {
                let at = line.find(&marker)?;
                Some(
                    line[at + marker.len()..]
                        .chars()
                        .take(6)
                        .collect::<String>(),
                )
            });
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = code.context("no sign-in code in the child's log")?;
    let form = format!("email={}&code={code}", form_value(EMAIL));
    let signed = send(&mut sender, addr, "POST", "/login/code", None, Some(form))
        .await
        .map_err(anyhow::Error::msg)?;
    signed
        .cookie
        .with_context(|| format!("POST /login/code gave no session ({})", signed.status))
}

/// The pages measured, with one request's page found on `/activity`.
async fn pages(addr: SocketAddr, cookie: &str) -> anyhow::Result<Vec<String>> {
    let mut sender = connect(addr).await.map_err(anyhow::Error::msg)?;
    let activity = send(&mut sender, addr, "GET", "/activity", Some(cookie), None)
        .await
        .map_err(anyhow::Error::msg)?;
    let html = String::from_utf8_lossy(&activity.body);
    let detail = html
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.starts_with("/activity/"))
        .map(|href| href.replace("&amp;", "&"))
        .context("no request link on /activity")?;
    Ok([
        "/",
        "/activity",
        "/activity?model=bench-b",
        detail.as_str(),
        "/keys",
        "/billing",
        "/billing/statement",
        "/account",
    ]
    .map(str::to_owned)
    .to_vec())
}

/// `loads` measured rounds of `paths` (each page in turn, one load at a
/// time, so a hiccup of the machine lands on every page alike): each
/// page's times and size.
async fn load_pages(
    addr: SocketAddr,
    paths: &[String],
    cookie: &str,
    loads: usize,
) -> anyhow::Result<Vec<(Vec<Duration>, usize)>> {
    let mut sender = connect(addr).await.map_err(anyhow::Error::msg)?;
    let mut out: Vec<(Vec<Duration>, usize)> = paths
        .iter()
        .map(|_| (Vec::with_capacity(loads), 0))
        .collect();
    for round in 0..WARM_LOADS + loads {
        for (path, (times, size)) in paths.iter().zip(out.iter_mut()) {
            let loaded = send(&mut sender, addr, "GET", path, Some(cookie), None)
                .await
                .map_err(anyhow::Error::msg)?;
            if loaded.status != StatusCode::OK {
                bail!("GET {path}: {}", loaded.status);
            }
            *size = loaded.body.len();
            if round >= WARM_LOADS {
                times.push(loaded.took);
            }
        }
    }
    Ok(out)
}

/// Console loads started by the open loop: times of those that answered 200, and errors.
#[derive(Default)]
struct Background {
    times: Vec<Duration>,
    errors: u64,
}

/// `rate` page loads per second, rotating through `pages`, until `stop`.
async fn console_loop(
    addr: SocketAddr,
    pages: Arc<Vec<String>>,
    cookie: Arc<String>,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> Background {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut due = Instant::now();
    let mut loads = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(due.into()).await;
        due += interval;
        let path = pages[i % pages.len()].clone();
        i += 1;
        let cookie = cookie.clone();
        loads.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let loaded = send(&mut sender, addr, "GET", &path, Some(&cookie), None).await?;
            if loaded.status == StatusCode::OK {
                Ok(loaded.took)
            } else {
                Err(format!("GET {path}: {}", loaded.status))
            }
        }));
    }
    let mut out = Background::default();
    for load in loads {
        match load.await {
            Ok(Ok(took)) => out.times.push(took),
            _ => out.errors += 1,
        }
    }
    out
}

/// A and B without and with console loads beside them: the ratios.
fn beside_api(
    env: &Env<'_>,
    gateway: &Gateway,
    pages: &[String],
    cookie: &str,
) -> anyhow::Result<()> {
    let args = env.args;
    let rate = args.console_rate;
    println!(
        "  beside the API: A and B alone and with {rate} console page loads/s, two rounds, {} s windows",
        args.duration
    );
    let specs = [
        Spec::json(
            "A non-streaming",
            args.concurrency_a,
            args.duration,
            args.warmup,
        ),
        Spec::stream(
            "B streaming",
            args.concurrency_b,
            args.duration,
            args.warmup,
        ),
    ];
    let pages: Vec<String> = pages
        .iter()
        .filter(|p| !args.console_skip.iter().any(|skip| p.as_str() == skip))
        .cloned()
        .collect();
    println!("    rotating through: {}", pages.join(" "));
    let pages = Arc::new(pages);
    let cookie = Arc::new(cookie.to_owned());
    for spec in &specs {
        let mut alone = Vec::new();
        let mut beside = Vec::new();
        for round in 0..2 {
            for with_console in [round == 1, round == 0] {
                let target = gateway.target("/v1/chat/completions");
                if !with_console {
                    alone.push(run_load(
                        env,
                        spec,
                        target,
                        gateway.label(),
                        Some(gateway.pid()),
                    )?);
                    continue;
                }
                let stop = Arc::new(AtomicBool::new(false));
                let background = env.client.spawn(console_loop(
                    gateway.addr,
                    pages.clone(),
                    cookie.clone(),
                    rate,
                    stop.clone(),
                ));
                let outcome = run_load(env, spec, target, gateway.label(), Some(gateway.pid()));
                stop.store(true, Ordering::Relaxed);
                let loads = env.client.block_on(background).unwrap_or_default();
                let outcome = outcome?;
                let p = percentiles(loads.times.clone());
                println!(
                    "    {} with console: {} page loads beside it (p50 {:.3} ms, p99 {:.3} ms), {} errors",
                    spec.name,
                    loads.times.len(),
                    ms(p.p50),
                    ms(p.p99),
                    loads.errors
                );
                beside.push(outcome);
            }
        }
        for (name, runs) in [("alone", &alone), ("with console", &beside)] {
            for outcome in runs.iter() {
                println!(
                    "    {:<16} {name:<13} {:>8.0}/s  p50 {:>8.3} ms  p99 {:>8.3} ms  CPU/req {:>7.1} µs  errors {}",
                    spec.name,
                    outcome.rate,
                    ms(outcome.latency.p50),
                    ms(outcome.latency.p99),
                    cpu_per_request(outcome),
                    outcome.errors
                );
            }
        }
        let mean = |runs: &[Outcome], f: &dyn Fn(&Outcome) -> f64| {
            runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64
        };
        let rate_ratio = mean(&beside, &|o| o.rate) / mean(&alone, &|o| o.rate);
        let p99_ratio =
            mean(&beside, &|o| ms(o.latency.p99)) / mean(&alone, &|o| ms(o.latency.p99));
        let cpu_ratio = mean(&beside, &cpu_per_request) / mean(&alone, &cpu_per_request);
        println!(
            "    {}: with ÷ without console (means of two rounds): rate {rate_ratio:.3}, p99 {p99_ratio:.3}, CPU/req {cpu_ratio:.3}",
            spec.name
        );
    }
    Ok(())
}

/// The gateway's CPU microseconds per completed request in the window.
fn cpu_per_request(outcome: &Outcome) -> f64 {
    match outcome.cpu.gateway {
        Some(seconds) if outcome.completed > 0 => seconds * 1e6 / outcome.completed as f64,
        _ => f64::NAN,
    }
}
