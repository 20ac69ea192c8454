//! Models, health and readiness endpoints, request ids, and the separate
//! operator listener (`server.admin_listen`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod support;

use serde_json::Value;
use support::{Harness, get_json};

#[tokio::test]
async fn models_list_and_retrieve() {
    let h = Harness::start(None).await;
    let list: Value = get_json(&h.client, &h, "/v1/models").await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"echo-mini"));
    let model: Value = get_json(&h.client, &h, "/v1/models/echo-mini").await;
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

#[tokio::test]
async fn admin_listen_serves_the_operator_endpoints_alone() {
    let h = Harness::start(Some(
        r#"
[server]
admin_listen = "127.0.0.1:0"
"#,
    ))
    .await;
    let operator = h.server.operator_addr().expect("an operator address");
    assert_ne!(operator, h.server.addr());
    let at = |path: &str| format!("http://{operator}{path}");

    let actors = h
        .anonymous
        .get(at("/admin/actors"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(actors.status(), 200);
    assert!(actors.headers().contains_key("x-request-id"));
    let actors: Value = actors.json().await.unwrap();
    assert!(actors["total"].as_u64().unwrap() > 0, "{actors}");
    // The same admin token guards it.
    let refused = h.anonymous.get(at("/admin/actors")).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let scrape = h.anonymous.get(at("/metrics")).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.text().await.unwrap().contains("tokun_actors_alive"));
    let ready = h.anonymous.get(at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Only the operator endpoints: the API stays on the main listener.
    for path in ["/v1/models", "/v1/chat/completions", "/admin/accounts"] {
        let status = h.client.get(at(path)).send().await.unwrap().status();
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(
        h.client
            .get(h.url("/admin/actors"))
            .bearer_auth(&h.admin_token)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the main listener keeps them too"
    );

    // Shutdown closes it.
    let Harness { server, .. } = h;
    server.shutdown().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(operator).await.is_err(),
        "the operator listener closed at shutdown"
    );
}
