//! Crash loop: the real binary as a child under mixed load — SSE streams,
//! non-streaming bodies, `/v1/ws` completions, `Idempotency-Key` retries,
//! signed Stripe webhooks and admin credits/debits — SIGKILLed at random
//! moments (seeded; ≥ 20 kills) and restarted on the same data dir each time.
//!
//! What every client saw is recorded client-side; after each kill (the
//! store read in this process exactly as the kill left it: every tokun
//! command, `ledger export` included, recovers open holds first), after each
//! restart (the account, usage and admin APIs, before any new load) and at
//! the end (`tokun ledger export` and `tokun ledger verify`), the books must
//! agree with it to the nano: every request a client saw finish (`[DONE]`,
//! `done`, a body) is settled exactly once at the cost it was shown, every
//! webhook answered 2xx credited its session exactly once, every admin
//! adjustment answered 200 is in the ledger once, no entry is duplicated,
//! every hold open at a kill is closed as `recovered` by the next start and
//! no other, verify is clean, each balance is its top-ups ± adjustments −
//! its settlements, and no `Idempotency-Key` is settled twice.
//!
//! `CRASH_LOOP_SEED` replays a run's random choices (the seed is printed);
//! `CRASH_LOOP_KILLS` changes the number of kills (default 20).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokun_storage::{AccountId, EntryKind, HoldId, LedgerEntry, Nanos, Store};
use tokun_testkit::FakeStripe;
use tokun_testkit::stripe::{now_secs, sign};

const WEBHOOK_SECRET: &str = "whsec_crash_loop";
const DEMO_CREDIT: i64 = 5_000_000_000;
const IDEM_CREDIT: i64 = 100_000_000_000;
const IDEM_PROMPT: &str = "idempotent crash loop";
/// An idempotency key `k` asks for `IDEM_BASE_TOKENS + k` output tokens, so
/// its cost (and its hold) tells which key a ledger entry belongs to.
const IDEM_BASE_TOKENS: u64 = 8;
/// Longest any one step may take before the test fails (a slow CI included).
const WAIT: Duration = Duration::from_secs(60);

fn config_toml(stripe: &FakeStripe) -> String {
    format!(
        r#"
[stripe]
secret_key = "sk_test_crash_loop"
webhook_secret = "{WEBHOOK_SECRET}"
api_base = "{api}"
max_topup_usd = 500.0

[[providers]]
name = "streaming"
kind = "echo"
delay_ms = 2
reply_tokens = 20

[[providers]]
name = "instant"
kind = "echo"
reply_tokens = 16

[[providers]]
name = "long"
kind = "echo"
reply_tokens = 100000

[[models]]
id = "stream"
price = {{ input = 1.0, output = 3.0 }}
routes = [{{ provider = "streaming" }}]

[[models]]
id = "unary"
price = {{ input = 0.5, output = 1.5 }}
routes = [{{ provider = "instant" }}]

[[models]]
id = "idem"
price = {{ input = 1.0, output = 3.0 }}
routes = [{{ provider = "long" }}]
"#,
        api = stripe.api_base()
    )
}

// ---------------------------------------------------------------------------
// The child process.

struct Server {
    child: Child,
    base: String,
}

/// Starts `tokun serve` on 127.0.0.1:0; returns it and the demo key (first start only).
async fn serve(config: &Path, data: &Path) -> (Server, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tokun");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut key, mut base) = (None, None);
    while base.is_none() {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("tokun started in time")
            .unwrap()
            .expect("tokun printed its address");
        if let Some(at) = line.find("sk-tokun-") {
            key.get_or_insert_with(|| line[at..].split_whitespace().next().unwrap().to_owned());
        }
        if let Some(rest) = line.strip_prefix("tokun listening on ") {
            base = Some(rest.trim().to_owned());
        }
        if line.contains("ERROR") || line.contains("panicked") {
            eprintln!("tokun: {line}");
        }
    }
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("ERROR") || line.contains("panicked") {
                eprintln!("tokun: {line}");
            }
        }
    });
    (
        Server {
            child,
            base: base.unwrap(),
        },
        key,
    )
}

impl Server {
    async fn sigkill(mut self) {
        self.child.kill().await.expect("SIGKILL tokun");
    }
}

fn cli(args: &[&str], data: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run tokun")
}

/// Every ledger entry, through `tokun ledger export` (no server running).
/// Like every command that opens the store, it first recovers open holds.
fn export(data: &Path) -> Vec<LedgerEntry> {
    let out = cli(&["ledger", "export"], data);
    assert!(
        out.status.success(),
        "ledger export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("an exported entry"))
        .collect()
}

/// The store exactly as a kill left it, read in this process (the CLI would
/// recover its open holds first): every entry, the open holds, and verify.
async fn read_store(data: &Path) -> (Vec<LedgerEntry>, HashSet<(AccountId, HoldId)>) {
    let path = data.join("ledger");
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&path).expect("open the store the kill left");
        let entries: Vec<LedgerEntry> = store.entries(0).map(Result::unwrap).collect();
        let open = store
            .open_holds()
            .unwrap()
            .into_iter()
            .map(|hold| (hold.account, hold.hold))
            .collect();
        let report = store.verify().unwrap();
        assert!(report.is_clean(), "verify after a kill: {report:?}");
        (entries, open)
    })
    .await
    .unwrap()
}

