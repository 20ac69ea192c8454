//! The harness end to end without the console: a small axum app with a
//! form, a script and passkey buttons, then tokun's own listener.

use std::time::{Duration, Instant};

use axum::Form;
use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::harness::{Browser, DESKTOP, PHONE, WAIT, localhost, png_size, screenshot_dir};
use crate::support::Harness;

const HOME: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>harness self-test</title>
<link rel="icon" href="data:,">
<style>
  body { font: 16px/1.5 system-ui, sans-serif; margin: 0; padding: 1rem; background: #f6f7f9; color: #1b1f24; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: end; }
  label { display: block; font-weight: 600; }
  input { font: inherit; padding: .5rem; border: 1px solid #8a929c; border-radius: 6px; }
  button { font: inherit; padding: .5rem 1rem; border: 0; border-radius: 6px; background: #0b5fff; color: #fff; }
  li { padding: .6rem; margin: .25rem 0; background: #fff; border-radius: 6px; }
</style></head>
<body>
<h1>Harness self-test</h1>
<form method="post" action="/greet">
  <div><label for="name">Your name</label><input id="name" name="name" autocomplete="off"></div>
  <button id="go" type="submit">Greet me</button>
</form>
<p id="script">script did not run</p>
<ol id="rows"></ol>
<script>
  document.getElementById('script').textContent = 'script ran';
  const rows = document.getElementById('rows');
  for (let i = 1; i <= 30; i++) {
    const li = document.createElement('li');
    li.textContent = 'Row ' + i + ' of a page taller than the screen';
    rows.appendChild(li);
  }
</script>
</body></html>"#;

const PASSKEY: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>passkey self-test</title>
<link rel="icon" href="data:,"></head>
<body>
<button id="create" type="button">Create a passkey</button>
<button id="signin" type="button">Sign in with a passkey</button>
<p id="status">idle</p>
<script>
  const b64url = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const status = (text) => { document.getElementById('status').textContent = text; };
  const fail = (e) => status('error: ' + e.name + ': ' + e.message);
  document.getElementById('create').addEventListener('click', async () => {
    try {
      const userId = crypto.getRandomValues(new Uint8Array(16));
      const credential = await navigator.credentials.create({ publicKey: {
        challenge: crypto.getRandomValues(new Uint8Array(32)),
        rp: { id: 'localhost', name: 'tokun self-test' },
        user: { id: userId, name: 'ada@example.com', displayName: 'Ada' },
        pubKeyCredParams: [{ type: 'public-key', alg: -7 }, { type: 'public-key', alg: -257 }],
        authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
        attestation: 'none',
        timeout: 10000,
      }});
      status('created ' + credential.id + ' for ' + b64url(userId));
    } catch (e) { fail(e); }
  });
  document.getElementById('signin').addEventListener('click', async () => {
    try {
      const credential = await navigator.credentials.get({ publicKey: {
        challenge: crypto.getRandomValues(new Uint8Array(32)),
        rpId: 'localhost',
        userVerification: 'required',
        timeout: 10000,
      }});
      status('signed in ' + credential.id + ' as ' + b64url(credential.response.userHandle));
    } catch (e) { fail(e); }
  });
</script>
</body></html>"#;

/// `POST /greet`: the name back, escaped, and a cookie.
async fn greet(Form(fields): Form<Vec<(String, String)>>) -> impl IntoResponse {
    let name = fields
        .iter()
        .find(|(key, _)| key == "name")
        .map_or("", |(_, value)| value.as_str());
    let escaped = name
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    (
        [(
            header::SET_COOKIE,
            "greeted=yes; Path=/; HttpOnly; SameSite=Lax",
        )],
        Html(format!(
            "<!doctype html><title>greeted</title><link rel=\"icon\" href=\"data:,\">\
             <p id=\"result\">Hello, {escaped}!</p>"
        )),
    )
}

/// Serves the self-test app; returns `http://localhost:PORT`.
async fn serve() -> String {
    let app = Router::new()
        .route("/", get(|| async { Html(HOME) }))
        .route("/greet", axum::routing::post(greet))
        .route("/passkey", get(|| async { Html(PASSKEY) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://localhost:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_submits_and_script_runs() {
    let base = serve().await;
    let browser = Browser::desktop().await;
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.text_of("#script").await, "script ran");
    assert_eq!(browser.text_of("h1").await, "Harness self-test");
    assert!(browser.cookie("greeted").await.is_none());

    browser.fill("#name", "Ada <b>Lovelace</b>").await;
    browser.click("#go").await;
    browser.wait_for("#result", WAIT).await;
    let result = browser.wait_for_text("#result", "Hello", WAIT).await;
    // Markup typed into the form comes back as text, not as a <b>.
    assert_eq!(result, "Hello, Ada <b>Lovelace</b>!");
    assert!(browser.find_all("#result b").await.is_empty());
    assert!(browser.current_url().await.ends_with("/greet"));

    let cookie = browser.cookie("greeted").await.expect("greeted cookie");
    assert_eq!(cookie.value(), "yes");
    assert_eq!(cookie.http_only(), Some(true));
    let errors: Vec<String> = browser
        .console_log()
        .await
        .into_iter()
        .filter(|line| line.starts_with("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // An uncaught error in the page shows up in console_log().
    browser
        .eval(
            "setTimeout(() => { throw new Error('deliberate') }, 0)",
            vec![],
        )
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let log = browser.console_log().await;
        if log
            .iter()
            .any(|line| line.starts_with("SEVERE") && line.contains("deliberate"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no error logged: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_are_full_page_pngs_at_phone_and_desktop_width() {
    let base = serve().await;
    tokio::join!(
        full_page_screenshot(&base, PHONE),
        full_page_screenshot(&base, DESKTOP)
    );
}

async fn full_page_screenshot(base: &str, (width, height): (u32, u32)) {
    let browser = Browser::new(width, height).await;
    browser.goto(&format!("{base}/")).await;
    let viewport = browser
        .eval("return [window.innerWidth, window.innerHeight]", vec![])
        .await;
    assert_eq!(viewport, serde_json::json!([width, height]));
    browser.wait_for_text("#rows li", "Row 30", WAIT).await;

    let expected = screenshot_dir().join(format!("selftest-home-{width}.png"));
    let _ = std::fs::remove_file(&expected);
    let path = browser.screenshot("selftest-home").await;
    assert_eq!(path, expected);
    let bytes = std::fs::read(&path).unwrap();
    let (png_width, png_height) = png_size(&bytes).expect("a PNG");
    assert_eq!(png_width, width, "{path:?}");
    // The 30 rows make the page taller than the viewport: the whole page
    // is in the picture, not only the first screen.
    assert!(png_height > height, "{path:?}: {png_width}x{png_height}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_authenticator_creates_and_uses_a_passkey() {
    let base = serve().await;
    let browser = Browser::phone().await;
    browser.goto(&format!("{base}/passkey")).await;
    let auth = browser.add_virtual_authenticator().await;
    assert!(browser.credentials(&auth).await.is_empty());
    let platform = browser
        .eval_async(
            "PublicKeyCredential.isUserVerifyingPlatformAuthenticatorAvailable()\
             .then(arguments[arguments.length - 1])",
            vec![],
        )
        .await;
    assert_eq!(platform, true);

    browser.click("#create").await;
    let status = browser.wait_for_text("#status", "created", WAIT).await;
    let (id, user) = status
        .strip_prefix("created ")
        .and_then(|rest| rest.split_once(" for "))
        .unwrap_or_else(|| panic!("passkey creation: {status}"));

    let credentials = browser.credentials(&auth).await;
    assert_eq!(credentials.len(), 1, "{credentials:?}");
    let credential = &credentials[0];
    assert_eq!(credential.credential_id, id);
    assert_eq!(credential.rp_id, "localhost");
    assert!(credential.is_resident_credential);
    let handle = credential.user_handle.as_deref().unwrap_or_default();
    assert_eq!(handle.trim_end_matches('='), user);
    let count_after_create = credential.sign_count;

    // Discoverable sign-in: no allowCredentials, the authenticator picks it.
    browser.click("#signin").await;
    let status = browser.wait_for_text("#status", "signed in", WAIT).await;
    assert_eq!(status, format!("signed in {id} as {user}"));
    let credentials = browser.credentials(&auth).await;
    assert_eq!(credentials.len(), 1);
    assert!(
        credentials[0].sign_count > count_after_create,
        "{} then {}",
        count_after_create,
        credentials[0].sign_count
    );

    // A user who fails verification is refused.
    browser.set_user_verified(&auth, false).await;
    browser.click("#signin").await;
    let status = browser.wait_for_text("#status", "error", WAIT).await;
    assert!(status.starts_with("error: NotAllowedError"), "{status}");

    browser.remove_virtual_authenticator(&auth).await;
    browser.close().await;
}

/// The documented pattern: a real tokun from tests/support under the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_a_tokun_server() {
    let h = Harness::start(None).await;
    let browser = Browser::phone().await;
    browser.goto(&localhost(&h.url("/healthz"))).await;
    let text = browser.page_text().await;
    assert!(text.contains(r#""status":"ok""#), "{text}");
    // Dropped without close(): Drop ends the session.
    drop(browser);
}
