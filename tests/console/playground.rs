//! The playground over HTTP and `/v1/ws`: the page (models, the preselected
//! model, the CSRF token, the script), the session ticket's guards (a
//! session and this session's CSRF token, by header or form field), and a
//! ticket that opens `/v1/ws` once and bills the session's account exactly
//! the cost the `done` message reports — whole, and stopped mid-stream.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokun_storage::{AccountId, Nanos};

use super::{Browser, csrf_of};
use crate::support::Harness;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

/// Two echo models: `echo-mini` answers at once, `echo-long` writes up to
/// 4,000 tokens 20 ms apart (long enough to stop mid-stream).
const CONFIG: &str = crate::support::PLAYGROUND_CONFIG;

/// A fresh ticket for this session, by the header.
async fn ticket(browser: &Browser, csrf: &str) -> String {
    let response = browser
        .post_with_token("/playground/ticket", Some(csrf), &[])
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    body["ticket"].as_str().unwrap().to_owned()
}

/// Signs `email` in (`main.rs`); the browser and its session's CSRF token,
/// from the playground page.
async fn sign_in(h: &Harness, email: &str) -> (Browser, String) {
    let (browser, _) = super::sign_in(h, email).await;
    let csrf = csrf_of(&browser.page("/playground").await);
    (browser, csrf)
}

fn account_of(h: &Harness, email: &str) -> AccountId {
    let store = &h.server.services().store;
    store.account_by_email(email).unwrap().unwrap().id
}

fn balance(h: &Harness, account: AccountId) -> Nanos {
    h.server.services().store.books(account).unwrap().balance
}

async fn open(h: &Harness, ticket: &str) -> Ws {
    let url = format!(
        "{}/v1/ws?ticket={ticket}",
        h.base.replacen("http://", "ws://", 1)
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, value: &Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON message, or the close frame.
async fn next(ws: &mut Ws) -> Result<Value, Option<CloseFrame>> {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(&text).unwrap()),
            Message::Close(frame) => return Err(frame),
            _ => {}
        }
    }
}

fn create(id: &str, model: &str, max_tokens: u32) -> Value {
    json!({"type": "chat.completion.create", "id": id, "request": {
        "model": model, "stream": true, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say hello to the playground"}],
    }})
}

fn content_of(message: &Value) -> &str {
    message["chunk"]["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn the_playground_lists_the_models_and_carries_the_csrf_token() {
    let h = Harness::start(Some(CONFIG)).await;
    let signed_out = Browser::new(&h).get("/playground").await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_out.headers()[LOCATION], "/login");

    let (browser, csrf) = sign_in(&h, "player@example.com").await;
    let html = browser.page("/playground?model=echo-long").await;
    assert!(html.contains(&format!("value=\"{csrf}\"")));
    assert!(html.contains("<option value=\"echo-mini\">echo-mini — $0.15 / $0.60</option>"));
    assert!(
        html.contains("<option value=\"echo-long\" selected>"),
        "{html}"
    );
    assert!(html.contains("aria-live=\"polite\""));
    assert!(html.contains("<noscript>") && html.contains("needs JavaScript"));
    assert!(html.contains("id=\"pg-stop\"") && html.contains("id=\"pg-send\""));
    assert!(!html.contains(" onclick="), "no inline handlers");
    let src_at = html.find("/assets/playground.js?v=").expect("the script");
    let src = &html[src_at..html[src_at..].find('"').unwrap() + src_at];

    // An unknown model falls back to the first; parameters are prefilled.
    let html = browser
        .page("/playground?model=nope&max_tokens=64&temperature=0.3")
        .await;
    assert!(
        html.contains("<option value=\"echo-mini\" selected>"),
        "{html}"
    );
    assert!(html.contains("value=\"64\"") && html.contains("value=\"0.3\""));
    let html = browser
        .page("/playground?max_tokens=-1&temperature=<script>")
        .await;
    assert!(html.contains("value=\"256\"") && !html.contains("<script>\""));

    let script = browser.get(src).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        script.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(
        script
            .text()
            .await
            .unwrap()
            .contains("chat.completion.create")
    );
}

