//! Who is calling: API keys (`Authorization: Bearer sk-tokun-…`) and the
//! admin token. Keys are looked up by SHA-256, cached in memory; revoked keys
//! are refused forever. Per-key RPM limits are enforced here, before any work.
//!
//! Handlers take the caller as an extractor: [`Caller`] where a key is
//! required, [`Inference`] on the metered endpoints (it may be nobody while
//! billing is off, and counts the key's RPM), [`Admin`] for the operator API.
//! A new way to sign in (a console session) is one more source here, not an
//! edit in every handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokun_actors::Payer;
use tokun_actors::account::KeyLimit;
use tokun_storage::{AccountId, KeyRecord, Store, WriteOp, hash_secret};

use crate::error::ApiError;
use crate::state::AppState;

pub const KEY_PREFIX: &str = "sk-tokun-";
/// 43 base62 characters ≈ 256 random bits.
const KEY_RANDOM_CHARS: usize = 43;

/// An authenticated caller: a live API key and its account.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: AccountId,
    pub key: Arc<KeyRecord>,
}

impl Caller {
    /// Who pays for this caller's requests.
    pub fn payer(&self) -> Payer {
        Payer {
            account: self.account,
            key: self.key.id,
            key_limit: self.key.spend_limit.map(|amount| KeyLimit {
                amount,
                reset: self.key.limit_reset,
            }),
        }
    }
}

/// A key is required: 401 without a valid one.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .keys()
            .authenticate(&state.services().store, &parts.headers)
    }
}

/// The caller of a metered endpoint (`/v1/chat/completions`, `/v1/embeddings`):
/// a key, counted against its RPM limit and stamped as used — or nobody, when
/// billing is off and no key was sent.
#[derive(Debug, Clone)]
pub struct Inference(pub Option<Caller>);

impl FromRequestParts<AppState> for Inference {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(caller) = caller_if_billed(state, &parts.headers)? else {
            return Ok(Inference(None));
        };
        state.keys().check_rpm(&caller.key)?;
        stamp_last_used(state, &caller);
        Ok(Inference(Some(caller)))
    }
}

/// The key sent with a request, required while billing is on; `None` when
/// billing is off and no key was sent (a key that is sent must be valid).
pub fn caller_if_billed(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    if !state.billing_enabled() && bearer(headers).is_none() {
        return Ok(None);
    }
    state
        .keys()
        .authenticate(&state.services().store, headers)
        .map(Some)
}

/// Writes the key's `last_used` at most once a minute. Not awaited: a lost
/// stamp is harmless, and revoked keys stay revoked (a writer rule).
fn stamp_last_used(state: &AppState, caller: &Caller) {
    let now = tokun_providers::clock::unix_ms();
    if let Some((hash, record)) = state.keys().last_used_due(&caller.key, now) {
        let services = state.services();
        services
            .ledger
            .append_nowait(vec![WriteOp::PutKey { hash, record }]);
    }
}

/// The operator: `Authorization: Bearer <admin token>`; 401 otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_admin(&parts.headers, &state.services().admin_token_hash).map(|()| Admin)
    }
}

/// Generates a new API key secret: `sk-tokun-` + 43 random base62 characters.
pub fn new_key_secret() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut secret = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    secret.push_str(KEY_PREFIX);
    secret.extend(
        (0..KEY_RANDOM_CHARS).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])),
    );
    secret
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// In-memory cache of key records by hash, in front of sled.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<[u8; 32], Arc<KeyRecord>>>,
    windows: Mutex<HashMap<u64, (Instant, u32)>>,
    /// When each key's `last_used` was last written, so it is written at most once a minute.
    last_used_written: Mutex<HashMap<u64, Instant>>,
    /// Keys revoked while this process runs, by id: a credential checked
    /// once (an open `/v1/ws` socket) asks here before it starts anything.
    revoked: Mutex<std::collections::HashSet<u64>>,
    /// Request debugging turned on or off while this process runs, by key
    /// id: an open `/v1/ws` socket's key was read once, so its completions
    /// ask here (see [`KeyCache::debugging`]).
    debug_changed: Mutex<HashMap<u64, bool>>,
}

/// How stale a key's `last_used` may get before it is written again.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

