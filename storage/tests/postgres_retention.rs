//! The Postgres snapshot and restore of what issue 20 adds, against the
//! real local Postgres (`TOKUN_TEST_PG_URL`, a schema per test): the request
//! log's `cached_tokens` and `route` columns both ways, and the ledger
//! checkpoint — pruned entries deleted from Postgres in the snapshot's
//! transaction, the checkpoint written beside them (also when the store
//! pruned past the watermark before any snapshot), Stripe payments whose
//! credit was pruned still checked, and a restore from it verifying clean
//! with the same books.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::collections::BTreeMap;

use common::{Action, Sim, TempDir};
use tokun_storage::postgres::{PgTarget, restore, snapshot};
use tokun_storage::{
    AccountId, Books, EntryKind, LedgerWriter, Nanos, NewEntry, PaymentRecord, PaymentStatus,
    Store, UsageRecord, WriteOp, WriterConfig, WriterHandle, apply,
};

/// The local test Postgres. Unset is an error, never a silent skip.
fn pg_url() -> String {
    std::env::var("TOKUN_TEST_PG_URL")
        .expect("TOKUN_TEST_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)")
}

/// A schema of this test's own, and a client reading it.
struct Schema {
    target: PgTarget,
    name: String,
    client: tokio_postgres::Client,
}

impl Schema {
    async fn new(tag: &str) -> Schema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("tokun_test_{tag}_{}_{nanos}", std::process::id());
        let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
        config.options(format!("-c search_path={name}"));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let target = PgTarget::parse(&pg_url(), &name).unwrap();
        Schema {
            target,
            name,
            client,
        }
    }

    async fn int(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.unwrap().get(0)
    }

    async fn snapshot(&self, store: &Store) -> tokun_storage::postgres::SnapshotReport {
        let mut conn = self.target.connect("tokun-test").await.unwrap();
        snapshot(store, &mut conn).await.unwrap()
    }

    async fn restore(&self, dir: &TempDir) -> Store {
        let mut conn = self.target.connect_existing("tokun-test").await.unwrap();
        let report = restore(&mut conn, dir.path()).await.unwrap();
        assert!(report.verify.is_clean(), "{:?}", report.verify.problems);
        Store::open(dir.path()).unwrap()
    }

    async fn drop(self) {
        let drop = format!("DROP SCHEMA {} CASCADE", self.name);
        self.client.batch_execute(&drop).await.unwrap();
    }
}

fn start_writer(store: &Store) -> (WriterHandle, std::thread::JoinHandle<()>) {
    LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap()
}

fn close(writer: WriterHandle, thread: std::thread::JoinHandle<()>) {
    writer.close();
    thread.join().unwrap();
}

/// Requests on two accounts (top-ups, holds settled and released), a
/// Stripe credit partly refunded on account 1, and one hold left open.
fn build(store: &Store, sim: &mut Sim, requests: usize) {
    let (writer, thread) = start_writer(store);
    writer.submit_wait(sim.account_records()).unwrap();
    for account in 0..2 {
        let credit = Action::Credit {
            account,
            amount: 1_000_000_000,
        };
        writer.submit_wait(sim.act(&credit).unwrap()).unwrap();
    }
    stripe_credit(&writer, sim);
    for i in 0..requests {
        let reserve = Action::Reserve {
            account: i % 2,
            amount: 1_000,
        };
        writer.submit_wait(sim.act(&reserve).unwrap()).unwrap();
        let settle = Action::Settle {
            pick: 0,
            fraction: 128,
        };
        writer.submit_wait(sim.act(&settle).unwrap()).unwrap();
    }
    let last = Action::Reserve {
        account: 0,
        amount: 1_000,
    };
    writer.submit_wait(sim.act(&last).unwrap()).unwrap();
    close(writer, thread);
}

