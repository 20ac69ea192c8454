//! The account's data over HTTP: the export (console and API, the same
//! document) holds every record kind and no secret; deletion refuses a
//! wrong email in place, needs the CSRF token, and once done revokes the
//! keys (HTTP and an open `/v1/ws` socket), signs every browser out and
//! refuses the email's sign-in, with the ledger still verifying clean.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_DISPOSITION, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Browser, csrf_of, request_code, sign_in};
use crate::support::{self, Harness, admin_post, client_with_key};

const WAIT: Duration = Duration::from_secs(20);

/// The secret on the keys page's show-once panel.
fn secret_of(html: &str) -> String {
    let start = html.find("value=\"sk-tokun-").expect("the secret is shown") + 7;
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_owned()
}

/// Creates a key through the form; returns (id, secret).
async fn create_key(browser: &Browser, csrf: &str, name: &str) -> (String, String) {
    let response = browser
        .post("/keys", &[("csrf", csrf), ("name", name)])
        .await;
    assert_eq!(response.status(), StatusCode::OK, "the key is created");
    let secret = secret_of(&response.text().await.unwrap());
    let client = client_with_key(&secret);
    let keys: Value = client
        .get(format!("{}/v1/keys", browser.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .expect("the new key is listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, secret)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The export without the moment it was made.
fn content(mut export: Value) -> Value {
    let object = export.as_object_mut().unwrap();
    object.remove("generated_ms");
    object.remove("generated_at");
    export
}

/// The next `/v1/ws` message whose type is one of `kinds`, or `None` when
/// the socket closed.
async fn next_of<S>(ws: &mut S, kinds: &[&str]) -> Option<Value>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if kinds.iter().any(|k| value["type"] == *k) {
                    return Some(value);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

fn ws_create(id: &str) -> Message {
    let body = json!({"type": "chat.completion.create", "id": id,
        "request": support::chat("echo-mini", true)});
    Message::text(body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_holds_every_record_kind_and_no_secret_and_deletion_ends_everything() {
    let h = Harness::start(None).await;
    let email = "Export.Me@example.com";
    let (browser, _) = sign_in(&h, email).await;
    // A second browser: two sessions, two sign-ins.
    let (other, _) = sign_in(&h, email).await;
    let csrf = csrf_of(&browser.page("/account").await);
    let (live_id, live) = create_key(&browser, &csrf, "live key").await;
    let (gone_id, gone) = create_key(&browser, &csrf, "revoked key").await;
    let revoked = browser
        .post(&format!("/keys/{gone_id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);

    // An operator's credit, then a request paid from it.
    let api = client_with_key(&live);
    let me: Value = support::account(&api, &h).await;
    let account = me["id"].as_str().unwrap().to_owned();
    let credited = admin_post(
        &h,
        &format!("/admin/accounts/{account}/credit"),
        json!({"amount_usd": "2", "reason": "goodwill"}),
    )
    .await;
    assert_eq!(credited.status(), StatusCode::OK);
    let completion = api
        .post(h.url("/v1/chat/completions"))
        .json(&support::chat("echo-mini", false))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status(), StatusCode::OK);
    // The API export first: it marks the key used (once a minute at most),
    // so the exports after it see the same key record.
    let warm = api.get(h.url("/v1/account/export")).send().await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    let _ = warm.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let response = browser.get("/account/export.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    let disposition = headers[CONTENT_DISPOSITION].to_str().unwrap().to_owned();
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"tokun-export-{account}-"))
            && disposition.ends_with(".json\""),
        "{disposition}"
    );
    let text = response.text().await.unwrap();
    let export: Value = serde_json::from_str(&text).expect("one JSON document");

    // Every record kind.
    assert_eq!(export["account_id"], account.as_str());
    let profile = &export["profile"];
    assert_eq!(profile["email"], "export.me@example.com");
    assert_eq!(profile["time_zone"], "UTC");
    assert!(profile["created_ms"].as_u64().unwrap() > 0);
    assert!(profile["first_signin_ms"].as_u64().is_some());
    assert!(profile["last_signin_ms"].as_u64().is_some());
    let sign_ins = export["sign_ins"].as_array().unwrap();
    assert_eq!(sign_ins.len(), 2, "{sign_ins:?}");
    assert!(sign_ins.iter().all(|s| s["method"] == "email"));
    let sessions = export["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for session in sessions {
        assert!(session["expires_ms"].as_u64() > session["created_ms"].as_u64());
        assert_eq!(session["method"], "email");
        assert!(session.get("csrf").is_none());
    }
    assert_eq!(export["passkeys"], json!([]));
    let keys = export["keys"].as_array().unwrap();
    let key = |id: &str| keys.iter().find(|k| k["id"] == id).expect("the key is in");
    assert_eq!(key(&live_id)["name"], "live key");
    assert!(key(&live_id)["revoked_ms"].is_null());
    assert!(key(&live_id)["last_used_ms"].as_u64().is_some());
    assert!(key(&gone_id)["revoked_ms"].as_u64().is_some());
    assert!(live.starts_with(key(&live_id)["prefix"].as_str().unwrap()));
    let requests = export["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["model"], "echo-mini");
    assert_eq!(requests[0]["key"], live_id.as_str());
    // The request log's route and cached tokens: echo is the first route.
    assert_eq!(requests[0]["route"], 0);
    assert_eq!(requests[0]["cached_tokens"], 0);
    let ledger = export["ledger"].as_array().unwrap();
    let kinds: Vec<&str> = ledger.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["adjustment", "hold", "settle"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let seqs: Vec<u64> = ledger.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );
    assert_eq!(export["payments"], json!([]));
    assert_eq!(export["debug_bodies"], json!([]));

    // No secret: not the keys' secrets or hashes, not the sessions' cookies,
    // hashes or CSRF tokens.
    let mut secrets = vec![
        live.clone(),
        gone.clone(),
        hex(&tokun_storage::hash_secret(&live)),
        hex(&tokun_storage::hash_secret(&gone)),
        csrf.clone(),
    ];
    for session in [&browser, &other] {
        let cookie = session.cookie.as_deref().unwrap();
        let token = cookie.split_once('=').unwrap().1.to_owned();
        secrets.push(hex(&tokun_storage::hash_secret(&token)));
        secrets.push(token);
    }
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "the export holds {secret}");
    }

    // The API's export is the same document.
    let from_api = api.get(h.url("/v1/account/export")).send().await.unwrap();
    assert_eq!(from_api.status(), StatusCode::OK);
    assert_eq!(from_api.headers()[CACHE_CONTROL], "no-store");
    let from_api: Value = from_api.json().await.unwrap();
    assert_eq!(content(from_api), content(export));
    // Without a key, no export.
    let anonymous = h
        .anonymous
        .get(h.url("/v1/account/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // A socket opened before the deletion, working.
    let mut ws = support::ws_with_key(&h, &live).await;
    ws.send(ws_create("before")).await.unwrap();
    let done = next_of(&mut ws, &["done", "error"])
        .await
        .expect("an answer");
    assert_eq!(done["type"], "done", "{done}");

    // Deleting: without the CSRF token, 403; a wrong email, 400 in place;
    // nothing changes either way.
    let forged = browser
        .post("/account/delete", &[("confirm", "export.me@example.com")])
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let wrong = browser
        .post(
            "/account/delete",
            &[("csrf", &csrf), ("confirm", "someone@example.com")],
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let page = wrong.text().await.unwrap();
    assert!(page.contains("Type your email address exactly"), "{page}");
    assert!(page.contains("value=\"someone@example.com\""));
    let api_wrong = api
        .post(h.url("/v1/account/delete"))
        .json(&json!({"confirm": "someone@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api_wrong.status(), StatusCode::BAD_REQUEST);
    let still: Value = support::account(&api, &h).await;
    assert_eq!(still["id"], account.as_str(), "the key still works");
    assert_eq!(browser.get("/account").await.status(), StatusCode::OK);
    assert_eq!(other.get("/account").await.status(), StatusCode::OK);

    // The right email, any case: deleted.
    let deleted = browser
        .post(
            "/account/delete",
            &[("csrf", &csrf), ("confirm", " EXPORT.me@example.com ")],
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    assert_eq!(deleted.headers()[LOCATION], "/account/deleted");
    let cleared = deleted.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let farewell = Browser::new(&h).page("/account/deleted").await;
    assert!(farewell.contains("Your account is deleted"));
    assert!(farewell.contains("30 days"));

    // Keys refused at once, over HTTP and on the open socket.
    for secret in [&live, &gone] {
        let refused = client_with_key(secret)
            .get(h.url("/v1/account"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
    let after = api.get(h.url("/v1/account/export")).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    ws.send(ws_create("after")).await.unwrap();
    let refused = next_of(&mut ws, &["done", "error"])
        .await
        .expect("the socket answers");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "after");
    assert_eq!(refused["error"]["code"], "invalid_api_key", "{refused}");
    assert_eq!(h.wait_streams_idle().await, 0, "nothing was started");
    // Both browsers are signed out.
    for session in [&browser, &other] {
        let response = session.get("/").await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[LOCATION], "/login");
    }
    // Signing in again with a code for that email is refused in place, and
    // makes no new account.
    let anonymous = Browser::new(&h);
    let code = request_code(&h, &anonymous, email).await;
    let again = anonymous
        .post("/login/code", &[("email", email), ("code", &code)])
        .await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
    assert!(again.headers().get(SET_COOKIE).is_none());
    let page = again.text().await.unwrap();
    assert!(page.contains("cannot sign in"), "{page}");
    let held = support::admin_get(&h, &format!("/admin/accounts/{account}")).await;
    assert_eq!(held["disabled"], true, "{held}");
    let store = &h.server.services().store;
    let record = store
        .account_by_email("export.me@example.com")
        .unwrap()
        .unwrap();
    assert_eq!(record.id.to_string(), account);
    assert!(record.deleted_ms.is_some());
    support::verify_clean(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_deletes_with_the_email_as_confirmation() {
    let h = Harness::start(None).await;
    let (browser, _) = sign_in(&h, "api-delete@example.com").await;
    let csrf = csrf_of(&browser.page("/account").await);
    let (_, secret) = create_key(&browser, &csrf, "api").await;
    let api = client_with_key(&secret);
    let missing = api
        .post(h.url("/v1/account/delete"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let deleted = api
        .post(h.url("/v1/account/delete"))
        .json(&json!({"confirm": "API-Delete@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let body: Value = deleted.json().await.unwrap();
    assert_eq!(body["deleted"], true, "{body}");
    assert!(body["keys_revoked"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(body["sessions_ended"], 1, "{body}");
    let refused = api.get(h.url("/v1/account")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let signed_out = browser.get("/account").await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);

    // An operator enabling the account again (its actor still live) does
    // not undo the deletion: the mark is the actor's, not only the store's.
    let store = &h.server.services().store;
    let account = store
        .account_by_email("api-delete@example.com")
        .unwrap()
        .unwrap();
    let enabled = reqwest::Client::new()
        .post(h.url(&format!("/admin/accounts/{}/disable", account.id)))
        .bearer_auth(&h.admin_token)
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(enabled.status(), StatusCode::OK);
    let after = store.account(account.id).unwrap().unwrap();
    assert!(after.deleted_ms.is_some(), "{after:?}");
    assert_eq!(after.deleted_ms, account.deleted_ms);
    support::verify_clean(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_streams_whole_across_many_chunks() {
    use tokun_storage::{AccountId, EntryKind, Nanos, UsageRecord, WriteOp};
    let h = Harness::start(None).await;
    let (id, key) = support::new_account(&h, "long@example.com", "1").await;
    let account: AccountId = id.parse().unwrap();
    let services = h.server.services();
    // 2,345 requests: more than two chunks of the export.
    let usage: Vec<WriteOp> = (0..2_345u64)
        .map(|i| {
            WriteOp::PutUsage(UsageRecord {
                request_id: format!("req-long-{i:05}"),
                at_ms: 1_700_000_000_000 + i,
                account,
                key: None,
                model: "echo-mini".into(),
                served_model: "echo-mini".into(),
                provider: "echo".into(),
                prompt_tokens: i,
                completion_tokens: 1,
                cost: Nanos::new(0),
                estimated: false,
                status: 200,
                transport: "http".into(),
                latency_ms: 1,
                ttft_ms: None,
                error_kind: None,
                cached_tokens: 0,
                route: None,
            })
        })
        .collect();
    services.ledger.append(usage).await.unwrap();
    // 1,100 adjustments: more than one chunk of ledger entries.
    let credits = (0..1_100).map(|i| {
        let reason = format!("credit {i}");
        async move {
            services
                .accounts
                .transfer(account, EntryKind::Adjustment, Nanos::new(1), &reason)
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(credits).await;

    let export: Value = client_with_key(&key)
        .get(h.url("/v1/account/export"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("one whole JSON document");
    let requests = export["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2_345);
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..2_345).map(|i| format!("req-long-{i:05}")).collect();
    assert_eq!(ids, expected, "every request once, oldest first");
    let ledger = export["ledger"].as_array().unwrap();
    assert_eq!(
        ledger.len(),
        1 + 1_100,
        "the opening credit and each adjustment"
    );
    let seqs: Vec<u64> = ledger.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "each entry once, in order"
    );
    support::verify_clean(&h).await;
}
