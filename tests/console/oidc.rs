//! "Sign in with …" over real HTTP against the fake issuer in testkit: the
//! button on `/login`, `/login/oidc` to the issuer and back to the callback,
//! a session for a verified email (a new one gets the signup credit), and
//! every refusal — a wrong state, nonce or issuer, an unverified email, a
//! replayed callback, an issuer that cannot be discovered — as a console
//! page with no session.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokun_testkit::oidc::{CLIENT_ID, CLIENT_SECRET, FakeIssuer, Fault, Identity};

use crate::support::Harness;

fn config(issuer_url: &str) -> String {
    format!(
        "[billing]\nsignup_credit_usd = 2\n\n[auth.oidc]\nissuer_url = \"{issuer_url}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\ndisplay_name = \"Fake ID\"\n"
    )
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start() -> (FakeIssuer, Harness) {
    let issuer = FakeIssuer::start().await.unwrap();
    let h = Harness::start(Some(&config(&issuer.issuer_url()))).await;
    (issuer, h)
}

/// A sign-in sent back by the issuer: the callback's query, and the state
/// cookie `/login/oidc` gave the browser that started it.
struct Started {
    query: String,
    cookie: String,
}

/// `/login/oidc` redirects to the issuer, which redirects to the callback.
async fn authorize(h: &Harness) -> Started {
    let client = no_redirects();
    let begun = client.get(h.url("/login/oidc")).send().await.unwrap();
    assert!(begun.status().is_redirection(), "{}", begun.status());
    let set = begun.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("Path=/login/oidc"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let to_issuer = begun.headers()[LOCATION].to_str().unwrap().to_owned();
    let answered = client.get(&to_issuer).send().await.unwrap();
    assert_eq!(answered.status(), StatusCode::FOUND);
    let back = answered.headers()[LOCATION].to_str().unwrap().to_owned();
    let (path, query) = back.split_once('?').unwrap();
    assert!(path.ends_with("/login/oidc/callback"), "{back}");
    Started {
        query: query.to_owned(),
        cookie,
    }
}

/// The callback, from the browser that started the sign-in.
async fn finish(h: &Harness, started: &Started) -> reqwest::Response {
    callback(h, &started.query, Some(&started.cookie)).await
}

async fn callback(h: &Harness, query: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = no_redirects()
        .get(h.url(&format!("/login/oidc/callback?{query}")))
        .header("accept", "text/html");
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    let all = response.headers().get_all(SET_COOKIE);
    all.iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}

/// The `Set-Cookie` of a new session, if the response starts one.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    set_cookies(response)
        .into_iter()
        .find(|set| set.starts_with("tokun_session="))
}

/// Whether the response makes the browser forget its sign-in state.
fn clears_state(response: &reqwest::Response) -> bool {
    set_cookies(response)
        .iter()
        .any(|set| set.starts_with("tokun_oidc=;") && set.contains("Max-Age=0"))
}

/// A refused callback: a 400 console page saying `why`, and no session.
async fn assert_refused(response: reqwest::Response, why: &str) {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(session_cookie(&response), None);
    assert!(clears_state(&response));
    let page = response.text().await.unwrap();
    assert!(page.contains(why), "{why}: {page}");
    assert!(page.contains("That did not work"), "{page}");
}

#[tokio::test]
async fn a_verified_email_signs_in_once_per_callback() {
    let (issuer, h) = start().await;
    let login = h.anonymous.get(h.url("/login")).send().await.unwrap();
    let login = login.text().await.unwrap();
    assert!(login.contains("Sign in with Fake ID"), "{login}");
    assert!(!login.contains("could not be reached"), "{login}");

    issuer.set_identity(Identity::verified("Oidc.Person@Example.com"));
    let started = authorize(&h).await;
    let signed = finish(&h, &started).await;
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed.headers()[LOCATION], "/");
    assert!(clears_state(&signed));
    let set = session_cookie(&signed).unwrap();
    let set = set.as_str();
    assert!(
        set.starts_with("tokun_session=") && set.contains("HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let get = |path: &'static str| {
        no_redirects()
            .get(h.url(path))
            .header(COOKIE, cookie.clone())
            .send()
    };
    let dashboard = get("/").await.unwrap().text().await.unwrap();
    assert!(dashboard.contains("oidc.person@example.com"), "{dashboard}");
    assert!(
        dashboard.contains("$2.00"),
        "the signup credit: {dashboard}"
    );
    let account = get("/account").await.unwrap().text().await.unwrap();
    assert!(
        account.contains("Single sign-on"),
        "in the history: {account}"
    );

    // The same callback again: its sign-in was used up.
    assert_refused(finish(&h, &started).await, "does not match").await;
    assert_eq!(
        issuer.token_exchanges(),
        1,
        "a replay never reaches the issuer"
    );

    // A known email signs in to the same account, with no second credit.
    let again = finish(&h, &authorize(&h).await).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let store = &h.server.services().store;
    let account = store
        .account_by_email("oidc.person@example.com")
        .unwrap()
        .unwrap();
    assert_eq!(store.signins(account.id, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn a_wrong_state_nonce_or_issuer_or_an_unverified_email_is_refused() {
    let (issuer, h) = start().await;
    let started = authorize(&h).await;
    let query = &started.query;
    let forged: String = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("state", _)) => "state=forged-state".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    assert_refused(
        callback(&h, &forged, Some(&started.cookie)).await,
        "does not match",
    )
    .await;
    let no_state = query
        .split('&')
        .filter(|pair| !pair.starts_with("state="))
        .collect::<Vec<_>>()
        .join("&");
    assert_refused(
        callback(&h, &no_state, Some(&started.cookie)).await,
        "does not match",
    )
    .await;
    // Another browser (no state cookie, or another sign-in's) cannot
    // finish it: nobody can sign someone else in to their own account.
    let elsewhere = authorize(&h).await;
    assert_refused(callback(&h, query, None).await, "does not match").await;
    assert_refused(
        callback(&h, &elsewhere.query, Some(&started.cookie)).await,
        "does not match",
    )
    .await;

    for (fault, why) in [
        (Fault::WrongNonce, "wrong nonce"),
        (Fault::WrongIssuer, "wrong issuer"),
    ] {
        issuer.set_fault(Some(fault));
        assert_refused(finish(&h, &authorize(&h).await).await, why).await;
    }
    issuer.set_fault(None);
    issuer.set_identity(Identity {
        subject: "sub-unverified".into(),
        email: Some("unverified@example.com".into()),
        email_verified: Some(false),
    });
    assert_refused(finish(&h, &authorize(&h).await).await, "not verified").await;
    let store = &h.server.services().store;
    assert!(
        store
            .account_by_email("unverified@example.com")
            .unwrap()
            .is_none()
    );

    // The issuer said no (the person cancelled).
    let cancelled = callback(&h, "error=access_denied&state=whatever", None).await;
    assert_refused(cancelled, "did not sign you in").await;
}

#[tokio::test]
async fn an_issuer_that_cannot_be_discovered_greys_the_button_and_the_server_runs() {
    // An address that refuses connections: the issuer is down at start.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let h = Harness::start(Some(&config(&down))).await;
    let login = h.anonymous.get(h.url("/login")).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let login = login.text().await.unwrap();
    assert!(login.contains("Sign in with Fake ID"), "{login}");
    assert!(login.contains("aria-disabled=\"true\""), "{login}");
    assert!(login.contains("could not be reached"), "{login}");
    // A click tries again, and says so when it still fails.
    let click = no_redirects()
        .get(h.url("/login/oidc"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(click.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        click
            .text()
            .await
            .unwrap()
            .contains("unavailable right now")
    );
    // Email codes still work.
    let email = h
        .anonymous
        .post(h.url("/login"))
        .form(&[("email", "still@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(email.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_oidc_there_is_no_button_and_no_route() {
    let h = Harness::start(None).await;
    let login = h.anonymous.get(h.url("/login")).send().await.unwrap();
    assert!(!login.text().await.unwrap().contains("Sign in with Fake"));
    let begin = no_redirects()
        .get(h.url("/login/oidc"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(begin.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_disabled_account_is_refused_in_place() {
    let (issuer, h) = start().await;
    let (id, _) = crate::support::new_account(&h, "off@example.com", "1").await;
    let disabled = crate::support::admin_post(
        &h,
        &format!("/admin/accounts/{id}/disable"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    issuer.set_identity(Identity::verified("off@example.com"));
    let refused = finish(&h, &authorize(&h).await).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(session_cookie(&refused), None);
    let page = refused.text().await.unwrap();
    assert!(page.contains("This account is disabled"), "{page}");
    assert!(
        page.contains("Sign in with Fake ID"),
        "the sign-in page, in place"
    );
}
