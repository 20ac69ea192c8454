//! Postgres snapshots and restore against the real local Postgres
//! (`TOKUN_TEST_PG_URL`; each test in a schema of its own): the snapshot
//! equals sled, survives a connection killed mid-transaction without
//! duplicates, lets serving go on while Postgres is down and catches up,
//! and a restore rebuilds a store that verifies and serves the same
//! balances.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod pg_support;
mod support;

use std::time::Duration;

use pg_support::{PgProxy, TestSchema, Totals, add_payments, build_ledger, pg_url};
use serde_json::{Value, json};
use support::{Harness, chat, get_json, temp_dir};
use tokun_storage::Store;
use tokun_storage::postgres::{PgError, restore, snapshot};

/// Polls `check` every 20 ms for up to 30 s; the condition, not the time, is what is awaited.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    for _ in 0..1500 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn snapshots(h: &Harness) -> Value {
    let response = h
        .anonymous
        .get(h.url("/admin/snapshots"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn trigger(h: &Harness) -> reqwest::Response {
    h.anonymous
        .post(h.url("/admin/snapshots"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap()
}

fn postgres_section(url: &str, schema: &str, interval_secs: u64) -> String {
    format!(
        "[postgres]\nurl = \"{url}\"\nschema = \"{schema}\"\nsnapshot_interval_secs = {interval_secs}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_100k_entries_matches_sled_and_is_idempotent() {
    let schema = TestSchema::new().await;
    let store = Store::temporary().unwrap();
    build_ledger(&store, 200, 100_000, 10);
    assert!(store.last_seq().unwrap() >= 100_000);
    let mut conn = schema.target().connect("tokun-test").await.unwrap();

    let report = snapshot(&store, &mut conn).await.unwrap();
    assert_eq!(report.last_seq, store.last_seq().unwrap());
    assert_eq!(report.entries, report.last_seq);
    let totals = Totals::of(&store);
    assert_eq!(Totals::in_postgres(&schema).await, totals);
    assert_eq!(
        schema.int("SELECT last_seq FROM snapshot_state").await,
        totals.entries
    );

    // Nothing new: nothing added, nothing doubled.
    let again = snapshot(&store, &mut conn).await.unwrap();
    assert_eq!((again.entries, again.requests), (0, 0));
    assert_eq!(Totals::in_postgres(&schema).await, totals);

    // The documented views add up to the same money and usage.
    let balance = schema
        .int("SELECT (sum(balance_usd) * 1000000000)::bigint FROM account_balances")
        .await;
    assert_eq!(balance, totals.balance);
    let usage = schema
        .int("SELECT sum(requests)::bigint FROM daily_usage")
        .await;
    assert_eq!(usage, totals.requests);
    let settled = schema
        .int("SELECT (sum(cost_usd) * 1000000000)::bigint FROM daily_usage")
        .await;
    assert_eq!(settled, totals.amount_by_kind["settle"]);
    drop(conn);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_killed_mid_transaction_then_retried_leaves_no_duplicates() {
    let schema = TestSchema::new().await;
    let proxy = PgProxy::start().await;
    let through_proxy =
        tokun_storage::postgres::PgTarget::parse(&proxy.url("proxy-pw"), &schema.name).unwrap();
    let store = Store::temporary().unwrap();
    build_ledger(&store, 50, 60_000, 4);
    let mut conn = through_proxy.connect("tokun-test").await.unwrap();
    snapshot(&store, &mut conn).await.unwrap();
    let first = Totals::in_postgres(&schema).await;
    assert_eq!(first, Totals::of(&store));

    // 40,000 more entries; the connection dies once 1 MB of them went out.
    build_ledger(&store, 50, 40_000, 0);
    proxy.cut_next_after(1 << 20);
    let mut conn = through_proxy.connect("tokun-test").await.unwrap();
    let err = snapshot(&store, &mut conn).await.unwrap_err();
    assert!(matches!(err, PgError::Postgres { .. }), "{err}");
    assert!(!err.to_string().contains("proxy-pw"), "{err}");
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The killed transaction left nothing behind.
    assert_eq!(Totals::in_postgres(&schema).await, first);

    let mut conn = through_proxy.connect("tokun-test").await.unwrap();
    let report = snapshot(&store, &mut conn).await.unwrap();
    assert_eq!(report.from_seq as i64, first.entries);
    assert_eq!(Totals::in_postgres(&schema).await, Totals::of(&store));
    let distinct = schema
        .int("SELECT count(DISTINCT (account_id, at_ms, unique_id)) FROM requests")
        .await;
    assert_eq!(distinct, Totals::of(&store).requests);
    drop(conn);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_serving_continues_and_snapshots_catch_up() {
    let schema = TestSchema::new().await;
    let proxy = PgProxy::start().await;
    proxy.set_down(true);
    let password = "pw-never-shown-7";
    let h = Harness::start(Some(&postgres_section(
        &proxy.url(password),
        &schema.name,
        1,
    )))
    .await;
    for _ in 0..3 {
        let response = h
            .post_json("/v1/chat/completions", &chat("echo-mini", false))
            .await;
        assert_eq!(response.status(), 200);
    }
    let ready = h.anonymous.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "Postgres down must not make tokun unready"
    );

    let status = eventually("a failed snapshot", || async {
        let status = snapshots(&h).await;
        (status["consecutive_failures"].as_u64() >= Some(1)).then_some(status)
    })
    .await;
    assert!(status["last_error"].is_string(), "{status}");
    assert!(!status.to_string().contains(password), "{status}");
    assert!(status["lag_entries"].as_u64() > Some(0), "{status}");
    let scrape = h
        .anonymous
        .get(h.url("/metrics"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lag = scrape
        .lines()
        .find(|l| l.starts_with("tokun_snapshot_lag_entries "))
        .unwrap();
    assert_ne!(lag, "tokun_snapshot_lag_entries 0", "{lag}");
    assert!(scrape.contains("tokun_snapshot_failures_total"));
    let refused = trigger(&h).await;
    assert_eq!(refused.status(), 503);
    assert!(!refused.text().await.unwrap().contains(password));

    proxy.set_down(false);
    let last_seq = h.server.services().store.last_seq().unwrap();
    eventually("the snapshot to catch up", || async {
        let status = snapshots(&h).await;
        let caught_up =
            status["watermark"].as_u64() >= Some(last_seq) && status["consecutive_failures"] == 0;
        caught_up.then_some(status)
    })
    .await;
    let store = h.server.services().store.clone();
    assert_eq!(Totals::in_postgres(&schema).await, Totals::of(&store));

    let response = h
        .post_json("/v1/chat/completions", &chat("echo-mini", true))
        .await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let triggered = trigger(&h).await;
    assert_eq!(triggered.status(), 200);
    let body: Value = triggered.json().await.unwrap();
    assert!(body["report"]["entries"].as_u64() >= Some(1), "{body}");
    h.server.shutdown().await.unwrap();
    assert_eq!(Totals::in_postgres(&schema).await, Totals::of(&store));
    schema.drop_schema().await;
}

async fn balances(h: &Harness) -> Value {
    let response = h
        .anonymous
        .get(h.url("/admin/accounts"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let mut data = body["data"].as_array().unwrap().clone();
    for account in &mut data {
        account.as_object_mut().unwrap().remove("created");
    }
    Value::Array(data)
}

fn tokun(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
        .args(args)
        .env_remove("TOKUN_DATA")
        .env_remove("TOKUN_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_an_empty_dir_serves_the_same_balances() {
    let schema = TestSchema::new().await;
    let section = postgres_section(&pg_url(), &schema.name, 3600);
    let h = Harness::start(Some(&section)).await;
    for stream in [false, true, false, true, false] {
        let response = h
            .post_json("/v1/chat/completions", &chat("echo-mini", stream))
            .await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    let admin = |path: &str, body: Value| {
        h.anonymous
            .post(h.url(path))
            .bearer_auth(&h.admin_token)
            .json(&body)
            .send()
    };
    let created = admin(
        "/admin/accounts",
        json!({"email": "b@example.com", "credit_usd": "7.5"}),
    );
    assert_eq!(created.await.unwrap().status(), 201);
    let debit = json!({"amount_usd": "1.25", "reason": "correction"});
    assert_eq!(
        admin("/admin/accounts/acct_2/debit", debit)
            .await
            .unwrap()
            .status(),
        200
    );
    let key: Value = admin("/admin/accounts/acct_1/keys", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revoke = format!("/admin/keys/{}/revoke", key["id"].as_str().unwrap());
    assert_eq!(admin(&revoke, json!({})).await.unwrap().status(), 200);
    let before = balances(&h).await;
    let usage: Value = get_json(&h.client, &h, "/v1/usage").await;
    let api_key = h.api_key.clone();
    let original = h.server.services().store.clone();
    h.server.shutdown().await.unwrap();
    let totals = Totals::of(&original);
    assert_eq!(
        Totals::in_postgres(&schema).await,
        totals,
        "the final snapshot has everything"
    );

    let restored = temp_dir("restored");
    let dir = restored.to_str().unwrap();
    let args = [
        "restore",
        "--from-postgres",
        &pg_url(),
        "--data",
        dir,
        "--schema",
        &schema.name,
    ];
    let output = tokun(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("verified clean"), "{stdout}");
    let again = tokun(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let verify = tokun(&["ledger", "verify", "--data", dir]);
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("ledger verified: clean"));

    let mut config = tokun::config::Config::parse(&section, |_| None).unwrap();
    config.server.data_dir = restored.clone();
    let h = Harness::start_with(config).await;
    assert_eq!(balances(&h).await, before);
    let client = support::client_with_key(&api_key);
    let usage_after: Value = get_json(&client, &h, "/v1/usage").await;
    assert_eq!(usage_after["data"], usage["data"]);
    let response = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat("echo-mini", false))
        .send();
    assert_eq!(
        response.await.unwrap().status(),
        200,
        "the restored key works"
    );
    // The restored store goes on snapshotting into the same schema.
    assert_eq!(trigger(&h).await.status(), 200);
    let store = h.server.services().store.clone();
    assert_eq!(Totals::in_postgres(&schema).await, Totals::of(&store));
    h.server.shutdown().await.unwrap();
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_brings_back_open_holds_and_payments() {
    let schema = TestSchema::new().await;
    let data = temp_dir("holds");
    let original = Store::open(data.join("ledger")).unwrap();
    build_ledger(&original, 5, 3_000, 6);
    add_payments(&original);
    let mut conn = schema.target().connect("tokun-test").await.unwrap();
    snapshot(&original, &mut conn).await.unwrap();

    let restored_dir = temp_dir("holds-restored");
    let report = restore(&mut conn, &restored_dir.join("ledger"))
        .await
        .unwrap();
    assert_eq!(report.open_holds, 6);
    assert!(report.verify.is_clean());
    let restored = Store::open(restored_dir.join("ledger")).unwrap();
    assert_eq!(
        restored.open_holds().unwrap(),
        original.open_holds().unwrap()
    );
    assert_eq!(Totals::of(&restored), Totals::of(&original));
    let payments = |store: &Store| store.payments(None, usize::MAX).unwrap();
    assert_eq!(payments(&restored), payments(&original));
    assert_eq!((report.payments, report.stripe_events), (3, 2));
    assert!(restored.is_processed("evt_2").unwrap());
    // New ids never reuse restored ones.
    let highest_hold = original
        .open_holds()
        .unwrap()
        .iter()
        .map(|h| h.hold)
        .max()
        .unwrap();
    assert!(restored.next_hold_id().unwrap() > highest_hold);
    let accounts = original.accounts(None, usize::MAX).unwrap();
    assert!(restored.next_account_id().unwrap() > accounts.last().unwrap().id);
    drop((original, restored));

    let mut config = tokun::config::Config::default();
    config.server.data_dir = restored_dir;
    let h = Harness::start_with(config).await;
    assert_eq!(h.server.first_start().recovered_holds, 6);
    let verify = h
        .anonymous
        .post(h.url("/admin/ledger/verify"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    let verify: Value = verify.json().await.unwrap();
    assert_eq!(verify["clean"], true, "{verify}");
    assert_eq!(h.server.services().store.open_holds().unwrap().len(), 0);
    h.server.shutdown().await.unwrap();
    drop(conn);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_non_empty_dir_or_a_schema_without_a_snapshot() {
    let schema = TestSchema::new().await;
    let mut conn = schema.target().connect("tokun-test").await.unwrap();
    let dir = temp_dir("refused");
    let err = restore(&mut conn, &dir.join("ledger")).await.unwrap_err();
    assert!(matches!(err, PgError::NoSnapshot { .. }), "{err}");
    assert!(
        !dir.join("ledger").exists(),
        "a refused restore leaves nothing"
    );

    std::fs::write(dir.join("stray"), b"x").unwrap();
    let err = restore(&mut conn, &dir).await.unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(dir.join("stray").exists());
    drop(conn);
    schema.drop_schema().await;
}