#[tokio::test]
async fn the_ticket_needs_a_session_and_this_sessions_csrf_token() {
    let h = Harness::start(Some(CONFIG)).await;
    let (browser, csrf) = sign_in(&h, "guard@example.com").await;
    let (other, other_csrf) = sign_in(&h, "other@example.com").await;
    assert_ne!(csrf, other_csrf);

    let nobody = Browser::new(&h);
    let refused = nobody
        .post_with_token("/playground/ticket", Some(&csrf), &[])
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "no session");
    for (header, form) in [
        (None, vec![]),
        (Some(String::new()), vec![]),
        (Some("0".repeat(64)), vec![]),
        (Some(other_csrf.clone()), vec![]),
        (None, vec![("csrf", other_csrf.clone())]),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = browser
            .post_with_token("/playground/ticket", header.as_deref(), &form)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{header:?} {form:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Reload")
        );
    }
    // This session's token, by header or form field.
    ticket(&browser, &csrf).await;
    let by_form = browser.post("/playground/ticket", &[("csrf", &csrf)]).await;
    assert_eq!(by_form.status(), StatusCode::CREATED);
    ticket(&other, &other_csrf).await;

    // Both tickets of one account go through its one playground key.
    let store = &h.server.services().store;
    let keys = store.keys_for(account_of(&h, "guard@example.com")).unwrap();
    let playground = keys.iter().filter(|k| k.name == "Console playground");
    assert_eq!(playground.count(), 1, "{keys:?}");
}

#[tokio::test]
async fn a_ticket_streams_once_and_bills_the_sessions_account_the_reported_cost() {
    let h = Harness::start(Some(CONFIG)).await;
    let email = "payer@example.com";
    let (browser, csrf) = sign_in(&h, email).await;
    let account = account_of(&h, email);
    let before = balance(&h, account);
    assert_eq!(before, "5".parse().unwrap(), "the signup credit");

    let ticket = ticket(&browser, &csrf).await;
    let mut ws = open(&h, &ticket).await;
    send(&mut ws, &create("p1", "echo-mini", 64)).await;
    let mut text = String::new();
    let done = loop {
        let message = next(&mut ws).await.expect("not closed");
        assert_eq!(message["id"], "p1", "{message}");
        match message["type"].as_str().unwrap() {
            "chunk" => text.push_str(content_of(&message)),
            "done" => break message,
            other => panic!("unexpected {other}: {message}"),
        }
    };
    assert!(text.starts_with("echo:"), "{text}");
    let cost: Nanos = done["cost"].as_str().unwrap().parse().unwrap();
    assert!(cost.get() > 0);
    assert_eq!(done["usage"]["cost"], done["cost"]);
    assert_eq!(balance(&h, account), before.checked_sub(cost).unwrap());
    let books = h.server.services().store.books(account).unwrap();
    assert_eq!(books.held, Nanos::ZERO, "nothing stays held");

    // The ticket was used up.
    let mut reused = open(&h, &ticket).await;
    let frame = next(&mut reused).await.expect_err("refused").unwrap();
    assert_eq!(u16::from(frame.code), 4401);
    // The demo account paid nothing.
    let demo = account_of(&h, "demo@tokun.local");
    assert_eq!(
        h.server.services().store.books(demo).unwrap().held,
        Nanos::ZERO
    );
}

#[tokio::test]
async fn a_cancelled_completion_is_billed_for_what_was_generated() {
    let h = Harness::start(Some(CONFIG)).await;
    let email = "stopper@example.com";
    let (browser, csrf) = sign_in(&h, email).await;
    let account = account_of(&h, email);
    let before = balance(&h, account);
    let mut ws = open(&h, &ticket(&browser, &csrf).await).await;
    send(&mut ws, &create("long", "echo-long", 4000)).await;
    let mut chunks = 0;
    while chunks < 10 {
        let message = next(&mut ws).await.expect("not closed");
        assert_eq!(message["type"], "chunk", "{message}");
        if !content_of(&message).is_empty() {
            chunks += 1;
        }
    }
    send(&mut ws, &json!({"type": "cancel", "id": "long"})).await;
    let done = loop {
        let message = next(&mut ws).await.expect("not closed");
        if message["type"] == "done" {
            break message;
        }
    };
    let generated = done["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((10..200).contains(&generated), "stopped early: {generated}");
    let cost: Nanos = done["cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(balance(&h, account), before.checked_sub(cost).unwrap());
    // What was generated, at echo-long's $1 / $4 per million tokens.
    let prompt = done["usage"]["prompt_tokens"].as_i64().unwrap();
    let generated = i64::try_from(generated).unwrap();
    assert_eq!(cost, Nanos::new(prompt * 1_000 + generated * 4_000));
}
