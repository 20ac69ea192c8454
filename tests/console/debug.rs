//! Request debugging over HTTP (issue 20 item 2): with `debug` off a
//! prompt is in no file of the data dir; with it on, each request and its
//! answer (a stream assembled into what the client received) are kept,
//! listed by `GET /v1/keys/{id}/debug` and the console's
//! `/keys/{id}/debug` for the key's account only (another account: 404),
//! purged by a cutoff 7 days on, deleted at once by a revocation, and in
//! the account's export. `/v1/ws` completions and embeddings are in
//! `debug_transports.rs`.

use std::path::Path;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Browser, csrf_of, sign_in};
use crate::support::{Harness, client_with_key};

pub(super) const CONFIG: &str = "[billing]\nsignup_credit_usd = 5\n";
/// How long request debugging keeps a body.
pub(super) const SEVEN_DAYS_MS: u64 = 7 * 24 * 60 * 60 * 1000;
const WAIT: Duration = Duration::from_secs(10);

/// A prompt no other test or run sends.
pub(super) fn unique_prompt(tag: &str) -> String {
    format!("{tag}Zq{}Xv", tokun_providers::clock::unix_nanos())
}

/// Creates a key through the form (debugging on when `debug`); returns
/// (id, secret).
pub(super) async fn create_key(browser: &Browser, name: &str, debug: bool) -> (String, String) {
    let csrf = csrf_of(&browser.page("/keys").await);
    let mut form = vec![("csrf", csrf.as_str()), ("name", name)];
    if debug {
        form.push(("debug", "on"));
    }
    let response = browser.post("/keys", &form).await;
    assert_eq!(response.status(), StatusCode::OK, "the key is created");
    let html = response.text().await.unwrap();
    let start = html.find("value=\"sk-tokun-").expect("the secret is shown") + 7;
    let secret = html[start..start + html[start..].find('"').unwrap()].to_owned();
    let keys: Value = client_with_key(&secret)
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

/// Turns the key's debugging on or off through the console.
pub(super) async fn set_debug(browser: &Browser, id: &str, on: bool) {
    let csrf = csrf_of(&browser.page("/keys").await);
    let value = if on { "on" } else { "off" };
    let response = browser
        .post(
            &format!("/keys/{id}/debug"),
            &[("csrf", &csrf), ("debug", value)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": "echo-mini", "stream": stream,
        "messages": [{"role": "user", "content": prompt}]})
}

/// The content of a non-streamed completion.
async fn complete(h: &Harness, client: &reqwest::Client, prompt: &str) -> String {
    let response = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat(prompt, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Streams a completion; the text its chunks carried, as the client read it.
async fn stream(h: &Harness, client: &reqwest::Client, prompt: &str) -> String {
    let response = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat(prompt, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource();
    let mut text = String::new();
    while let Some(event) = events.next().await {
        let data = event.unwrap().data;
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    assert!(!text.is_empty());
    text
}

/// `GET /v1/keys/{id}/debug` with `client`: (status, body).
pub(super) async fn listed(h: &Harness, client: &reqwest::Client, id: &str) -> (StatusCode, Value) {
    let response = client
        .get(h.url(&format!("/v1/keys/{id}/debug?limit=100")))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// The key's stored bodies once there are `count` of them (bodies are
/// written just after their request ends).
pub(super) async fn wait_for(
    h: &Harness,
    client: &reqwest::Client,
    id: &str,
    count: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = listed(h, client, id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let data = body["data"].as_array().unwrap().clone();
        if data.len() >= count || tokio::time::Instant::now() > deadline {
            assert_eq!(data.len(), count, "{body}");
            return data;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body whose request carried `prompt`.
pub(super) fn body_for<'a>(data: &'a [Value], prompt: &str) -> &'a Value {
    data.iter()
        .find(|b| b["request"]["messages"][0]["content"] == prompt)
        .unwrap_or_else(|| panic!("a body for {prompt} in {data:?}"))
}

/// Every file under `dir` that holds `needle`, after the store's flush.
pub(super) async fn files_holding(h: &Harness, needle: &str) -> Vec<String> {
    h.server.services().store.flush_people().await.unwrap();
    let mut found = Vec::new();
    walk(&h.data_dir, needle.as_bytes(), &mut found);
    found
}

fn walk(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, needle, found);
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_keeps_no_prompt_anywhere_and_on_keeps_both_bodies_for_the_owner_only() {
    let h = Harness::start(Some(CONFIG)).await;
    let (ann, _) = sign_in(&h, "ann@example.com").await;
    let (id, secret) = create_key(&ann, "debugged", false).await;
    let api = client_with_key(&secret);

    // Off: the prompt reaches no sled tree, no file.
    let hidden = unique_prompt("off");
    complete(&h, &api, &hidden).await;
    stream(&h, &api, &hidden).await;
    assert!(h.wait_streams_idle().await == 0);
    assert_eq!(files_holding(&h, &hidden).await, Vec::<String>::new());
    assert_eq!(listed(&h, &api, &id).await.1["data"], json!([]));

    // On: both bodies are kept, the stream assembled as the client read it.
    set_debug(&ann, &id, true).await;
    let (plain, streamed) = (unique_prompt("plain"), unique_prompt("streamed"));
    let plain_text = complete(&h, &api, &plain).await;
    let streamed_text = stream(&h, &api, &streamed).await;
    let data = wait_for(&h, &api, &id, 2).await;
    let whole = body_for(&data, &plain);
    assert_eq!(whole["object"], "request.debug");
    assert_eq!(whole["key"], id.as_str());
    assert_eq!(whole["status"], 200);
    assert_eq!(whole["transport"], "http");
    assert_eq!(whole["model"], "echo-mini");
    // The request as tokun read it: defaults (`stream: false`) left out.
    assert_eq!(whole["request"]["model"], "echo-mini");
    assert_ne!(whole["request"]["stream"], true);
    assert_eq!(whole["response"]["object"], "chat.completion");
    assert_eq!(
        whole["response"]["choices"][0]["message"]["content"],
        plain_text.as_str()
    );
    assert!(whole["response"]["usage"]["cost"].is_string());
    let assembled = body_for(&data, &streamed);
    assert_eq!(assembled["request"]["stream"], true);
    let response = &assembled["response"];
    assert_eq!(response["object"], "chat.completion");
    assert_eq!(
        response["choices"][0]["message"]["content"],
        streamed_text.as_str()
    );
    assert_eq!(response["choices"][0]["finish_reason"], "stop");
    assert!(response["stream_chunks"].as_u64().unwrap() > 1);
    assert!(response["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let created = assembled["at_ms"].as_u64().unwrap();
    assert_eq!(assembled["expires_at"], (created + SEVEN_DAYS_MS) / 1000);
    // Newest first, paged by `after`.
    assert_eq!(
        data[0]["request"]["messages"][0]["content"],
        streamed.as_str()
    );
    let first: Value = api
        .get(h.url(&format!("/v1/keys/{id}/debug?limit=1")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["has_more"], true);
    let after = first["last_id"].as_str().unwrap();
    let rest: Value = api
        .get(h.url(&format!("/v1/keys/{id}/debug?limit=1&after={after}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        rest["data"][0]["request"]["messages"][0]["content"],
        plain.as_str()
    );
    assert_eq!(rest["has_more"], false);
    for bad in ["limit=0", "limit=101", "after=key_1"] {
        let response = api
            .get(h.url(&format!("/v1/keys/{id}/debug?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // The scan above would have seen it: a kept prompt is in the store's files.
    assert!(!files_holding(&h, &plain).await.is_empty());

    // The owner's console lists them, escaped, linked from the keys page.
    let keys = ann.page("/keys").await;
    assert!(keys.contains(&format!("href=\"/keys/{id}/debug\"")));
    let page = ann.page(&format!("/keys/{id}/debug")).await;
    assert!(page.contains(&plain) && page.contains(&streamed) && page.contains("<details>"));
    assert!(
        page.contains("&quot;role&quot;: &quot;user&quot;"),
        "pretty, escaped JSON"
    );

    // Another account: the API's and the console's 404, like no key at all.
    let (bob, _) = sign_in(&h, "bob@example.com").await;
    let (_, bob_secret) = create_key(&bob, "bob's", true).await;
    let bob_api = client_with_key(&bob_secret);
    for key in [id.as_str(), "key_999999", "nonsense"] {
        let (status, body) = listed(&h, &bob_api, key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{key}");
        assert_eq!(body["error"]["code"], "key_not_found");
        let page = bob.get(&format!("/keys/{key}/debug")).await;
        assert_eq!(page.status(), StatusCode::NOT_FOUND, "{key}");
        assert!(!page.text().await.unwrap().contains(&plain));
    }
    let anonymous = h
        .anonymous
        .get(h.url(&format!("/v1/keys/{id}/debug")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The account's export holds them.
    let export: Value = api
        .get(h.url("/v1/account/export"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let exported = export["debug_bodies"].as_array().unwrap();
    assert_eq!(exported.len(), 2, "{exported:?}");
    assert!(
        exported
            .iter()
            .any(|b| b["request"]["messages"][0]["content"] == plain)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_stops_at_once_seven_days_purge_and_revoking_deletes_at_once() {
    let h = Harness::start(Some(CONFIG)).await;
    let (ann, _) = sign_in(&h, "carol@example.com").await;
    let (id, secret) = create_key(&ann, "debugged", true).await;
    let api = client_with_key(&secret);
    let kept = unique_prompt("kept");
    complete(&h, &api, &kept).await;
    wait_for(&h, &api, &id, 1).await;

    // Off: the next request is not kept; on again, the one after it is.
    set_debug(&ann, &id, false).await;
    let dropped = unique_prompt("dropped");
    stream(&h, &api, &dropped).await;
    complete(&h, &api, &dropped).await;
    set_debug(&ann, &id, true).await;
    let again = unique_prompt("again");
    complete(&h, &api, &again).await;
    let data = wait_for(&h, &api, &id, 2).await;
    body_for(&data, &kept);
    body_for(&data, &again);
    assert_eq!(files_holding(&h, &dropped).await, Vec::<String>::new());

    // Seven days on (the sweeper's cutoff is now − 7 days), they are purged;
    // a day earlier, nothing is.
    let store = &h.server.services().store;
    let newest = data[0]["at_ms"].as_u64().unwrap();
    let six_days_on = newest + 6 * 24 * 60 * 60 * 1000;
    assert_eq!(
        store
            .purge_debug_bodies_before(six_days_on - SEVEN_DAYS_MS, 100)
            .unwrap(),
        0
    );
    assert_eq!(
        listed(&h, &api, &id).await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let seven_days_on = newest + SEVEN_DAYS_MS + 1;
    assert_eq!(
        store
            .purge_debug_bodies_before(seven_days_on - SEVEN_DAYS_MS, 100)
            .unwrap(),
        2
    );
    assert_eq!(listed(&h, &api, &id).await.1["data"], json!([]));

    // Revoking deletes a key's bodies at once: through the console and the API.
    let (other_id, other_secret) = create_key(&ann, "second", true).await;
    let other = client_with_key(&other_secret);
    let last = unique_prompt("revoked");
    complete(&h, &api, &last).await;
    complete(&h, &other, &last).await;
    wait_for(&h, &api, &id, 1).await;
    wait_for(&h, &api, &other_id, 1).await;
    let csrf = csrf_of(&ann.page("/keys").await);
    let revoked = ann
        .post(&format!("/keys/{id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    let gone = h.url(&format!("/v1/keys/{other_id}"));
    assert_eq!(
        other.delete(gone).send().await.unwrap().status(),
        StatusCode::OK
    );
    for key in [&id, &other_id] {
        let key_id: tokun_storage::KeyId = key.parse().unwrap();
        assert!(!store.has_debug_bodies(key_id).unwrap(), "{key}");
    }
    let page = ann.page(&format!("/keys/{id}/debug")).await;
    assert!(page.contains("revoked") && !page.contains(&last));
}
