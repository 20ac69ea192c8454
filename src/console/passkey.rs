//! Passkeys (WebAuthn, with webauthn-rs): a signed-in person registers one
//! on `/account`, then signs in with it alone from `/login` (a discoverable
//! credential: no email typed, the authenticator names the account).
//!
//! The ceremonies' challenge states stay on the server, in memory, for
//! [`CEREMONY_TTL`], each used once: a registration keyed by the session
//! that started it, a sign-in by a random id handed to the page. The
//! passkeys themselves live in the store (`Store::put_passkey`). The pages'
//! script (`assets/passkey.js`) only moves bytes between the browser's
//! `navigator.credentials` and these JSON endpoints; every check is here.
//!
//! The relying party: its id is the host of `server.public_url` (or
//! `[auth.passkeys] rp_id`), its origin the public URL. Without a public
//! URL, or when it is a loopback address, the id is `localhost` and any
//! port of `http(s)://localhost` is accepted — for development and tests,
//! where the port is not known in advance.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::response::Response;
use maud::{Markup, html};
use sha2::{Digest, Sha256};
use tokun_storage::{AccountId, StorageError};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, PasskeyRegistration, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::Signed;
use super::format::datetime;
use crate::config::Config;
use crate::state::AppState;

mod routes;
pub use routes::{register_finish, register_start, remove, sign_in_finish, sign_in_start};

/// How long a started registration or sign-in may take.
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Ceremonies in progress at most, per kind.
const MAX_CEREMONIES: usize = 10_000;

/// The relying party and the ceremonies in progress.
pub struct Passkeys {
    webauthn: Webauthn,
    /// Session hash → the registration it started.
    registrations: Ceremonies<[u8; 32], PasskeyRegistration>,
    /// Random id → a discoverable sign-in.
    sign_ins: Ceremonies<String, DiscoverableAuthentication>,
}

/// Challenge states that expire and are taken once.
struct Ceremonies<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl Passkeys {
    /// The relying party of `config`; `None` when passkeys are off or the
    /// configuration cannot make one (logged).
    pub fn new(config: &Config) -> Option<Passkeys> {
        if config.auth.passkeys.disabled {
            return None;
        }
        let (rp_id, origin, any_port) = relying_party(config)?;
        let built = WebauthnBuilder::new(&rp_id, &origin)
            .map(|builder| builder.rp_name("tokun").allow_any_port(any_port))
            .and_then(WebauthnBuilder::build);
        match built {
            Ok(webauthn) => Some(Passkeys {
                webauthn,
                registrations: Ceremonies::new(),
                sign_ins: Ceremonies::new(),
            }),
            Err(error) => {
                tracing::error!(%error, rp_id, %origin, "passkeys are off: no relying party");
                None
            }
        }
    }
}

/// (id, origin, any port): see the module documentation.
fn relying_party(config: &Config) -> Option<(String, Url, bool)> {
    let public = config
        .server
        .public_url
        .as_deref()
        .and_then(|url| Url::parse(url).ok());
    let configured = config.auth.passkeys.rp_id.clone();
    let host = public
        .as_ref()
        .and_then(|url| url.host_str().map(str::to_owned));
    let loopback = host
        .as_deref()
        .is_none_or(|host| matches!(host, "localhost" | "127.0.0.1" | "[::1]"));
    if loopback {
        let scheme = public.as_ref().map_or("http", Url::scheme);
        let origin = Url::parse(&format!("{scheme}://localhost")).ok()?;
        return Some((
            configured.unwrap_or_else(|| "localhost".into()),
            origin,
            true,
        ));
    }
    let origin = Url::parse(&public?.origin().ascii_serialization()).ok()?;
    Some((configured.or(host)?, origin, false))
}

impl<K: std::hash::Hash + Eq, V> Ceremonies<K, V> {
    fn new() -> Self {
        Ceremonies {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a ceremony (replacing one under the same key); `false` when
    /// too many are in progress.
    fn keep(&self, key: K, value: V) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CEREMONIES {
            map.retain(|_, (_, at)| now.duration_since(*at) < CEREMONY_TTL);
        }
        if map.len() >= MAX_CEREMONIES {
            return false;
        }
        map.insert(key, (value, now));
        true
    }

    /// Takes a ceremony that has not expired (once).
    fn take(&self, key: &K) -> Option<V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let (value, at) = map.remove(key)?;
        (at.elapsed() < CEREMONY_TTL).then_some(value)
    }
}

