//! Policy changes end to end: announced through the admin API (14 days'
//! notice or a 400), shown to signed-in people as a dashboard banner until
//! they dismiss it (CSRF-checked, per account), audited, and mailed once
//! per account by SMTP to the testkit's sink — never again after a restart
//! on the same data dir. Without SMTP nobody is mailed.

use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};
use tokun_storage::MailProgress;
use tokun_testkit::smtp::SmtpSink;

use super::{Browser, csrf_of, sign_in};
use crate::support::{Harness, admin_get, admin_post, client_with_key, new_account};

const SUMMARY: &str = "We keep request logs for 90 days instead of 30 <b>now</b>.";
const LINK: &str = "https://example.com/privacy?v=2&lang=en";

/// Today's UTC date plus `days`, as the API takes it.
fn in_days(days: i64) -> String {
    let today: Date = jiff::Timestamp::now().to_zoned(TimeZone::UTC).date();
    today
        .checked_add(jiff::Span::new().days(days))
        .unwrap()
        .to_string()
}

async fn announce(h: &Harness, effective: &str, summary: &str) -> reqwest::Response {
    let body = json!({"effective": effective, "summary": summary, "url": LINK});
    admin_post(h, "/admin/policy", body).await
}

/// Waits (bounded) until `GET /admin/policy` says policy `index`'s mailing
/// is done; returns that policy.
async fn mailing_done(h: &Harness, index: usize) -> Value {
    for _ in 0..1_000 {
        let list = admin_get(h, "/admin/policy").await;
        let policy = &list["data"][index];
        if policy["mail"]["done"] == true {
            return policy.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the mailing of policy {index} did not finish");
}

#[tokio::test]
async fn a_policy_change_needs_fourteen_days_and_shows_until_dismissed() {
    let h = Harness::start(None).await;
    let mut mail = h.server.watch_mail();
    let soon = announce(&h, &in_days(13), SUMMARY).await;
    assert_eq!(soon.status(), StatusCode::BAD_REQUEST);
    let body: Value = soon.json().await.unwrap();
    assert_eq!(body["error"]["param"], "effective", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("at least 14 days ahead"), "{message}");
    assert!(
        message.contains(&in_days(14)),
        "names the earliest: {message}"
    );
    let bad_link = json!({"effective": in_days(20), "summary": "x", "url": "http://x.test"});
    let refused = admin_post(&h, "/admin/policy", bad_link).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let unauthorized = h.anonymous.post(h.url("/admin/policy")).send().await;
    assert_eq!(unauthorized.unwrap().status(), StatusCode::UNAUTHORIZED);

    let effective = in_days(14);
    let created = announce(&h, &effective, SUMMARY).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let policy: Value = created.json().await.unwrap();
    assert_eq!(policy["id"], "pol_1");
    assert_eq!(policy["effective"], effective.as_str());

    let (ada, _) = sign_in(&h, "ada@example.com").await;
    let (bob, _) = sign_in(&h, "bob@example.com").await;
    let dashboard = ada.page("/").await;
    assert!(dashboard.contains("Our policies change on"), "{dashboard}");
    assert!(dashboard.contains(&effective));
    assert!(dashboard.contains("&lt;b&gt;now&lt;/b&gt;"), "escaped");
    assert!(!dashboard.contains("<b>now</b>"));
    assert!(dashboard.contains("href=\"https://example.com/privacy?v=2&amp;lang=en\""));
    assert!(dashboard.contains("action=\"/policy/1/dismiss\""));

    // Without the session's CSRF token, or with another session's: refused.
    let no_token = ada.post("/policy/1/dismiss", &[]).await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let bobs = csrf_of(&bob.page("/").await);
    let forged = ada.post("/policy/1/dismiss", &[("csrf", &bobs)]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(ada.page("/").await.contains("Our policies change on"));
    let anonymous = Browser::new(&h).post("/policy/1/dismiss", &[]).await;
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);

    let csrf = csrf_of(&dashboard);
    let unknown = ada.post("/policy/9/dismiss", &[("csrf", &csrf)]).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let dismissed = ada.post("/policy/1/dismiss", &[("csrf", &csrf)]).await;
    assert_eq!(dismissed.status(), StatusCode::SEE_OTHER);
    assert_eq!(dismissed.headers()[LOCATION], "/");
    assert!(!ada.page("/").await.contains("Our policies change on"));
    // For good: in a new session too. Someone else still sees it.
    let (again, _) = sign_in(&h, "ada@example.com").await;
    assert!(!again.page("/").await.contains("Our policies change on"));
    assert!(bob.page("/").await.contains("Our policies change on"));

    let audit = admin_get(&h, "/admin/audit?action=policy.").await;
    let record = &audit["data"][0];
    assert_eq!(record["action"], "policy.announce");
    assert_eq!(record["target"], "pol_1");
    assert_eq!(record["after"]["summary"], SUMMARY);
    assert_eq!(audit["data"].as_array().unwrap().len(), 1);

    // No SMTP: the mailing ends without a single policy email.
    let policy = mailing_done(&h, 0).await;
    assert_eq!(policy["mail"]["sent"], 0);
    while let Ok(sent) = mail.try_recv() {
        assert!(!sent.subject.contains("policies"), "{sent:?}");
    }
}

#[tokio::test]
async fn each_account_gets_one_email_and_none_again_after_a_restart() {
    let sink = SmtpSink::start().await.unwrap();
    let config = format!(
        "[auth.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"tokun <no-reply@tokun.test>\"\n",
        sink.port()
    );
    let h = Harness::start(Some(&config)).await;
    new_account(&h, "ada@example.com", "1").await;
    new_account(&h, "bob@example.com", "1").await;
    let (_, gone_key) = new_account(&h, "gone@example.com", "1").await;
    let deleted = client_with_key(&gone_key)
        .post(h.url("/v1/account/delete"))
        .json(&json!({"confirm": "gone@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);

    let first = in_days(30);
    assert_eq!(announce(&h, &first, SUMMARY).await.status(), 201);
    let policy = mailing_done(&h, 0).await;
    let people = ["demo@tokun.local", "ada@example.com", "bob@example.com"];
    assert_eq!(policy["mail"]["sent"], people.len());
    let about = |to: &str, effective: &str| {
        sink.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|r| r == to))
            .filter(|m| m.data.contains(&format!("effective {effective}")))
            .collect::<Vec<_>>()
    };
    for to in people {
        let received = about(to, &first);
        assert_eq!(received.len(), 1, "{to}: {received:?}");
        let data = &received[0].data;
        assert!(data.contains("We keep request logs for 90 days"), "{data}");
        assert!(data.contains(LINK), "{data}");
    }
    assert!(
        about("gone@example.com", &first).is_empty(),
        "deleted: not mailed"
    );

    // As if the server had died half-way through: the first mailing walks
    // every account again after the restart, and only the per-account
    // marks can keep it from sending a second email.
    let store = h.server.services().store.clone();
    store
        .put_mail_progress(1, &MailProgress::default())
        .unwrap();
    drop(store);
    let data_dir = h.data_dir.clone();
    h.server.shutdown().await.unwrap();
    let mut restarted = tokun::config::Config::parse(&config, |_| None).unwrap();
    restarted.server.data_dir = data_dir;
    let h = Harness::start_with(restarted).await;
    let second = in_days(60);
    assert_eq!(announce(&h, &second, "Second change.").await.status(), 201);
    mailing_done(&h, 1).await;
    let walked_again = mailing_done(&h, 0).await;
    assert_eq!(walked_again["mail"]["sent"], 0, "{walked_again}");
    // Both mailings are done: every email they sent has arrived.
    for to in people {
        assert_eq!(about(to, &first).len(), 1, "{to}: not sent again");
        assert_eq!(about(to, &second).len(), 1, "{to}: the second one");
    }
}
