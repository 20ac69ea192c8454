//! The operators' audit log and audited corrections, through the admin API
//! and the command line: a credit, a debit, a disable and an email change
//! each leave one record with before/after and the reason; an email change
//! needs a reason and a free, valid address; the log reaches Postgres
//! snapshots (`TOKUN_TEST_PG_URL`) and comes back with a restore.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod pg_support;
mod support;

use pg_support::{TestSchema, pg_url};
use serde_json::{Value, json};
use support::{Harness, admin_get, admin_post, new_account, temp_dir};
use tokun_storage::{AuditFilter, Store};

/// The audit log, oldest first.
async fn audit(h: &Harness, query: &str) -> Vec<Value> {
    let page = admin_get(h, &format!("/admin/audit{query}")).await;
    page["data"].as_array().expect("a list").clone()
}

#[tokio::test]
async fn credits_debits_and_disables_are_audited_with_their_reason() {
    let h = Harness::start(None).await;
    let (id, _) = new_account(&h, "ada@example.com", "10").await;
    let credit = json!({"amount_usd": "2.5", "reason": "goodwill <b>credit</b>"});
    let path = format!("/admin/accounts/{id}/credit");
    assert_eq!(admin_post(&h, &path, credit).await.status(), 200);
    let debit = json!({"amount_usd": "1", "reason": "double charge"});
    let path = format!("/admin/accounts/{id}/debit");
    assert_eq!(admin_post(&h, &path, debit).await.status(), 200);
    let disable = json!({"disabled": true, "reason": "chargeback"});
    let path = format!("/admin/accounts/{id}/disable");
    assert_eq!(admin_post(&h, &path, disable).await.status(), 200);

    let records = audit(&h, &format!("?target={id}")).await;
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.create",
            "account.credit",
            "account.debit",
            "account.disable"
        ]
    );
    let credit = &records[1];
    assert_eq!(credit["actor"], "admin-token");
    assert_eq!(credit["reason"], "goodwill <b>credit</b>");
    assert_eq!(credit["before"]["balance_usd"], "10.00");
    assert_eq!(credit["after"]["balance_usd"], "12.50");
    assert_eq!(credit["after"]["amount_usd"], "2.50");
    assert_eq!(records[2]["before"]["balance_usd"], "12.50");
    assert_eq!(records[2]["after"]["balance_usd"], "11.50");
    assert_eq!(records[3]["before"], json!({"disabled": false}));
    assert_eq!(records[3]["reason"], "chargeback");
    assert!(credit["at_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // Paging: after a seq, at most `limit`, and where the next page starts.
    let all = audit(&h, "").await;
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let page = admin_get(&h, "/admin/audit?after=1&limit=2").await;
    assert_eq!(page["data"][0]["seq"], 2);
    assert_eq!(page["next_after"], 3);
    let unauthorized = h.anonymous.get(h.url("/admin/audit")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
}

#[tokio::test]
async fn an_email_change_needs_a_reason_and_is_audited_before_and_after() {
    let h = Harness::start(None).await;
    let (id, key) = new_account(&h, "old@example.com", "1").await;
    let (other, _) = new_account(&h, "taken@example.com", "1").await;
    let path = format!("/admin/accounts/{id}/email");
    let refused = admin_post(&h, &path, json!({"email": "new@example.com"})).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["param"], "reason", "{body}");
    let blank = json!({"email": "new@example.com", "reason": "  "});
    assert_eq!(admin_post(&h, &path, blank).await.status(), 400);
    for bad in [
        "not-an-email",
        "a\u{7}@example.com",
        "two words@example.com",
    ] {
        let change = json!({"email": bad, "reason": "typo"});
        let refused = admin_post(&h, &path, change).await;
        assert_eq!(refused.status(), 400, "{bad}");
    }
    let taken = json!({"email": "Taken@Example.com", "reason": "typo"});
    assert_eq!(admin_post(&h, &path, taken).await.status(), 409);
    let unknown = json!({"email": "x@example.com", "reason": "typo"});
    let missing = admin_post(&h, "/admin/accounts/acct_999/email", unknown).await;
    assert_eq!(missing.status(), 404);

    let change = json!({"email": " New@Example.com ", "reason": "owner wrote in, ticket 42"});
    let changed = admin_post(&h, &path, change).await;
    assert_eq!(changed.status(), 200);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["email"], "new@example.com");

    let store = &h.server.services().store;
    assert!(store.account_by_email("old@example.com").unwrap().is_none());
    let found = store.account_by_email("new@example.com").unwrap().unwrap();
    assert_eq!(found.id.to_string(), id);
    // The account actor took the new email: a later write keeps it.
    let disable = json!({"disabled": false});
    let path_disable = format!("/admin/accounts/{id}/disable");
    assert_eq!(admin_post(&h, &path_disable, disable).await.status(), 200);
    let shown = admin_get(&h, &format!("/admin/accounts/{id}")).await;
    assert_eq!(shown["email"], "new@example.com");
    // The old address is free again; the key still works.
    let reuse = json!({"email": "old@example.com", "reason": "swap"});
    let path_other = format!("/admin/accounts/{other}/email");
    assert_eq!(admin_post(&h, &path_other, reuse).await.status(), 200);
    let client = support::client_with_key(&key);
    let account = support::get_json(&client, &h, "/v1/account").await;
    assert_eq!(account["id"], id.as_str());

    // A deleted account can be viewed, not corrected.
    let (gone, gone_key) = new_account(&h, "gone@example.com", "1").await;
    let deleted = support::client_with_key(&gone_key)
        .post(h.url("/v1/account/delete"))
        .json(&json!({"confirm": "gone@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let change = json!({"email": "back@example.com", "reason": "undo"});
    let path_gone = format!("/admin/accounts/{gone}/email");
    assert_eq!(admin_post(&h, &path_gone, change).await.status(), 409);

    let records = audit(&h, "?action=account.email").await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["target"], id.as_str());
    assert_eq!(records[0]["before"], json!({"email": "old@example.com"}));
    assert_eq!(records[0]["after"], json!({"email": "new@example.com"}));
    assert_eq!(records[0]["reason"], "owner wrote in, ticket 42");
    assert_eq!(records[0]["actor"], "admin-token");
}

#[test]
fn the_command_line_corrects_an_email_credits_and_announces_with_audit_records() {
    let data = temp_dir("audit-cli");
    let tokun = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokun"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .env_remove("TOKUN_CONFIG")
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (
            output.status.success(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };
    let (ok, out, err) = tokun(&["accounts", "create", "cli@example.com"]);
    assert!(ok, "{err}");
    let account = out.split_whitespace().next().unwrap().to_owned();
    let (ok, _, err) = tokun(&["accounts", "set-email", &account, "fixed@example.com"]);
    assert!(
        !ok && err.contains("--reason"),
        "a reason is required: {err}"
    );
    let (ok, _, err) = tokun(&[
        "accounts",
        "set-email",
        &account,
        "fixed@example.com",
        "--reason",
        "",
    ]);
    assert!(!ok && err.contains("reason"), "{err}");
    let (ok, out, err) = tokun(&[
        "accounts",
        "set-email",
        &account,
        "Fixed@Example.com",
        "--reason",
        "typo at signup",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{account}\tfixed@example.com"));
    let (ok, _, err) = tokun(&[
        "accounts",
        "credit",
        &account,
        "--amount-usd",
        "3",
        "--reason",
        "promo",
    ]);
    assert!(ok, "{err}");

    let in_days = |days: i64| {
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        let day = today.checked_add(jiff::Span::new().days(days)).unwrap();
        day.to_string()
    };
    let announce = |effective: &str| {
        tokun(&[
            "policy",
            "announce",
            "--effective",
            effective,
            "--summary",
            "Request logs are kept 90 days.",
            "--url",
            "https://example.com/privacy",
        ])
    };
    let (ok, _, err) = announce(&in_days(13));
    assert!(!ok && err.contains("at least 14 days ahead"), "{err}");
    let (ok, out, err) = announce(&in_days(14));
    assert!(ok, "{err}");
    assert!(out.starts_with("pol_1\teffective "), "{out}");

    let store = Store::open(data.join("ledger")).unwrap();
    let policies = store.policies().unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(
        policies[0].url.as_deref(),
        Some("https://example.com/privacy")
    );
    let records = store.audit_after(0, &AuditFilter::default(), 10).unwrap();
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("cli", "account.email", "typo at signup"),
            ("cli", "account.credit", "promo"),
            ("cli", "policy.announce", ""),
        ]
    );
    assert_eq!(records[0].before, json!({"email": "cli@example.com"}));
    assert_eq!(records[0].after, json!({"email": "fixed@example.com"}));
    assert_eq!(records[1].after["balance_usd"], "3.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_reach_postgres_and_come_back_with_a_restore() {
    let schema = TestSchema::new().await;
    let section = format!(
        "[postgres]\nurl = \"{}\"\nschema = \"{}\"\nsnapshot_interval_secs = 3600\n",
        pg_url(),
        schema.name
    );
    let h = Harness::start(Some(&section)).await;
    let (id, _) = new_account(&h, "pg@example.com", "5").await;
    let credit = json!({"amount_usd": "1.5", "reason": "it's \"quoted\""});
    let path = format!("/admin/accounts/{id}/credit");
    assert_eq!(admin_post(&h, &path, credit).await.status(), 200);
    let change = json!({"email": "pg2@example.com", "reason": "typo"});
    let path = format!("/admin/accounts/{id}/email");
    assert_eq!(admin_post(&h, &path, change).await.status(), 200);
    let snapshot = admin_post(&h, "/admin/snapshots", json!({})).await;
    assert_eq!(snapshot.status(), 200);
    // (An earlier snapshot, at start, may have copied some already.)
    assert_eq!(schema.int("SELECT count(*) FROM audit_log").await, 3);

    let rows = schema
        .client
        .query(
            "SELECT seq, actor, action, target, before, after, reason FROM audit_log ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(
        actions,
        ["account.create", "account.credit", "account.email"]
    );
    let email = &rows[2];
    assert_eq!(email.get::<_, i64>(0), 3);
    assert_eq!(email.get::<_, String>(1), "admin-token");
    assert_eq!(email.get::<_, String>(3), id);
    let before: String = schema
        .client
        .query_one("SELECT before->>'email' FROM audit_log WHERE seq = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, "pg@example.com");
    assert_eq!(email.get::<_, String>(6), "typo");
    assert_eq!(rows[1].get::<_, String>(6), "it's \"quoted\"");

    // Nothing new: nothing copied twice. One more action: one more row.
    let again = admin_post(&h, "/admin/snapshots", json!({})).await;
    let report: Value = again.json().await.unwrap();
    assert_eq!(report["report"]["audit"], 0, "{report}");
    let debit = json!({"amount_usd": "0.5", "reason": "fee"});
    let path = format!("/admin/accounts/{id}/debit");
    assert_eq!(admin_post(&h, &path, debit).await.status(), 200);
    let original = h.server.services().store.clone();
    h.server.shutdown().await.unwrap();
    assert_eq!(schema.int("SELECT count(*) FROM audit_log").await, 4);
    let view_rows = schema.int("SELECT count(*) FROM audit").await;
    assert_eq!(view_rows, 4, "the documented view");

    let restored = temp_dir("audit-restored");
    let mut conn = schema
        .target()
        .connect_existing("tokun-test")
        .await
        .unwrap();
    let report = tokun_storage::postgres::restore(&mut conn, &restored.join("ledger"))
        .await
        .unwrap();
    assert_eq!(report.audit, 4);
    let all = AuditFilter::default();
    let store = Store::open(restored.join("ledger")).unwrap();
    let back = store.audit_after(0, &all, 100).unwrap();
    assert_eq!(back, original.audit_after(0, &all, 100).unwrap());
    drop(conn);
    schema.drop_schema().await;
}
