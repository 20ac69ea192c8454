//! Helpers for the Postgres tests and the snapshot bench: a schema of its
//! own per test on the local Postgres (`TOKUN_TEST_PG_URL`), a ledger built
//! straight through the writer, sled's totals to compare with, and a TCP
//! proxy in front of Postgres that can refuse connections or cut one
//! mid-transaction.

#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod proxy;

use std::collections::BTreeMap;

use tokio::task::JoinHandle;
use tokun_storage::postgres::PgTarget;

#[allow(
    unused_imports,
    reason = "the snapshot bench includes this module without the proxy"
)]
pub use proxy::PgProxy;
use tokun_storage::{
    AccountId, AccountRecord, Books, EntryKind, KeyRecord, LedgerWriter, Nanos, NewEntry, Price,
    Store, UsageRecord, WriteOp, WriterConfig, apply, hash_secret,
};

/// The local test Postgres. Unset is an error, never a silent skip.
pub fn pg_url() -> String {
    std::env::var("TOKUN_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "TOKUN_TEST_PG_URL is not set: point it at a Postgres the tests may create schemas in, \
             e.g. TOKUN_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test (.ci/run sets it)"
        )
    })
}

/// A schema of one test's own, dropped by `drop_schema`.
pub struct TestSchema {
    pub name: String,
    /// A client whose `search_path` is the schema.
    pub client: tokio_postgres::Client,
    driver: JoinHandle<()>,
}

impl TestSchema {
    pub async fn new() -> TestSchema {
        let name = format!("tokun_test_{:016x}", rand::random::<u64>());
        let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
        config.options(format!("-c search_path={name}"));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        TestSchema {
            name,
            client,
            driver,
        }
    }

    pub fn target(&self) -> PgTarget {
        PgTarget::parse(&pg_url(), &self.name).unwrap()
    }

    /// One `bigint` (or `numeric` cast to it) from a query.
    pub async fn int(&self, sql: &str) -> i64 {
        let row = self.client.query_one(sql, &[]).await.unwrap();
        row.get(0)
    }

    pub async fn drop_schema(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
        self.driver.abort();
    }
}

/// What a built ledger holds, from sled, to compare Postgres with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: i64,
    pub amount_by_kind: BTreeMap<String, i64>,
    pub accounts: i64,
    pub keys: i64,
    pub balance_rows: i64,
    pub balance: i64,
    pub held: i64,
    pub open_holds: i64,
    pub requests: i64,
}

impl Totals {
    pub fn of(store: &Store) -> Totals {
        let mut totals = Totals::default();
        let mut touched = std::collections::BTreeSet::new();
        for entry in store.entries(0) {
            let entry = entry.unwrap();
            totals.entries += 1;
            *totals
                .amount_by_kind
                .entry(entry.kind.as_str().to_owned())
                .or_default() += entry.amount.get();
            touched.insert(entry.account);
        }
        for account in store.accounts(None, usize::MAX).unwrap() {
            totals.accounts += 1;
            totals.keys += store.keys_for(account.id).unwrap().len() as i64;
            totals.requests += store.usage_for(account.id, 0, u64::MAX).count() as i64;
        }
        for account in touched {
            let books = store.books(account).unwrap();
            totals.balance_rows += 1;
            totals.balance += books.balance.get();
            totals.held += books.held.get();
        }
        totals.open_holds = store.open_holds().unwrap().len() as i64;
        totals
    }

    /// The same totals, from the snapshot in `schema`.
    pub async fn in_postgres(schema: &TestSchema) -> Totals {
        let mut amount_by_kind = BTreeMap::new();
        let rows = schema
            .client
            .query(
                "SELECT kind, sum(amount_nanos)::bigint FROM ledger_entries GROUP BY kind",
                &[],
            )
            .await
            .unwrap();
        for row in rows {
            amount_by_kind.insert(row.get::<_, String>(0), row.get::<_, i64>(1));
        }
        Totals {
            entries: schema.int("SELECT count(*) FROM ledger_entries").await,
            amount_by_kind,
            accounts: schema.int("SELECT count(*) FROM accounts").await,
            keys: schema.int("SELECT count(*) FROM api_keys").await,
            balance_rows: schema.int("SELECT count(*) FROM balances").await,
            balance: schema
                .int("SELECT coalesce(sum(balance_nanos), 0)::bigint FROM balances")
                .await,
            held: schema
                .int("SELECT coalesce(sum(held_nanos), 0)::bigint FROM balances")
                .await,
            open_holds: schema.int("SELECT count(*) FROM open_holds").await,
            requests: schema.int("SELECT count(*) FROM requests").await,
        }
    }
}