fn cli_verify(data: &Path) {
    let out = cli(&["ledger", "verify"], data);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("clean"),
        "tokun ledger verify: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// What the clients saw.

fn nanos(usd: &str) -> i64 {
    Nanos::parse_usd(usd)
        .unwrap_or_else(|e| panic!("cost {usd:?}: {e}"))
        .get()
}

/// One request a client saw finish.
#[derive(Debug, Clone)]
struct Finished {
    /// sse | ws | unary | idem
    transport: &'static str,
    cost: i64,
}

#[derive(Debug, Default)]
struct IdemKey {
    /// The body the client got (first attempt or a replay); `None` until one came.
    body: Option<Value>,
    cost: Option<i64>,
    /// Request ids of the attempts that ran and answered (not replays).
    fresh: Vec<String>,
    attempts: u32,
    replays: u32,
    /// The key's first attempt was cut short by a kill: its retry got 409.
    interrupted: bool,
}

#[derive(Debug, Default)]
struct Counts {
    sse_done: u32,
    sse_cut: u32,
    ws_done: u32,
    ws_cut: u32,
    unary_done: u32,
    unary_cut: u32,
    idem_fresh: u32,
    idem_replayed: u32,
    idem_cut: u32,
    idem_interrupted: u32,
    webhooks_2xx: u32,
    webhooks_cut: u32,
    topups_cut: u32,
    credits_ok: u32,
    credits_cut: u32,
}

#[derive(Debug, Default)]
struct Seen {
    /// Request id → how the client saw it finish.
    finished: HashMap<String, Finished>,
    idem: BTreeMap<u64, IdemKey>,
    idem_pending: VecDeque<u64>,
    idem_done: Vec<u64>,
    idem_next: u64,
    /// Checkout Sessions the client got an id for → amount in nanos.
    sessions: HashMap<String, i64>,
    /// Session → outcomes of its deliveries answered 2xx (`None`: body cut).
    acked: HashMap<String, Vec<Option<String>>>,
    /// Sessions with a delivery that got no answer.
    unanswered: HashSet<String>,
    /// Events Stripe would deliver again (no 2xx yet).
    redeliver: VecDeque<Value>,
    /// Events answered 2xx (redelivered now and then: must be duplicates).
    delivered: Vec<Value>,
    /// Adjustment reason → signed amount: answered 200, or no answer at all.
    credits_ok: HashMap<String, i64>,
    credits_unknown: HashMap<String, i64>,
    credit_next: u64,
    /// Answers no client should ever get.
    failures: Vec<String>,
    counts: Counts,
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Seen {
    fn finish(&mut self, request_id: String, transport: &'static str, cost: i64) {
        if let Some(before) = self
            .finished
            .insert(request_id.clone(), Finished { transport, cost })
        {
            self.failures.push(format!(
                "request {request_id} finished twice ({before:?}, then {transport} {cost})"
            ));
        }
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }
}

struct Ctx {
    seen: Mutex<Seen>,
    stripe: FakeStripe,
    /// The demo account's key: SSE, WS, plain bodies, top-ups.
    demo: reqwest::Client,
    demo_key: String,
    demo_account: String,
    /// A second account, only for `Idempotency-Key` requests.
    idem: reqwest::Client,
    idem_account: String,
    admin_token: String,
    /// No credentials (webhooks; admin calls add the token).
    plain: reqwest::Client,
}

// ---------------------------------------------------------------------------
// The load: each client loops until told to stop or its server is gone.

async fn sse_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    while !stop.load(Ordering::Relaxed) {
        let words = rng.random_range(1..8);
        let body = json!({
            "model": "stream", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "crash loop ".repeat(words)}],
        });
        let url = format!("{base}/v1/chat/completions");
        let Ok(response) = ctx.demo.post(url).json(&body).send().await else {
            lock(&ctx.seen).counts.sse_cut += 1;
            return;
        };
        if response.status() != 200 {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            lock(&ctx.seen).fail(format!("SSE answered {status}: {text}"));
            continue;
        }
        let id = request_id(response.headers());
        let mut body = response.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            bytes.extend_from_slice(&chunk);
        }
        if !bytes.ends_with(b"data: [DONE]\n\n") {
            lock(&ctx.seen).counts.sse_cut += 1;
            return;
        }
        let mut seen = lock(&ctx.seen);
        match sse_cost(&bytes, &id) {
            Ok(cost) => {
                seen.counts.sse_done += 1;
                seen.finish(id, "sse", cost);
            }
            Err(problem) => seen.fail(problem),
        }
    }
}

fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The cost in the usage chunk of a finished stream (each chunk must name the request).
fn sse_cost(bytes: &[u8], id: &str) -> Result<i64, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut costs = Vec::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data).map_err(|e| format!("SSE {data}: {e}"))?;
        if event.get("error").is_some() {
            return Err(format!("SSE {id} carried an error: {data}"));
        }
        if event["id"] != format!("chatcmpl-{id}").as_str() {
            return Err(format!("SSE chunk of {id} names another request: {data}"));
        }
        if let Some(cost) = event["usage"]["cost"].as_str() {
            costs.push(nanos(cost));
        }
    }
    match costs.as_slice() {
        [cost] => Ok(*cost),
        _ => Err(format!("SSE {id}: {} usage chunks", costs.len())),
    }
}

