//! Headless Chromium driven over WebDriver (fantoccini → chromedriver).
//!
//! One `chromedriver` per test binary, shared by every [`Browser`] alive at
//! the same time and stopped (with its browsers) when the last one is
//! dropped; each [`Browser`] is its own WebDriver session with its own
//! Chromium and throwaway profile. Every helper panics with context on
//! failure: these are test helpers, and a failed step should fail the test
//! loudly with what was on the page.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};

/// A phone viewport, in CSS pixels (an iPhone 12–15 portrait).
pub const PHONE: (u32, u32) = (390, 844);
/// A laptop viewport, in CSS pixels.
pub const DESKTOP: (u32, u32) = (1280, 900);

/// How long the waiting helpers wait unless told otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// Debian's Chromium; `TOKUN_CHROMIUM` overrides it.
fn chromium_binary() -> String {
    std::env::var("TOKUN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Debian's `chromium-driver`; `TOKUN_CHROMEDRIVER` overrides it.
fn chromedriver_binary() -> String {
    std::env::var("TOKUN_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned())
}

/// `http://127.0.0.1:PORT…` → `http://localhost:PORT…`. WebAuthn needs a
/// secure context and a domain for the relying party id; `localhost` is both.
pub fn localhost(url: &str) -> String {
    url.replacen("://127.0.0.1", "://localhost", 1)
}

/// Where screenshots go: `$CARGO_TARGET_DIR/screenshots`, else `target/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| manifest.join("target"), |dir| manifest.join(dir));
    target.join("screenshots")
}

/// chromedriver: started once per binary, shared, stopped with its browsers.
mod driver;

use driver::{Driver, http, shared_driver};

// ---------------------------------------------------------------------------
// Custom WebDriver commands (WebAuthn, CDP, logs)

/// `METHOD /session/{id}/{path}` with an optional JSON body: the extension
/// endpoints chromedriver has beyond what fantoccini wraps.
#[derive(Debug)]
struct SessionCommand {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session}/{}", self.path))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (Method, Option<String>) {
        let body = match (&self.method, &self.body) {
            (_, Some(body)) => Some(body.to_string()),
            // chromedriver wants a JSON object on every POST.
            (&Method::POST, None) => Some("{}".to_owned()),
            _ => None,
        };
        (self.method.clone(), body)
    }
}

/// A credential held by a virtual authenticator, as chromedriver lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualCredential {
    /// base64url without padding, as `PublicKeyCredential.id` in the page.
    pub credential_id: String,
    pub is_resident_credential: bool,
    pub rp_id: String,
    /// base64url of the user handle (`user.id`) for resident credentials.
    #[serde(default)]
    pub user_handle: Option<String>,
    pub sign_count: u64,
}

// ---------------------------------------------------------------------------
// Browser

/// One headless Chromium (one WebDriver session) with a fixed viewport.
pub struct Browser {
    /// The fantoccini client, for anything the helpers below do not cover.
    pub client: Client,
    /// Viewport width in CSS pixels (screenshots are this wide).
    pub width: u32,
    /// Viewport height in CSS pixels.
    pub height: u32,
    session: String,
    profile: PathBuf,
    closed: bool,
    driver: Arc<Driver>,
}