/// `cs_old`: 700 paid, 200 refunded, on `Sim`'s first account (whose
/// books the model then follows).
fn stripe_credit(writer: &WriterHandle, sim: &mut Sim) {
    let account = sim.accounts[0].id;
    let mut books = sim.accounts[0].books;
    let open = PaymentRecord::open("cs_old", account, Nanos::new(700), "usd", 1);
    let paid = PaymentRecord {
        status: PaymentStatus::Paid,
        paid_amount: Nanos::new(700),
        payment_intent: Some("pi_old".into()),
        ..open
    };
    books = apply(books, EntryKind::Topup, Nanos::new(700)).unwrap();
    let topup = NewEntry::new(1_500, account, EntryKind::Topup, Nanos::new(700), books)
        .with_reference("cs_old");
    writer
        .submit_wait(vec![
            WriteOp::Entry(topup),
            WriteOp::PutPayment(paid.clone()),
        ])
        .unwrap();
    books = apply(books, EntryKind::Refund, Nanos::new(200)).unwrap();
    let refund = NewEntry::new(1_501, account, EntryKind::Refund, Nanos::new(200), books)
        .with_reference("cs_old");
    let refunded = PaymentRecord {
        status: PaymentStatus::PartiallyRefunded,
        refunded_amount: Nanos::new(200),
        debited_amount: Nanos::new(200),
        ..paid
    };
    writer
        .submit_wait(vec![WriteOp::Entry(refund), WriteOp::PutPayment(refunded)])
        .unwrap();
    sim.accounts[0].books = books;
}

fn prune_all(store: &Store) {
    let (writer, thread) = start_writer(store);
    while let Some(target) = store.prune_target(u64::MAX).unwrap() {
        let before = store.ledger_checkpoint().unwrap();
        writer
            .submit_wait(vec![WriteOp::PruneLedger {
                through_seq: target,
            }])
            .unwrap();
        if store.ledger_checkpoint().unwrap() == before {
            break;
        }
    }
    close(writer, thread);
}

fn books(store: &Store, sim: &Sim) -> BTreeMap<AccountId, Books> {
    sim.accounts
        .iter()
        .map(|a| (a.id, store.books(a.id).unwrap()))
        .collect()
}

#[tokio::test]
async fn the_request_log_keeps_cached_tokens_and_route_through_a_snapshot_and_restore() {
    let schema = Schema::new("reqlog").await;
    let store = Store::temporary().unwrap();
    let mut sim = Sim::new();
    build(&store, &mut sim, 1);
    let account = sim.accounts[0].id;
    let record = |request: &str, cached_tokens, route| UsageRecord {
        request_id: request.into(),
        at_ms: 1_600,
        account,
        key: None,
        model: "two-routes".into(),
        served_model: "upstream-model".into(),
        provider: "second".into(),
        prompt_tokens: 40,
        cached_tokens,
        completion_tokens: 6,
        cost: Nanos::new(9),
        estimated: false,
        status: 200,
        transport: "ws".into(),
        latency_ms: 12,
        ttft_ms: Some(3),
        error_kind: None,
        route,
    };
    let cached = record("req_cached", 32, Some(1));
    let plain = record("req_plain", 0, None);
    // Written with a settlement, as the account actor writes them.
    let settle = Action::Settle {
        pick: 0,
        fraction: 10,
    };
    let mut ops = sim.act(&settle).unwrap();
    ops.push(WriteOp::PutUsage(cached.clone()));
    ops.push(WriteOp::PutUsage(plain.clone()));
    let (writer, thread) = start_writer(&store);
    writer.submit_wait(ops).unwrap();
    close(writer, thread);

    let report = schema.snapshot(&store).await;
    assert_eq!(report.requests, 2);
    let rows = schema
        .client
        .query(
            "SELECT request_id, cached_tokens, route FROM requests ORDER BY request_id",
            &[],
        )
        .await
        .unwrap();
    let columns: Vec<(String, i64, Option<i32>)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("req_cached".to_owned(), 32, Some(1)),
            ("req_plain".to_owned(), 0, None),
        ]
    );

    let dir = TempDir::new("pg-reqlog");
    let restored = schema.restore(&dir).await;
    let mut back: Vec<UsageRecord> = restored
        .usage_for(account, 0, u64::MAX)
        .map(Result::unwrap)
        .collect();
    back.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(back, vec![cached, plain]);
    drop(restored);
    schema.drop().await;
}

