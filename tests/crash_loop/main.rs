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

#[path = "../support/mod.rs"]
mod support;

mod checks;
mod load;

use checks::*;
use load::*;

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