async fn unary_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    while !stop.load(Ordering::Relaxed) {
        let words = rng.random_range(1..8);
        let body = json!({
            "model": "unary",
            "messages": [{"role": "user", "content": "plain body ".repeat(words)}],
        });
        let url = format!("{base}/v1/chat/completions");
        let Ok(response) = ctx.demo.post(url).json(&body).send().await else {
            lock(&ctx.seen).counts.unary_cut += 1;
            return;
        };
        let status = response.status();
        let id = request_id(response.headers());
        let header_cost = response
            .headers()
            .get("x-tokun-cost")
            .map(|v| nanos(v.to_str().unwrap()));
        let Ok(text) = response.text().await else {
            lock(&ctx.seen).counts.unary_cut += 1;
            return;
        };
        {
            let mut seen = lock(&ctx.seen);
            if status != 200 {
                seen.fail(format!("body request answered {status}: {text}"));
            } else {
                let body: Value = serde_json::from_str(&text).unwrap();
                let cost = nanos(body["usage"]["cost"].as_str().unwrap());
                if header_cost != Some(cost) {
                    seen.fail(format!("{id}: x-tokun-cost {header_cost:?}, body {cost}"));
                }
                seen.counts.unary_done += 1;
                seen.finish(id, "unary", cost);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
    }
}

fn idem_body(key: u64) -> Value {
    json!({
        "model": "idem",
        "max_tokens": IDEM_BASE_TOKENS + key,
        "messages": [{"role": "user", "content": IDEM_PROMPT}],
    })
}

/// Picks a key: one whose attempt got no answer first, now and then one
/// already answered (its retry must be a replay), else a new one.
fn next_idem_key(
    seen: &mut Seen,
    rng: &mut StdRng,
    allow_replay_check: bool,
) -> Option<(u64, bool)> {
    if let Some(key) = seen.idem_pending.pop_front() {
        return Some((key, false));
    }
    if !allow_replay_check {
        return None;
    }
    if !seen.idem_done.is_empty() && rng.random_ratio(1, 4) {
        let key = seen.idem_done[rng.random_range(0..seen.idem_done.len())];
        return Some((key, true));
    }
    let key = seen.idem_next;
    seen.idem_next += 1;
    seen.idem.insert(key, IdemKey::default());
    Some((key, false))
}

async fn idem_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    while !stop.load(Ordering::Relaxed) {
        let Some((key, replay_check)) = next_idem_key(&mut lock(&ctx.seen), &mut rng, true) else {
            return;
        };
        if !idem_attempt(&ctx, &base, key, replay_check).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
    }
}

/// One attempt under key `key`; false when the server is gone (the key is retried later).
async fn idem_attempt(ctx: &Ctx, base: &str, key: u64, replay_check: bool) -> bool {
    let request = ctx
        .idem
        .post(format!("{base}/v1/chat/completions"))
        .header("idempotency-key", format!("crash-loop-{key}"))
        .json(&idem_body(key));
    let answered = match request.send().await {
        Ok(response) => {
            let status = response.status();
            let id = request_id(response.headers());
            let replayed = response.headers().get("idempotent-replayed").is_some();
            response
                .text()
                .await
                .ok()
                .map(|text| (status, id, replayed, text))
        }
        Err(_) => None,
    };
    let mut guard = lock(&ctx.seen);
    let seen = &mut *guard;
    seen.idem.get_mut(&key).unwrap().attempts += 1;
    let Some((status, id, replayed, text)) = answered else {
        seen.counts.idem_cut += 1;
        if !replay_check {
            seen.idem_pending.push_back(key);
        }
        return false;
    };
    // A key whose first attempt a kill cut short is never run again: 409.
    if status == 409 && text.contains("cut short by a restart") && !replay_check {
        seen.counts.idem_interrupted += 1;
        seen.idem.get_mut(&key).unwrap().interrupted = true;
        return true;
    }
    if status != 200 {
        seen.fail(format!("idempotent key {key} answered {status}: {text}"));
        if !replay_check {
            seen.idem_pending.push_back(key);
        }
        return true;
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let cost = nanos(body["usage"]["cost"].as_str().unwrap());
    let state = seen.idem.get_mut(&key).unwrap();
    if replayed {
        state.replays += 1;
    } else {
        state.fresh.push(id.clone());
    }
    let mut problems = Vec::new();
    if let Some(before) = &state.body {
        if !replayed {
            problems.push(format!(
                "idempotent key {key} ran again ({id}) although its first answer was stored"
            ));
        } else if *before != body {
            problems.push(format!(
                "idempotent key {key} replayed another body: {body} vs {before}"
            ));
        }
    }
    let first = state.body.is_none();
    state.body = Some(body);
    state.cost = Some(cost);
    if replayed {
        seen.counts.idem_replayed += 1;
    } else {
        seen.counts.idem_fresh += 1;
        seen.finish(id, "idem", cost);
    }
    if first {
        seen.idem_done.push(key);
    }
    for problem in problems {
        seen.fail(problem);
    }
    true
}

async fn ws_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    let mut request = format!("{}/v1/ws", base.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    let auth = format!("Bearer {}", ctx.demo_key).parse().unwrap();
    request.headers_mut().insert("authorization", auth);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
        lock(&ctx.seen).counts.ws_cut += 1;
        return;
    };
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // Two completions at once on the socket: client id → (request id, cost).
        let mut running: HashMap<String, (Option<String>, Option<i64>)> = HashMap::new();
        for n in 0..2 {
            let id = format!("c{round}-{n}");
            let words = rng.random_range(1..8);
            let create = json!({"type": "chat.completion.create", "id": id, "request": {
                "model": "stream", "stream": true,
                "messages": [{"role": "user", "content": "socket ".repeat(words)}]}});
            if ws.send(Message::text(create.to_string())).await.is_err() {
                lock(&ctx.seen).counts.ws_cut += 1;
                return;
            }
            running.insert(id, (None, None));
        }
        while running.values().any(|(_, cost)| cost.is_none()) {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => {
                    lock(&ctx.seen).counts.ws_cut += 1;
                    return;
                }
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            let id = message["id"].as_str().unwrap_or_default().to_owned();
            let Some(entry) = running.get_mut(&id) else {
                lock(&ctx.seen).fail(format!("ws message for no completion: {text}"));
                continue;
            };
            match message["type"].as_str() {
                Some("chunk") => {
                    let chunk_id = message["chunk"]["id"].as_str().unwrap();
                    let request = chunk_id.strip_prefix("chatcmpl-").unwrap().to_owned();
                    if entry.0.get_or_insert_with(|| request.clone()) != &request {
                        lock(&ctx.seen).fail(format!("ws completion {id} changed request: {text}"));
                    }
                }
                Some("done") => {
                    let cost = nanos(message["cost"].as_str().unwrap());
                    entry.1 = Some(cost);
                    let mut seen = lock(&ctx.seen);
                    match entry.0.clone() {
                        Some(request) => {
                            seen.counts.ws_done += 1;
                            seen.finish(request, "ws", cost);
                        }
                        None => seen.fail(format!("ws completion {id} done without a chunk")),
                    }
                }
                _ => {
                    entry.1 = Some(0);
                    lock(&ctx.seen).fail(format!("ws: {text}"));
                }
            }
        }
    }
}