#[tokio::test]
async fn pruned_entries_leave_postgres_in_the_snapshot_and_a_restore_verifies_clean() {
    let schema = Schema::new("prune").await;
    let dir = TempDir::new("pg-prune-store");
    let store = Store::open(dir.path()).unwrap();
    let mut sim = Sim::new();
    build(&store, &mut sim, 600);
    let first = schema.snapshot(&store).await;
    assert_eq!(first.pruned, 0);
    let all = schema.int("SELECT count(*) FROM ledger_entries").await;
    assert_eq!(all as u64, store.last_seq().unwrap());

    prune_all(&store);
    let checkpoint = store.ledger_checkpoint().unwrap().unwrap();
    // Everything but the open hold's entry.
    assert_eq!(checkpoint.through_seq, store.last_seq().unwrap() - 1);
    let second = schema.snapshot(&store).await;
    assert_eq!(second.pruned, checkpoint.through_seq);
    assert_eq!(schema.int("SELECT count(*) FROM ledger_entries").await, 1);
    assert_eq!(
        schema.int("SELECT min(seq) FROM ledger_entries").await as u64,
        checkpoint.through_seq + 1
    );
    assert_eq!(
        schema
            .int("SELECT through_seq FROM ledger_checkpoint")
            .await as u64,
        checkpoint.through_seq
    );
    let revenue = schema
        .int("SELECT revenue_nanos::bigint FROM ledger_checkpoint")
        .await;
    assert_eq!(i128::from(revenue), sim.revenue);
    assert_eq!(
        schema.int("SELECT count(*) FROM checkpoint_balances").await,
        2
    );
    let refunded = schema
        .int("SELECT refunded_nanos::bigint FROM checkpoint_references WHERE reference = 'cs_old'")
        .await;
    assert_eq!(refunded, 200);

    // The ledger goes on; the next snapshot appends after the checkpoint.
    let (writer, thread) = start_writer(&store);
    let settle = Action::Settle {
        pick: 0,
        fraction: 255,
    };
    writer.submit_wait(sim.act(&settle).unwrap()).unwrap();
    close(writer, thread);
    let third = schema.snapshot(&store).await;
    assert_eq!((third.entries, third.pruned), (1, 0));

    let restored_dir = TempDir::new("pg-prune-restored");
    let restored = schema.restore(&restored_dir).await;
    let report = restored.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.pruned_through, checkpoint.through_seq);
    assert_eq!(report.revenue, sim.revenue);
    assert_eq!(books(&restored, &sim), books(&store, &sim));
    assert_eq!(restored.ledger_checkpoint().unwrap(), Some(checkpoint));
    let payment = restored.payment("cs_old").unwrap().unwrap();
    assert_eq!(payment.status, PaymentStatus::PartiallyRefunded);
    drop(restored);
    drop(store);
    schema.drop().await;
}

#[tokio::test]
async fn a_store_pruned_past_the_watermark_still_snapshots_exactly() {
    let schema = Schema::new("prune_ahead").await;
    let store = Store::temporary().unwrap();
    let mut sim = Sim::new();
    build(&store, &mut sim, 50);
    // Pruned before Postgres saw anything: those entries never reach it.
    prune_all(&store);
    let checkpoint = store.ledger_checkpoint().unwrap().unwrap();
    let report = schema.snapshot(&store).await;
    assert_eq!((report.entries, report.pruned), (1, 0));
    assert_eq!(report.open_holds, 1);
    // `build` uses the model's first two accounts.
    for account in &sim.accounts[..2] {
        let balance = schema
            .int(&format!(
                "SELECT balance_nanos FROM balances WHERE account_id = {}",
                account.id.get()
            ))
            .await;
        assert_eq!(balance, store.books(account.id).unwrap().balance.get());
    }
    let dir = TempDir::new("pg-prune-ahead");
    let restored = schema.restore(&dir).await;
    assert_eq!(restored.ledger_checkpoint().unwrap(), Some(checkpoint));
    assert_eq!(books(&restored, &sim), books(&store, &sim));
    assert_eq!(restored.open_holds().unwrap().len(), 1);
    drop(restored);
    schema.drop().await;
}
