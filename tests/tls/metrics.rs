//! `/metrics` is the operator's: on the API listener it asks for the admin
//! token unless `[metrics] public = true`; on `server.admin_listen` (private
//! by design) it is open.

use reqwest::StatusCode;

use crate::support::Harness;

#[tokio::test]
async fn metrics_on_the_api_listener_need_the_admin_token_unless_public() {
    let h = Harness::start(Some("[server]\nadmin_listen = \"127.0.0.1:0\"\n")).await;
    let scrape = |client: &reqwest::Client, token: Option<&str>| {
        let mut request = client.get(h.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = scrape(&h.anonymous, None).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body = anonymous.text().await.unwrap();
    assert!(!body.contains("tokun_"), "{body}");
    let wrong = scrape(&h.anonymous, Some("not-the-token")).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // An API key is not the admin token.
    let api_key = scrape(&h.client, None).await.unwrap();
    assert_eq!(api_key.status(), StatusCode::UNAUTHORIZED);

    let admin = scrape(&h.anonymous, Some(&h.admin_token)).await.unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    assert!(
        admin
            .text()
            .await
            .unwrap()
            .contains("tokun_http_requests_total")
    );

    let operator = h.server.operator_addr().expect("an operator listener");
    let open = h
        .anonymous
        .get(format!("http://{operator}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        open.status(),
        StatusCode::OK,
        "the operator listener is private"
    );

    let public = Harness::start(Some("[metrics]\npublic = true\n")).await;
    let response = public
        .anonymous
        .get(public.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("tokun_"));
}
