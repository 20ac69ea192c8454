//! Models, health and readiness endpoints, and request ids.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use serde_json::Value;
use support::Harness;

#[tokio::test]
async fn models_list_and_retrieve() {
    let h = Harness::start(None).await;
    let list: Value = h
        .client
        .get(h.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"echo-mini"));
    let model: Value = h
        .client
        .get(h.url("/v1/models/echo-mini"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["object"], "model");
    assert_eq!(model["pricing"]["input"], "0.15");
    assert_eq!(model["pricing"]["output"], "0.60");
}

#[tokio::test]
async fn health_ready_and_request_ids() {
    let h = Harness::start(None).await;
    let health = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let first = health.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ready = h.client.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let second = ready.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(first.len(), 16);
    assert_ne!(first, second);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], true);
}