impl Browser {
    /// A fresh headless Chromium whose viewport is exactly `width`×`height`
    /// CSS pixels at device pixel ratio 1 (below 700 wide it is a touch
    /// phone: `<meta name=viewport>` applies, as on a real one).
    pub async fn new(width: u32, height: u32) -> Browser {
        static PROFILES: AtomicU32 = AtomicU32::new(0);
        let driver = tokio::task::spawn_blocking(shared_driver)
            .await
            .expect("chromedriver start-up");
        let profile = std::env::temp_dir().join(format!(
            "tokun-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&profile).expect("Chromium profile dir");
        let phone = width < 700;
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "timeouts".into(),
            json!({ "pageLoad": 30_000, "script": 30_000, "implicit": 0 }),
        );
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium_binary(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
                // Headless windows are at least 500 wide and --window-size
                // counts the window frame, so the viewport is set exactly.
                "mobileEmulation": { "deviceMetrics": {
                    "width": width, "height": height, "pixelRatio": 1.0,
                    "mobile": phone, "touch": phone,
                }},
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|err| panic!("new Chromium session: {err}"));
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session id");
        Browser {
            client,
            width,
            height,
            session,
            profile,
            closed: false,
            driver,
        }
    }

    /// [`PHONE`]-sized.
    pub async fn phone() -> Browser {
        Browser::new(PHONE.0, PHONE.1).await
    }

    /// [`DESKTOP`]-sized.
    pub async fn desktop() -> Browser {
        Browser::new(DESKTOP.0, DESKTOP.1).await
    }

    /// Ends the session (Chromium quits). Dropping does the same, blocking.
    pub async fn close(mut self) {
        self.closed = true;
        let _ = self.client.clone().close().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }

    // -- navigation and the DOM ------------------------------------------

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("goto {url}: {err}"));
    }

    pub async fn current_url(&self) -> String {
        self.client.current_url().await.expect("current url").into()
    }

    /// The first element matching `css`, now (no waiting).
    pub async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(err) => panic!("find {css}: {err}\n{}", self.page_text().await),
        }
    }

    /// Every element matching `css`, now.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("find_all {css}: {err}"))
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                return element;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {css} after {timeout:?} on {}:\n{}",
                    self.current_url().await,
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|err| panic!("text of {css}: {err}"))
    }

    /// The whole page's rendered text (for failure messages and loose checks).
    pub async fn page_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until some element matching `css` has text containing
    /// `needle`, and returns that text. Survives navigations in between.
    pub async fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            seen.clear();
            if let Ok(elements) = self.client.find_all(Locator::Css(css)).await {
                for element in elements {
                    if let Ok(text) = element.text().await {
                        if text.contains(needle) {
                            return text;
                        }
                        seen.push(text);
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {css} containing {needle:?} after {timeout:?} on {}; {css} had {seen:?}",
                    self.current_url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` (a function body: use `return`, and `arguments[i]`).
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|err| panic!("script failed: {err}\n{script}"))
    }

    /// Runs `script` and waits for it to call `arguments[arguments.length - 1](result)`.
    pub async fn eval_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|err| panic!("async script failed: {err}\n{script}"))
    }

    /// All cookies visible to the current page (HttpOnly ones included).
    pub async fn cookies(&self) -> Vec<Cookie<'static>> {
        self.client.get_all_cookies().await.expect("cookies")
    }

    /// The cookie `name` on the current page, if any.
    pub async fn cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.cookies().await.into_iter().find(|c| c.name() == name)
    }

    /// The page's `console.*` messages and uncaught errors since the last
    /// call, as `LEVEL message` lines (chromedriver's browser log).
    pub async fn console_log(&self) -> Vec<String> {
        let entries = self
            .command(Method::POST, "se/log", Some(json!({ "type": "browser" })))
            .await;
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    // -- screenshots -------------------------------------------------------

    /// Saves the whole page (not just the viewport) as
    /// `<target>/screenshots/<name>-<width>.png` and returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let metrics = self.cdp("Page.getLayoutMetrics", json!({})).await;
        let content = metrics["cssContentSize"]["height"].as_f64().unwrap_or(0.0);
        // At most 16k CSS px tall: Chromium's own limit is about there.
        let height = content.ceil().clamp(f64::from(self.height), 16_000.0);
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": self.width, "height": height, "scale": 1 },
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}-{}.png", self.width));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    // -- WebAuthn virtual authenticator ------------------------------------

    /// Adds a CTAP2 platform authenticator with resident keys and user
    /// verification that always verifies; returns its id. Pages in this
    /// session then create and use passkeys on it with no prompt.
    pub async fn add_virtual_authenticator(&self) -> String {
        let id = self
            .command(
                Method::POST,
                "webauthn/authenticator",
                Some(json!({
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                })),
            )
            .await;
        id.as_str().expect("authenticator id").to_owned()
    }

    /// The credentials the authenticator holds.
    pub async fn credentials(&self, auth_id: &str) -> Vec<VirtualCredential> {
        let list = self
            .command(
                Method::GET,
                &format!("webauthn/authenticator/{auth_id}/credentials"),
                None,
            )
            .await;
        serde_json::from_value(list.clone())
            .unwrap_or_else(|err| panic!("credentials list {list}: {err}"))
    }

    /// Makes the next user verifications succeed (`true`) or fail.
    pub async fn set_user_verified(&self, auth_id: &str, verified: bool) {
        self.command(
            Method::POST,
            &format!("webauthn/authenticator/{auth_id}/uv"),
            Some(json!({ "isUserVerified": verified })),
        )
        .await;
    }

    /// Removes the authenticator (and its credentials).
    pub async fn remove_virtual_authenticator(&self, auth_id: &str) {
        self.command(
            Method::DELETE,
            &format!("webauthn/authenticator/{auth_id}"),
            None,
        )
        .await;
    }

    // -- raw access --------------------------------------------------------

    /// A Chrome DevTools Protocol command on the current tab.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.command(
            Method::POST,
            "goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await
    }

    /// `METHOD /session/{id}/{path}`: the `value` of the answer.
    pub async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let command = SessionCommand {
            method: method.clone(),
            path: path.to_owned(),
            body,
        };
        self.client
            .issue_cmd(command)
            .await
            .unwrap_or_else(|err| panic!("{method} session/…/{path}: {err}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Blocking on purpose: the test's runtime may be shutting down, and
        // a session left open is a Chromium left running.
        let path = format!("/session/{}", self.session);
        let _ = http(self.driver.port, "DELETE", &path, None);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// PNG width and height from the IHDR chunk, or `None` if `bytes` is not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || !bytes.starts_with(SIGNATURE) || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((width, height))
}