/// Delivers `event` signed now; `None` when no status came back.
async fn deliver(ctx: &Ctx, base: &str, event: &Value) -> Option<(u16, Option<Value>)> {
    let body = event.to_string();
    let signature = sign(body.as_bytes(), WEBHOOK_SECRET, now_secs());
    let response = ctx
        .plain
        .post(format!("{base}/stripe/webhook"))
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json::<Value>().await.ok()))
}

fn event_session(event: &Value) -> String {
    event["data"]["object"]["id"].as_str().unwrap().to_owned()
}

/// Delivers an event and records what came back; false when the server is gone.
async fn deliver_and_record(ctx: &Ctx, base: &str, event: Value) -> bool {
    let session = event_session(&event);
    let answer = deliver(ctx, base, &event).await;
    let mut seen = lock(&ctx.seen);
    match answer {
        None => {
            seen.counts.webhooks_cut += 1;
            seen.unanswered.insert(session);
            seen.redeliver.push_back(event);
            false
        }
        Some((status, body)) if (200..300).contains(&status) => {
            seen.counts.webhooks_2xx += 1;
            let outcome = body.map(|b| b["outcome"].as_str().unwrap_or("?").to_owned());
            seen.acked.entry(session).or_default().push(outcome);
            seen.delivered.push(event);
            true
        }
        Some((status, body)) => {
            seen.fail(format!("webhook answered {status}: {body:?}"));
            seen.redeliver.push_back(event);
            true
        }
    }
}