/// Builds a ledger through the writer: `accounts` accounts with a key and
/// a topup each, then requests (hold, settle, release, usage record: three
/// entries each) round-robin until about `entries` entries, then `open`
/// holds left open (some extended and checkpointed), as a crash leaves them.
pub fn build_ledger(store: &Store, accounts: u64, entries: u64, open: u64) {
    let (writer, thread) = LedgerWriter::start(
        store.clone(),
        WriterConfig {
            max_batch: 16_384,
            ..WriterConfig::default()
        },
    )
    .unwrap();
    let price = Price::per_million(Nanos::new(1_000), Nanos::new(2_000), Nanos::new(500)).unwrap();
    let now = 1_700_000_000_000 + store.last_seq().unwrap();
    let mut books: BTreeMap<AccountId, Books> = BTreeMap::new();
    let existing = store.accounts(None, usize::MAX).unwrap();
    let mut ids: Vec<AccountId> = existing.iter().map(|a| a.id).collect();
    for account in &ids {
        books.insert(*account, store.books(*account).unwrap());
    }
    let mut ops = Vec::new();
    for _ in ids.len() as u64..accounts {
        let id = store.next_account_id().unwrap();
        ops.push(WriteOp::PutAccount(AccountRecord {
            id,
            email: format!("user{}@example.com", id.get()),
            created_ms: now,
            disabled: false,
            floor: Nanos::ZERO,
            deleted_ms: None,
        }));
        let secret = key_secret(id);
        ops.push(WriteOp::PutKey {
            hash: hash_secret(&secret),
            record: KeyRecord {
                id: store.next_key_id().unwrap(),
                account: id,
                prefix: KeyRecord::prefix_of(&secret),
                name: "test".into(),
                created_ms: now,
                last_used_ms: None,
                revoked_ms: None,
                spend_limit: None,
                rpm_limit: None,
                allowed_models: Vec::new(),
                debug: false,
                limit_reset: Default::default(),
                expires_ms: None,
            },
        });
        let after = apply(Books::ZERO, EntryKind::Topup, Nanos::new(1_000_000_000_000)).unwrap();
        let topup = NewEntry::new(
            now,
            id,
            EntryKind::Topup,
            Nanos::new(1_000_000_000_000),
            after,
        )
        .with_reference("initial credit");
        ops.push(WriteOp::Entry(topup));
        books.insert(id, after);
        ids.push(id);
    }
    writer.submit_wait(std::mem::take(&mut ops)).unwrap();
    let entry = |books: &mut Books, account, kind, amount: i64, at_ms| {
        *books = apply(*books, kind, Nanos::new(amount)).unwrap();
        NewEntry::new(at_ms, account, kind, Nanos::new(amount), *books)
    };
    let target = store.last_seq().unwrap() + entries;
    let mut written = store.last_seq().unwrap();
    let mut i = 0u64;
    while written + 3 <= target {
        let account = ids[(i % ids.len() as u64) as usize];
        let at_ms = now + i;
        let hold = store.next_hold_id().unwrap();
        let request = format!("req-{}", hold.get());
        let books = books.get_mut(&account).unwrap();
        let cost = 1_000 + (i % 5_000) as i64;
        let opened = entry(books, account, EntryKind::Hold, 10_000, at_ms)
            .with_hold(hold)
            .with_request_id(&request)
            .with_price(price);
        let settled = entry(books, account, EntryKind::Settle, cost, at_ms)
            .with_hold(hold)
            .with_request_id(&request);
        let released = entry(books, account, EntryKind::Release, 10_000 - cost, at_ms)
            .with_hold(hold)
            .with_request_id(&request);
        ops.extend([opened, settled, released].map(WriteOp::Entry));
        ops.push(WriteOp::PutUsage(usage(account, at_ms, &request, cost)));
        written += 3;
        i += 1;
        if ops.len() >= 4_000 {
            writer.submit_wait(std::mem::take(&mut ops)).unwrap();
        }
    }
    for j in 0..open {
        let account = ids[(j % ids.len() as u64) as usize];
        let hold = store.next_hold_id().unwrap();
        let books = books.get_mut(&account).unwrap();
        let opened = entry(books, account, EntryKind::Hold, 7_000, now + i + j)
            .with_hold(hold)
            .with_request_id(format!("open-{}", hold.get()))
            .with_price(price);
        ops.push(WriteOp::Entry(opened));
        if j % 2 == 0 {
            let extended =
                entry(books, account, EntryKind::Extend, 3_000, now + i + j).with_hold(hold);
            ops.push(WriteOp::Entry(extended));
            ops.push(WriteOp::Checkpoint {
                hold,
                prompt_tokens: 100,
                completion_tokens: 200,
            });
        }
    }
    if !ops.is_empty() {
        writer.submit_wait(ops).unwrap();
    }
    writer.close();
    thread.join().unwrap();
}