impl KeyCache {
    /// Resolves a bearer token to a live key.
    pub fn authenticate(&self, store: &Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer(headers).ok_or_else(|| ApiError::Unauthorized {
            message: "You didn't provide an API key. Send `Authorization: Bearer sk-tokun-…`."
                .into(),
        })?;
        let invalid = || ApiError::Unauthorized {
            message: "Incorrect API key provided.".into(),
        };
        if !token.starts_with(KEY_PREFIX) || token.len() > 128 {
            return Err(invalid());
        }
        let hash = hash_secret(token);
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
            .cloned();
        let key = match cached {
            Some(key) => key,
            None => {
                let record = store
                    .key_by_hash(&hash)
                    .map_err(|_| ApiError::Internal)?
                    .ok_or_else(invalid)?;
                let record = Arc::new(record);
                self.keys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(hash, record.clone());
                record
            }
        };
        if key.is_revoked() {
            return Err(ApiError::Unauthorized {
                message: "This API key has been revoked.".into(),
            });
        }
        if key.is_expired(tokun_providers::clock::unix_ms()) {
            return Err(ApiError::Unauthorized {
                message: "This API key has expired.".into(),
            });
        }
        Ok(Caller {
            account: key.account,
            key,
        })
    }

    /// Replaces or drops the cached record of a key (after revoke or update).
    pub fn update(&self, hash: [u8; 32], record: KeyRecord) {
        if record.is_revoked() {
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(record.id.get());
        }
        self.debug_changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.id.get(), record.debug);
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, Arc::new(record));
    }

    /// Whether `key` (authenticated earlier) has been revoked since, or
    /// has expired.
    pub fn is_revoked(&self, key: &KeyRecord) -> bool {
        key.is_revoked()
            || key.is_expired(tokun_providers::clock::unix_ms())
            || self
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&key.id.get())
    }

    /// Whether `key` (authenticated earlier) has request debugging on now.
    pub fn debugging(&self, key: &KeyRecord) -> bool {
        self.debug_changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key.id.get())
            .copied()
            .unwrap_or(key.debug)
    }

    /// The key's record with `last_used` set to now, when it is due to be
    /// written (at most once a minute per key); `None` otherwise.
    pub fn last_used_due(&self, key: &KeyRecord, now_ms: u64) -> Option<([u8; 32], KeyRecord)> {
        let now = Instant::now();
        let mut written = self
            .last_used_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if written
            .get(&key.id.get())
            .is_some_and(|at| now.duration_since(*at) < LAST_USED_EVERY)
        {
            return None;
        }
        written.insert(key.id.get(), now);
        drop(written);
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let (hash, cached) = keys.iter().find(|(_, k)| k.id == key.id)?;
        let mut record = KeyRecord::clone(cached);
        record.last_used_ms = Some(now_ms);
        Some((*hash, record))
    }

    /// Counts a request against the key's RPM limit (fixed one-minute windows).
    pub fn check_rpm(&self, key: &KeyRecord) -> Result<(), ApiError> {
        let Some(limit) = key.rpm_limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows.entry(key.id.get()).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(60) {
            *window = (now, 0);
        }
        if window.1 >= limit {
            let retry_after = Duration::from_secs(60).saturating_sub(now.duration_since(window.0));
            return Err(ApiError::RateLimited {
                message: format!("Rate limit reached for this key: {limit} requests per minute."),
                retry_after,
            });
        }
        window.1 += 1;
        Ok(())
    }
}

/// Checks the admin token (compared by hash, so timing says nothing about it).
pub fn check_admin(headers: &HeaderMap, admin_token_hash: &[u8; 32]) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::Unauthorized {
        message: "Admin token required.".into(),
    })?;
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let same = hash
        .iter()
        .zip(admin_token_hash)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::Unauthorized {
            message: "Invalid admin token.".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_secrets_are_long_random_and_prefixed() {
        let a = new_key_secret();
        let b = new_key_secret();
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_ne!(a, b);
        assert!(
            a[KEY_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
    }

    #[test]
    fn bearer_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            "Bearer sk-tokun-abc".parse().unwrap(),
        );
        assert_eq!(bearer(&headers), Some("sk-tokun-abc"));
        headers.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