async fn webhook_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    while !stop.load(Ordering::Relaxed) {
        let event = {
            let mut seen = lock(&ctx.seen);
            if let Some(event) = seen.redeliver.pop_front() {
                Some(event)
            } else if !seen.delivered.is_empty() && rng.random_ratio(1, 4) {
                let again = seen.delivered[rng.random_range(0..seen.delivered.len())].clone();
                if rng.random_bool(0.5) {
                    // Stripe's retry of the same event…
                    Some(again)
                } else {
                    // …or another event for the same paid session.
                    let object = again["data"]["object"].clone();
                    Some(
                        ctx.stripe
                            .event("checkout.session.async_payment_succeeded", object),
                    )
                }
            } else {
                None
            }
        };
        let event = match event {
            Some(event) => event,
            None => {
                let cents = rng.random_range(500..5000);
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let url = format!("{base}/v1/topups");
                let Ok(response) = ctx
                    .demo
                    .post(url)
                    .json(&json!({"amount_usd": amount}))
                    .send()
                    .await
                else {
                    lock(&ctx.seen).counts.topups_cut += 1;
                    return;
                };
                let status = response.status();
                let Ok(body) = response.json::<Value>().await else {
                    lock(&ctx.seen).counts.topups_cut += 1;
                    return;
                };
                if status != 200 {
                    lock(&ctx.seen).fail(format!("top-up answered {status}: {body}"));
                    continue;
                }
                let id = body["id"].as_str().unwrap();
                let session = ctx
                    .stripe
                    .session(id)
                    .expect("the fake Stripe saw the session");
                assert_eq!(session.amount_cents(), cents, "{body}");
                lock(&ctx.seen)
                    .sessions
                    .insert(id.to_owned(), cents * 10_000_000);
                ctx.stripe.completed(&session)
            }
        };
        if !deliver_and_record(&ctx, &base, event).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

async fn admin_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    while !stop.load(Ordering::Relaxed) {
        let amount = rng.random_range(1..=50_000_000i64);
        let debit = rng.random_ratio(1, 3);
        let (path, signed) = if debit {
            ("debit", -amount)
        } else {
            ("credit", amount)
        };
        let reason = {
            let mut seen = lock(&ctx.seen);
            seen.credit_next += 1;
            format!("crash loop {path} {}", seen.credit_next)
        };
        let url = format!("{base}/admin/accounts/{}/{path}", ctx.demo_account);
        let body = json!({"amount_usd": Nanos::new(amount).to_string(), "reason": reason});
        let answer = ctx
            .plain
            .post(url)
            .bearer_auth(&ctx.admin_token)
            .json(&body)
            .send()
            .await;
        let alive = {
            let mut seen = lock(&ctx.seen);
            match answer {
                Err(_) => {
                    seen.counts.credits_cut += 1;
                    seen.credits_unknown.insert(reason, signed);
                    false
                }
                Ok(response) if response.status() == 200 => {
                    seen.counts.credits_ok += 1;
                    seen.credits_ok.insert(reason, signed);
                    true
                }
                Ok(response) => {
                    let status = response.status();
                    seen.fail(format!("admin {path} answered {status}"));
                    true
                }
            }
        };
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

/// Runs every kind of client against `base` until `stop`.
fn spawn_load(
    ctx: &Arc<Ctx>,
    base: &str,
    stop: &Arc<AtomicBool>,
    rng: &mut StdRng,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut next_rng = || StdRng::seed_from_u64(rng.random());
    for _ in 0..2 {
        tasks.push(tokio::spawn(sse_client(
            ctx.clone(),
            base.to_owned(),
            stop.clone(),
            next_rng(),
        )));
        tasks.push(tokio::spawn(idem_client(
            ctx.clone(),
            base.to_owned(),
            stop.clone(),
            next_rng(),
        )));
    }
    tasks.push(tokio::spawn(unary_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks.push(tokio::spawn(ws_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks.push(tokio::spawn(webhook_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks.push(tokio::spawn(admin_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks
}

// ---------------------------------------------------------------------------
// Checks through the running server.

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// Right after a restart, before any load: recovery left nothing held,
/// verify is clean, and the request log has every finished request once at
/// its cost. Returns the last seq (the end of recovery) and each account's
/// request log (request id → cost).
async fn check_running(ctx: &Ctx, base: &str) -> (u64, HashMap<AccountId, HashMap<String, i64>>) {
    let seen = lock(&ctx.seen).finished.clone();
    let mut logs = HashMap::new();
    for (client, account, transports) in [
        (&ctx.demo, &ctx.demo_account, &["sse", "ws", "unary"][..]),
        (&ctx.idem, &ctx.idem_account, &["idem"][..]),
    ] {
        let view = get_json(client, format!("{base}/v1/account")).await;
        assert_eq!(view["id"], account.as_str());
        assert_eq!(view["held_nanos"], 0, "recovery left money held: {view}");
        assert_eq!(view["open_holds"], 0, "recovery left holds open: {view}");
        let usage = get_json(client, format!("{base}/v1/usage?limit=100000")).await;
        let mut logged: HashMap<String, i64> = HashMap::new();
        for record in usage["data"].as_array().unwrap() {
            let id = record["request_id"].as_str().unwrap().to_owned();
            let cost = nanos(record["cost"].as_str().unwrap());
            assert!(
                logged.insert(id.clone(), cost).is_none(),
                "{id} logged twice"
            );
        }
        for (id, finished) in seen
            .iter()
            .filter(|(_, f)| transports.contains(&f.transport))
        {
            assert_eq!(
                logged.get(id),
                Some(&finished.cost),
                "request {id} ({finished:?}) in the request log once, at the cost its client saw"
            );
        }
        logs.insert(account.parse::<AccountId>().unwrap(), logged);
    }
    let report = ctx
        .plain
        .get(format!("{base}/admin/ledger/verify"))
        .bearer_auth(&ctx.admin_token)
        .send()
        .await
        .unwrap();
    let report: Value = report.json().await.unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["open_holds"], 0, "{report}");
    (report["entries"].as_u64().unwrap(), logs)
}

// ---------------------------------------------------------------------------
// Checks on the exported ledger.

/// The holds open at one kill, and where the ledger ended then and after recovery.
struct Kill {
    last_seq: u64,
    open: HashSet<(AccountId, HoldId)>,
    /// Last seq once the next start recovered (before any load).
    recovered_by: u64,
}

#[derive(Default)]
struct HoldLife {
    request_id: Option<String>,
    amount: i64,
    holds: u32,
    /// held − closed so far; 0 once closed.
    remaining: i64,
    settle: Vec<(u64, i64)>,
    recovered: Vec<(u64, i64)>,
    releases: u32,
    closed_at: Option<u64>,
}

struct Books {
    accounts: HashMap<AccountId, (i64, i64)>,
    holds: HashMap<(AccountId, HoldId), HoldLife>,
}

/// Everything an exported ledger must satisfy at any moment (`end`: also
/// with nothing running and nothing held). Returns its books.
fn check_ledger(entries: &[LedgerEntry], ctx: &Ctx, kills: &[Kill], end: bool) -> Books {
    let seen = lock(&ctx.seen);
    let demo: AccountId = ctx.demo_account.parse().unwrap();
    let idem: AccountId = ctx.idem_account.parse().unwrap();
    // No entry lost, none written twice: seq is 1, 2, 3, …
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry.seq,
            i as u64 + 1,
            "seq has a gap or a duplicate at {entry:?}"
        );
    }
    let mut books: HashMap<AccountId, (i64, i64)> = HashMap::new();
    let mut holds: HashMap<(AccountId, HoldId), HoldLife> = HashMap::new();
    let mut topups: HashMap<String, Vec<i64>> = HashMap::new();
    let mut adjustments: HashMap<String, Vec<i64>> = HashMap::new();
    for e in entries {
        let amount = e.amount.get();
        let (balance, held) = books.entry(e.account).or_default();
        match e.kind {
            EntryKind::Topup => *balance += amount,
            EntryKind::Adjustment => *balance += amount,
            EntryKind::Refund => *balance -= amount,
            EntryKind::Hold | EntryKind::Extend => *held += amount,
            EntryKind::Settle | EntryKind::Recovered => {
                *balance -= amount;
                *held -= amount;
            }
            EntryKind::Release => *held -= amount,
        }
        assert_eq!(
            (*balance, *held),
            (e.balance_after.get(), e.held_after.get()),
            "books after {e:?}"
        );
        let reference = e.reference.clone().unwrap_or_default();
        match e.kind {
            EntryKind::Topup => topups.entry(reference).or_default().push(amount),
            EntryKind::Adjustment => adjustments.entry(reference).or_default().push(amount),
            EntryKind::Refund => panic!("no refund was asked for: {e:?}"),
            _ => {}
        }
        if !e.kind.needs_hold() {
            continue;
        }
        let hold = e.hold.expect("a hold entry names its hold");
        let life = holds.entry((e.account, hold)).or_default();
        assert!(
            life.closed_at.is_none(),
            "entry after its hold closed: {e:?}"
        );
        if e.kind == EntryKind::Hold {
            life.holds += 1;
            life.amount = amount;
            life.request_id = e.request_id.clone();
        } else {
            assert_eq!(life.holds, 1, "{e:?} without its hold");
            assert_eq!(life.request_id, e.request_id, "{e:?} names another request");
        }
        match e.kind {
            EntryKind::Hold | EntryKind::Extend => life.remaining += amount,
            EntryKind::Settle => {
                life.remaining -= amount;
                life.settle.push((e.seq, amount));
            }
            EntryKind::Recovered => {
                life.remaining -= amount;
                life.recovered.push((e.seq, amount));
            }
            EntryKind::Release => {
                life.remaining -= amount;
                life.releases += 1;
            }
            _ => {}
        }
        assert!(life.remaining >= 0, "hold {hold} below zero at {e:?}");
        if life.remaining == 0 && e.kind != EntryKind::Hold && e.kind != EntryKind::Extend {
            life.closed_at = Some(e.seq);
        }
    }

    // Each hold opened once and closed at most once; one hold per request.
    let mut by_request: HashMap<&str, Vec<(AccountId, HoldId)>> = HashMap::new();
    for (key, life) in &holds {
        assert_eq!(life.holds, 1, "hold {key:?} opened {} times", life.holds);
        assert!(
            life.settle.len() + life.recovered.len() <= 1 && life.releases <= 1,
            "hold {key:?} closed more than once"
        );
        if end {
            assert!(
                life.closed_at.is_some(),
                "hold {key:?} still open at the end"
            );
        }
        let request = life
            .request_id
            .as_deref()
            .expect("a hold names its request");
        by_request.entry(request).or_default().push(*key);
    }
    for (request, keys) in &by_request {
        assert_eq!(keys.len(), 1, "request {request} opened {keys:?}");
    }

    // Every request a client saw finish: settled exactly once, at its cost.
    for (id, finished) in &seen.finished {
        let account = if finished.transport == "idem" {
            idem
        } else {
            demo
        };
        let key = by_request
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} ({finished:?}) finished but has no hold"))[0];
        assert_eq!(key.0, account, "{id} charged to the wrong account");
        let life = &holds[&key];
        assert!(life.recovered.is_empty(), "{id} finished, yet recovered");
        assert_eq!(
            life.settle.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![finished.cost],
            "{id} ({finished:?}) settled once at the cost its client saw"
        );
    }

    // Holds open at a kill: closed by the next start as `recovered`, and
    // nothing else closed that way.
    let mut expected_recovered: HashMap<(AccountId, HoldId), &Kill> = HashMap::new();
    for kill in kills {
        for key in &kill.open {
            expected_recovered.insert(*key, kill);
        }
    }
    for (key, life) in &holds {
        match (expected_recovered.get(key), life.recovered.first()) {
            (Some(kill), Some((seq, _))) => assert!(
                kill.last_seq < *seq && *seq <= kill.recovered_by,
                "hold {key:?} open at the kill ending at seq {} recovered at {seq}, \
                 not by the next start (≤ {})",
                kill.last_seq,
                kill.recovered_by
            ),
            (Some(_), None) => {
                panic!("hold {key:?} open at a kill was not recovered by the next start")
            }
            (None, Some((seq, _))) => {
                panic!("hold {key:?} recovered at {seq}, yet was not open at any kill")
            }
            _ => {}
        }
        if expected_recovered.contains_key(key) {
            assert!(
                life.settle.is_empty(),
                "hold {key:?} open at a kill, then settled"
            );
        }
    }
    // Between a kill and the end of the next start's recovery, only recovery wrote.
    for kill in kills {
        for e in &entries[kill.last_seq as usize..kill.recovered_by as usize] {
            let key = (
                e.account,
                e.hold.unwrap_or_else(|| panic!("recovery wrote {e:?}")),
            );
            assert!(
                kill.open.contains(&key)
                    && matches!(e.kind, EntryKind::Recovered | EntryKind::Release),
                "the start after the kill at seq {} wrote {e:?}",
                kill.last_seq
            );
        }
    }

    // Money in: the demo and signup credits, and one top-up per paid session.
    let mut paid_in: HashMap<AccountId, i64> = HashMap::new();
    for (reference, amounts) in &topups {
        match reference.as_str() {
            "demo credit" => assert_eq!(amounts, &vec![DEMO_CREDIT]),
            "signup credit" => assert_eq!(amounts, &vec![IDEM_CREDIT]),
            session => {
                let amount = seen
                    .sessions
                    .get(session)
                    .unwrap_or_else(|| panic!("top-up for an unknown session {session}"));
                assert_eq!(
                    amounts,
                    &vec![*amount],
                    "session {session} credited once, in full"
                );
            }
        }
    }
    for e in entries.iter().filter(|e| e.kind == EntryKind::Topup) {
        *paid_in.entry(e.account).or_default() += e.amount.get();
    }
    for (session, outcomes) in &seen.acked {
        assert_eq!(
            topups.get(session).map(Vec::len),
            Some(1),
            "session {session} answered 2xx ({outcomes:?}) is credited exactly once"
        );
        let credited = outcomes
            .iter()
            .filter(|o| o.as_deref() == Some("credited"))
            .count();
        assert!(
            credited <= 1,
            "session {session} answered `credited` {credited} times"
        );
        for outcome in outcomes.iter().flatten() {
            assert!(
                outcome == "credited" || outcome == "duplicate",
                "session {session}: {outcomes:?}"
            );
        }
        if outcomes.first().cloned().flatten().as_deref() == Some("duplicate") {
            assert!(
                seen.unanswered.contains(session),
                "session {session}'s first answer was `duplicate` with no earlier delivery"
            );
        }
    }
    // Adjustments: each one answered 200 exactly once; unanswered ones at most once.
    let mut adjusted = 0i64;
    for (reason, amounts) in &adjustments {
        let expected = seen
            .credits_ok
            .get(reason)
            .or_else(|| seen.credits_unknown.get(reason))
            .unwrap_or_else(|| panic!("adjustment nobody asked for: {reason}"));
        assert_eq!(amounts, &vec![*expected], "adjustment {reason}");
        adjusted += expected;
    }
    for (reason, amount) in &seen.credits_ok {
        assert!(
            adjustments.contains_key(reason),
            "adjustment {reason} ({amount}) answered 200, lost"
        );
    }
    // Balances, to the nano: money in ± adjustments − settlements.
    for (account, (balance, held)) in &books {
        let spent: i64 = holds
            .iter()
            .filter(|(key, _)| key.0 == *account)
            .flat_map(|(_, life)| life.settle.iter().chain(&life.recovered))
            .map(|s| s.1)
            .sum();
        let adjustments = if *account == demo { adjusted } else { 0 };
        assert_eq!(
            *balance,
            paid_in[account] + adjustments - spent,
            "balance of {account} = top-ups ± adjustments − settlements"
        );
        let open: i64 = holds
            .iter()
            .filter(|(key, _)| key.0 == *account)
            .map(|(_, life)| life.remaining)
            .sum();
        assert_eq!(*held, open, "held of {account} = its open holds");
        if end {
            assert_eq!(*held, 0, "{account} holds nothing at the end");
        }
    }
    let client_paid: i64 = DEMO_CREDIT + seen.acked.keys().map(|s| seen.sessions[s]).sum::<i64>();
    if end {
        assert!(seen.redeliver.is_empty());
        assert_eq!(
            paid_in[&demo], client_paid,
            "demo top-ups = what Stripe was told"
        );
    }
    Books {
        accounts: books,
        holds,
    }
}

/// Per idempotency key: how many attempts were charged (settled, or
/// recovered after a kill). A key's cost and its hold name it.
fn idem_charges(ctx: &Ctx, books: &Books) -> (Vec<String>, Vec<String>) {
    let seen = lock(&ctx.seen);
    let idem: AccountId = ctx.idem_account.parse().unwrap();
    let by_cost: HashMap<i64, u64> = seen
        .idem
        .iter()
        .filter_map(|(k, state)| Some((state.cost?, *k)))
        .collect();
    assert_eq!(
        by_cost.len(),
        seen.idem.values().filter(|s| s.cost.is_some()).count(),
        "each key's cost names it"
    );
    let mut settled: HashMap<u64, u32> = HashMap::new();
    let mut hold_of: HashMap<i64, u64> = HashMap::new();
    // Settlements of keys a kill cut short after their settlement was durable:
    // charged once, their answer lost, so the client never learnt the cost.
    let mut cut_short_settled = 0;
    for life in books
        .holds
        .iter()
        .filter(|(k, _)| k.0 == idem)
        .map(|(_, l)| l)
    {
        if let Some((_, cost)) = life.settle.first() {
            let Some(key) = by_cost.get(cost) else {
                cut_short_settled += 1;
                continue;
            };
            *settled.entry(*key).or_default() += 1;
            hold_of.insert(life.amount, *key);
        }
    }
    let interrupted = seen.idem.values().filter(|s| s.interrupted).count();
    assert!(
        cut_short_settled <= interrupted,
        "{cut_short_settled} settlements of unanswered keys, only {interrupted} keys cut short"
    );
    let mut recovered: HashMap<u64, u32> = HashMap::new();
    let mut unattributed = 0;
    for life in books
        .holds
        .iter()
        .filter(|(k, _)| k.0 == idem)
        .map(|(_, l)| l)
    {
        if !life.recovered.is_empty() {
            match hold_of.get(&life.amount) {
                Some(key) => *recovered.entry(*key).or_default() += 1,
                None => unattributed += 1,
            }
        }
    }
    let mut twice = Vec::new();
    let mut after_recovery = Vec::new();
    for (key, state) in &seen.idem {
        let n = settled.get(key).copied().unwrap_or(0);
        let r = recovered.get(key).copied().unwrap_or(0);
        if state.body.is_some() {
            assert!(n >= 1, "idempotent key {key} answered but never settled");
        }
        if n > 1 {
            twice.push(format!(
                "key {key}: settled {n}× (answered by {:?}, {} attempts, {} replays)",
                state.fresh, state.attempts, state.replays
            ));
        }
        // A hold recovered and then settled again by a retry is a second
        // charge (a withheld answer's hold is recovered at zero, but its key
        // must still never run twice).
        if r > 0 && n > 0 {
            after_recovery.push(format!(
                "key {key}: {r} attempt(s) recovered, then settled {n}×"
            ));
        }
    }
    if unattributed > 0 {
        eprintln!(
            "crash_loop: idempotency: {unattributed} recovered hold(s) of keys a kill cut short (never run again)"
        );
    }
    (twice, after_recovery)
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_under_mixed_load_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("CRASH_LOOP_SEED")
        .ok()
        .map(|s| s.parse().expect("CRASH_LOOP_SEED is a u64"))
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_nanos() as u64)
        });
    let kills: usize = std::env::var("CRASH_LOOP_KILLS")
        .ok()
        .map_or(20, |s| s.parse().expect("CRASH_LOOP_KILLS is a number"));
    eprintln!("crash_loop: seed {seed} (rerun with CRASH_LOOP_SEED={seed}), {kills} kills");
    let mut rng = StdRng::seed_from_u64(seed);
    let began = Instant::now();

    let dir = support::temp_dir("crash-loop");
    let stripe = FakeStripe::start().await.unwrap();
    let config = dir.join("tokun.toml");
    std::fs::write(&config, config_toml(&stripe)).unwrap();
    let data = dir.join("data");
    let (mut server, key) = serve(&config, &data).await;
    let demo_key = key.expect("demo key printed on first start");
    let admin_token = std::fs::read_to_string(data.join("admin_token"))
        .unwrap()
        .trim()
        .to_owned();
    let demo = support::client_with_key(&demo_key);
    let plain = reqwest::Client::new();
    let demo_view = get_json(&demo, format!("{}/v1/account", server.base)).await;
    assert_eq!(demo_view["balance_nanos"], DEMO_CREDIT);
    let created = plain
        .post(format!("{}/admin/accounts", server.base))
        .bearer_auth(&admin_token)
        .json(&json!({"email": "idem@crash.loop", "credit_usd": "100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let ctx = Arc::new(Ctx {
        seen: Mutex::new(Seen::default()),
        stripe,
        demo,
        demo_key,
        demo_account: demo_view["id"].as_str().unwrap().to_owned(),
        idem: support::client_with_key(created["api_key"].as_str().unwrap()),
        idem_account: created["id"].as_str().unwrap().to_owned(),
        admin_token,
        plain,
    });

    let mut history: Vec<Kill> = Vec::new();
    let mut load_ms = Vec::new();
    for cycle in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = spawn_load(&ctx, &server.base, &stop, &mut rng);
        let ms = rng.random_range(100..=600);
        load_ms.push(ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        stop.store(true, Ordering::Relaxed);
        server.sigkill().await;
        for task in tasks {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("a client noticed its server died")
                .unwrap();
        }
        // The books as the kill left them, read with nothing running.
        let (entries, open) = read_store(&data).await;
        let books = check_ledger(&entries, &ctx, &history, false);
        let unclosed: HashSet<(AccountId, HoldId)> = books
            .holds
            .iter()
            .filter(|(_, life)| life.closed_at.is_none())
            .map(|(key, _)| *key)
            .collect();
        assert_eq!(
            open, unclosed,
            "the store's open holds are the unclosed ones"
        );
        let last_seq = entries.last().map_or(0, |e| e.seq);
        // Restart on the same data dir: recovery, then the same checks live.
        let (next, second_key) = serve(&config, &data).await;
        assert!(second_key.is_none(), "no second demo account on restart");
        server = next;
        let (recovered_by, _) = check_running(&ctx, &server.base).await;
        eprintln!(
            "crash_loop: kill {} after {ms} ms: {} entries, {} holds open → recovered by seq {recovered_by} ({:.1} s)",
            cycle + 1,
            entries.len(),
            open.len(),
            began.elapsed().as_secs_f64()
        );
        history.push(Kill {
            last_seq,
            open,
            recovered_by,
        });
    }

    // Stripe redelivers what got no 2xx; clients retry their keys. Then a last look.
    for _ in 0..100 {
        let event = lock(&ctx.seen).redeliver.pop_front();
        let key = next_idem_key(&mut lock(&ctx.seen), &mut rng, false);
        if event.is_none() && key.is_none() {
            break;
        }
        if let Some(event) = event {
            assert!(deliver_and_record(&ctx, &server.base, event).await);
        }
        if let Some((key, _)) = key {
            assert!(idem_attempt(&ctx, &server.base, key, false).await);
        }
    }
    {
        let seen = lock(&ctx.seen);
        assert!(seen.redeliver.is_empty() && seen.idem_pending.is_empty());
        assert!(
            seen.failures.is_empty(),
            "answers no client should get (seed {seed}):\n{}",
            seen.failures.join("\n")
        );
    }
    let (last_seq, logs) = check_running(&ctx, &server.base).await;
    let payments = get_json(&ctx.demo, format!("{}/v1/payments", server.base)).await;
    for session in lock(&ctx.seen).acked.keys() {
        let payment = payments["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == session.as_str())
            .unwrap_or_else(|| panic!("payment {session} listed"));
        assert_eq!(payment["status"], "paid", "{payment}");
    }
    let mut live = HashMap::new();
    for (client, account) in [
        (&ctx.demo, &ctx.demo_account),
        (&ctx.idem, &ctx.idem_account),
    ] {
        let view = get_json(client, format!("{}/v1/account", server.base)).await;
        live.insert(
            account.parse::<AccountId>().unwrap(),
            view["balance_nanos"].as_i64().unwrap(),
        );
    }
    server.sigkill().await;
    let entries = export(&data);
    assert_eq!(
        entries.len() as u64,
        last_seq,
        "nothing was open to recover at the end"
    );
    let books = check_ledger(&entries, &ctx, &history, true);
    for (account, balance) in &live {
        assert_eq!(
            books.accounts[account].0, *balance,
            "{account}'s balance as served, to the nano"
        );
    }
    // The request log and the ledger name the same settled requests, at the same costs.
    for (account, logged) in &logs {
        let settled: HashMap<String, i64> = books
            .holds
            .iter()
            .filter(|(key, _)| key.0 == *account)
            .filter_map(|(_, life)| Some((life.request_id.clone()?, life.settle.first()?.1)))
            .collect();
        assert_eq!(&settled, logged, "{account}: request log = settlements");
    }
    cli_verify(&data);
    let (twice, after_recovery) = idem_charges(&ctx, &books);

    let seen = lock(&ctx.seen);
    let recovered: usize = history.iter().map(|k| k.open.len()).sum();
    let landed = seen
        .credits_unknown
        .keys()
        .filter(|reason| {
            entries
                .iter()
                .any(|e| e.reference.as_ref() == Some(*reason))
        })
        .count();
    let lost_answers = seen
        .acked
        .values()
        .filter(|outcomes| outcomes.first().cloned().flatten().as_deref() == Some("duplicate"))
        .count();
    eprintln!(
        "crash_loop: seed {seed}: {kills} kills (load {load_ms:?} ms), {} entries, \
         {recovered} holds recovered, {} paid sessions ({lost_answers} credited by a delivery \
         that got no answer), {landed}/{} unanswered adjustments applied, {:.1} s\n  {:?}",
        entries.len(),
        seen.acked.len(),
        seen.credits_unknown.len(),
        began.elapsed().as_secs_f64(),
        seen.counts
    );
    for line in twice.iter().chain(&after_recovery) {
        eprintln!("crash_loop: idempotency: {line}");
    }
    assert!(
        twice.is_empty() && after_recovery.is_empty(),
        "an Idempotency-Key charged twice across a crash (seed {seed}): its claim is \
         written before anything runs and flushed with the request's hold, so a retry \
         after a kill must find it (409) and never run again:\n{}",
        twice
            .iter()
            .chain(&after_recovery)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