/// Stripe payments for account 1, through the writer as the webhook makes
/// them: one paid (its topup in the same submission), one paid then partly
/// refunded, one still open, and the event marks.
pub fn add_payments(store: &Store) {
    use tokun_storage::{PaymentRecord, PaymentStatus};
    let (writer, thread) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
    let account = AccountId::new(1);
    let mut books = store.books(account).unwrap();
    let mut paid = |session: &str, usd: i64| {
        let amount = Nanos::new(usd * 1_000_000_000);
        let mut payment = PaymentRecord::open(session, account, amount, "usd", 1_700_000_000_000);
        payment.status = PaymentStatus::Paid;
        payment.paid_amount = amount;
        payment.payment_intent = Some(format!("pi_{session}"));
        books = apply(books, EntryKind::Topup, amount).unwrap();
        let topup = NewEntry::new(1_700_000_000_000, account, EntryKind::Topup, amount, books)
            .with_reference(session);
        writer
            .submit_wait(vec![
                WriteOp::Entry(topup),
                WriteOp::PutPayment(payment.clone()),
            ])
            .unwrap();
        payment
    };
    paid("cs_paid", 20);
    let mut refunded = paid("cs_refunded", 50);
    let back = Nanos::new(5_000_000_000);
    books = apply(books, EntryKind::Refund, back).unwrap();
    let refund = NewEntry::new(1_700_000_000_001, account, EntryKind::Refund, back, books)
        .with_reference("cs_refunded");
    refunded.status = PaymentStatus::PartiallyRefunded;
    refunded.refunded_amount = back;
    refunded.debited_amount = back;
    let open = PaymentRecord::open("cs_open", account, Nanos::new(9_000_000_000), "usd", 1);
    let mark = |key: &str| WriteOp::MarkProcessed {
        key: key.into(),
        at_ms: 1_700_000_000_002,
    };
    let ops = vec![
        WriteOp::Entry(refund),
        WriteOp::PutPayment(refunded),
        WriteOp::PutPayment(open),
        mark("evt_1"),
        mark("evt_2"),
    ];
    writer.submit_wait(ops).unwrap();
    writer.close();
    thread.join().unwrap();
}

/// The secret of the key `build_ledger` gives an account.
pub fn key_secret(account: AccountId) -> String {
    format!("sk-tokun-test{:0>32}", account.get())
}

pub fn usage(account: AccountId, at_ms: u64, request: &str, cost: i64) -> UsageRecord {
    UsageRecord {
        request_id: request.to_owned(),
        at_ms,
        account,
        key: None,
        model: "echo-mini".into(),
        served_model: "echo-mini".into(),
        provider: "echo".into(),
        prompt_tokens: 10,
        completion_tokens: 20,
        cost: Nanos::new(cost),
        estimated: false,
        status: 200,
        transport: "http".into(),
        latency_ms: 5,
        ttft_ms: Some(1),
        error_kind: None,
        cached_tokens: 0,
        route: None,
    }
}