/// The user handle an account's passkeys carry: stable per account, not
/// its number.
fn user_handle(account: AccountId) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"tokun passkey user\0")
        .chain_update(account.get().to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// The "Sign in with a passkey" button for `/login` (shown by the script
/// when the browser has WebAuthn), with the place its errors appear.
pub fn login_button(state: &AppState) -> Option<Markup> {
    state.console().passkeys.as_ref()?;
    Some(html! {
        div.passkey-signin data-passkey="signin" hidden {
            button.secondary type="button" { "Sign in with a passkey" }
            p.passkey-status role="alert" {}
        }
        (script())
    })
}

/// The Passkeys section of `/account`: the list, remove buttons, and the
/// form that adds one.
pub fn section(state: &AppState, who: &Signed) -> Result<Option<Markup>, StorageError> {
    if state.console().passkeys.is_none() {
        return Ok(None);
    }
    let records = state.services().store.passkeys_of(who.account)?;
    Ok(Some(html! {
        h2 id="passkeys" { "Passkeys" }
        p { "Sign in with your fingerprint, face or device PIN instead of an email code." }
        @if records.is_empty() {
            p.muted { "No passkeys yet." }
        } @else {
            ul.passkeys {
                @for record in &records {
                    li {
                        div {
                            strong { (record.name) }
                            span.muted {
                                "Added " (datetime(record.created_ms)) " · "
                                @match record.last_used_ms {
                                    Some(used) => { "last used " (datetime(used)) }
                                    None => { "never used" }
                                }
                            }
                        }
                        form method="post" action="/account/passkeys/remove" {
                            input type="hidden" name="csrf" value=(who.csrf);
                            input type="hidden" name="id" value=(to_hex(&record.credential_id));
                            button.danger type="submit" aria-label=(format!("Remove passkey {}", record.name)) { "Remove" }
                        }
                    }
                }
            }
        }
        noscript { p.muted { "Adding a passkey needs JavaScript." } }
        form.passkey-add data-passkey="register" hidden novalidate {
            input type="hidden" name="csrf" value=(who.csrf);
            div.field {
                label for="passkey-name" { "Passkey name" }
                span.hint id="passkey-name-hint" { "So you can tell your passkeys apart, e.g. “Work laptop”." }
                input id="passkey-name" name="name" type="text" maxlength="60" autocomplete="off" aria-describedby="passkey-name-hint";
            }
            button type="submit" { "Add a passkey" }
            p.passkey-status role="alert" {}
        }
        (script())
    }))
}

fn script() -> Markup {
    html! { script src=(format!("/assets/passkey.js?v={}", SCRIPT.len())) defer {} }
}

/// The pages' script, compiled in.
const SCRIPT: &str = include_str!("assets/passkey.js");

/// `GET /assets/passkey.js`: cached for a year (the URL carries a version).
pub async fn script_asset() -> Response {
    super::layout::asset(SCRIPT, "text/javascript; charset=utf-8")
}

fn to_hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

/// A credential id from a form: hex, at most 1,024 bytes.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() > 2048 {
        return None;
    }
    crate::hex::decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::parse(toml, |_| None).unwrap()
    }

    #[test]
    fn the_relying_party_follows_the_public_url() {
        let (id, origin, any_port) = relying_party(&Config::default()).unwrap();
        assert_eq!(
            (id.as_str(), origin.as_str(), any_port),
            ("localhost", "http://localhost/", true)
        );
        let local = config("[server]\npublic_url = \"http://127.0.0.1:8080\"\n");
        assert_eq!(relying_party(&local).unwrap().0, "localhost");
        let public = config("[server]\npublic_url = \"https://tokun.example/console\"\n");
        let (id, origin, any_port) = relying_party(&public).unwrap();
        assert_eq!(
            (id.as_str(), origin.as_str(), any_port),
            ("tokun.example", "https://tokun.example/", false)
        );
        let parent = config(
            "[server]\npublic_url = \"https://app.tokun.example\"\n[auth.passkeys]\nrp_id = \"tokun.example\"\n",
        );
        assert_eq!(relying_party(&parent).unwrap().0, "tokun.example");
        assert!(Passkeys::new(&public).is_some());
        assert!(Passkeys::new(&config("[auth.passkeys]\nenabled = false\n")).is_none());
    }

    #[test]
    fn ceremonies_are_taken_once_and_user_handles_are_stable() {
        let ceremonies = Ceremonies::new();
        assert!(ceremonies.keep("a".to_owned(), 1));
        assert_eq!(ceremonies.take(&"a".to_owned()), Some(1));
        assert_eq!(ceremonies.take(&"a".to_owned()), None);
        assert_eq!(
            user_handle(AccountId::new(7)),
            user_handle(AccountId::new(7))
        );
        assert_ne!(
            user_handle(AccountId::new(7)),
            user_handle(AccountId::new(8))
        );
        assert_eq!(
            from_hex(&to_hex(b"\x00\xffid")),
            Some(b"\x00\xffid".to_vec())
        );
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("abc"), None);
    }
}
