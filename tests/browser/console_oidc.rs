//! "Sign in with …" in a real browser: the button on `/login` goes to the
//! fake OpenID Connect issuer, which signs the person in at once and sends
//! the browser back to tokun's callback, which shows the dashboard. tokun
//! gets `server.public_url = http://localhost:PORT` (its listener is bound
//! first) so the callback the issuer redirects to is the browser's origin.
//! Screenshots: the sign-in page with both choices, phone and desktop.

use tokun::config::Config;
use tokun::server::RunningServer;
use tokun_testkit::oidc::{CLIENT_ID, CLIENT_SECRET, FakeIssuer, Identity};

use crate::console::base;
use crate::harness::{Browser, WAIT};
use crate::support::{Harness, temp_dir};

/// tokun on 127.0.0.1:PORT with `server.public_url` `http://localhost:PORT`.
async fn start_at_localhost(toml: &str) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!("[server]\npublic_url = \"http://localhost:{port}\"\n\n{toml}");
    let mut config = Config::parse(&text, |_| None).expect("test config");
    let data_dir = temp_dir("srv");
    config.server.data_dir = data_dir.clone();
    let server = RunningServer::start(config, listener).await.unwrap();
    Harness {
        server,
        client: reqwest::Client::new(),
        anonymous: reqwest::Client::new(),
        api_key: String::new(),
        admin_token: String::new(),
        base: format!("http://127.0.0.1:{port}"),
        data_dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_the_issuer_and_sees_the_dashboard() {
    let issuer = FakeIssuer::start().await.unwrap();
    let h = start_at_localhost(&format!(
        "[billing]\nsignup_credit_usd = 4\n\n[auth.oidc]\nissuer_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\ndisplay_name = \"Fake ID\"\n",
        issuer.issuer_url()
    ))
    .await;
    let base = base(&h);
    for browser in [Browser::phone().await, Browser::desktop().await] {
        let email = format!("oidc-{}@example.com", browser.width);
        issuer.set_identity(Identity::verified(&email));
        browser.goto(&format!("{base}/login")).await;
        browser.wait_for("a.oidc", WAIT).await;
        browser
            .wait_for("[data-passkey=signin]:not([hidden])", WAIT)
            .await;
        browser.screenshot("console-login-choices").await;
        let button = browser.text_of("a.oidc").await;
        assert_eq!(button, "Sign in with Fake ID");
        browser.click("a.oidc").await;
        browser.wait_for("nav.main", WAIT).await;
        let dashboard = browser.wait_for_text("main", "$4.00", WAIT).await;
        assert!(dashboard.contains("Available"), "{dashboard}");
        assert!(browser.current_url().await.starts_with(&base));
        assert!(browser.cookie("tokun_session").await.is_some());
        browser.goto(&format!("{base}/account")).await;
        let account = browser.wait_for_text("main", &email, WAIT).await;
        assert!(account.contains("Single sign-on"), "{account}");
        let log = browser.console_log().await;
        assert!(log.is_empty(), "no script errors: {log:?}");
        browser.close().await;
    }
    assert_eq!(issuer.token_exchanges(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_down_at_start_greys_the_button_and_a_click_explains() {
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let h = start_at_localhost(&format!(
        "[auth.oidc]\nissuer_url = \"{down}\"\nclient_id = \"{CLIENT_ID}\"\ndisplay_name = \"Fake ID\"\n"
    ))
    .await;
    let base = base(&h);
    let browser = Browser::phone().await;
    browser.goto(&format!("{base}/login")).await;
    let note = browser
        .wait_for_text("#oidc-unavailable", "could not be reached", WAIT)
        .await;
    assert!(note.contains("Fake ID"), "{note}");
    browser.screenshot("console-login-oidc-down").await;
    browser.click("a.oidc").await;
    browser
        .wait_for_text("main", "unavailable right now", WAIT)
        .await;
    browser.close().await;
}
