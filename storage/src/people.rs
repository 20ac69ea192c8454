//! The people who use the console, not their money: sessions (by the
//! SHA-256 of the session id), one-time sign-in codes (hashed), sign-in
//! history, profiles, and passkeys (`people/passkeys.rs`). These trees are
//! written straight into sled by the edge, outside the ledger writer's
//! batches, like `idempotency`; a session
//! or a sign-in is flushed at once ([`Store::flush_people`]) so a signed-in
//! person survives a restart. Nothing here ever holds a secret in the clear.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{decode, encode, normalize_email, usage_key};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::money::Nanos;
use crate::store::Store;

mod expiry;
mod passkeys;
pub use passkeys::PasskeyRecord;

/// A signed-in browser. Stored under the SHA-256 of its cookie's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub account: AccountId,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The per-session token every state-changing form carries.
    pub csrf: String,
    pub ip: String,
    pub user_agent: String,
    /// How it signed in: `email`, `oidc` or `passkey`.
    pub method: String,
}

/// The one live sign-in code of an email; a new code replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCode {
    /// [`login_code_hash`] of the email and the code.
    pub code_hash: [u8; 32],
    pub expires_ms: u64,
    /// Wrong guesses left; at 0 the code is void.
    pub tries_left: u32,
    pub created_ms: u64,
}

/// What checking a sign-in code found. The code is consumed when right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeCheck {
    /// No code was requested for this email (or it was used).
    Missing,
    Expired,
    /// Too many wrong guesses: the code is void.
    Locked,
    Wrong {
        tries_left: u32,
    },
    Right,
}

/// One sign-in, for the account's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInRecord {
    pub at_ms: u64,
    /// `email`, `oidc` or `passkey`.
    pub method: String,
    pub ip: String,
    pub user_agent: String,
}

/// What a person chose to be shown as, and when they signed in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub display_name: String,
    /// An IANA time zone name (`Europe/Paris`) or `UTC`.
    pub time_zone: String,
    pub first_signin_ms: Option<u64>,
    pub last_signin_ms: Option<u64>,
    /// The low-balance alert: an email when the balance falls below this
    /// (the console's billing page sets it; see `billing.rs`).
    #[serde(default)]
    pub low_balance: Option<Nanos>,
    /// The alert for the current fall was sent; cleared once the balance
    /// is back at or above the threshold.
    #[serde(default)]
    pub low_balance_alerted: bool,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            display_name: String::new(),
            time_zone: "UTC".into(),
            first_signin_ms: None,
            last_signin_ms: None,
            low_balance: None,
            low_balance_alerted: false,
        }
    }
}

/// SHA-256 of the normalized email, a NUL, and the code: a code is only
/// good for the email it was sent to.
pub fn login_code_hash(email: &str, code: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(normalize_email(email).as_bytes());
    hasher.update([0]);
    hasher.update(code.trim().as_bytes());
    hasher.finalize().into()
}

/// Equal bytes, compared without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn account_session_key(account: AccountId, hash: &[u8; 32]) -> Vec<u8> {
    let mut key = account.to_key().to_vec();
    key.extend_from_slice(hash);
    key
}

impl Store {
    /// Stores a new session (not flushed: see [`Store::flush_people`]).
    pub fn put_session(
        &self,
        hash: &[u8; 32],
        session: &SessionRecord,
    ) -> Result<(), StorageError> {
        let value = encode("a session", session)?;
        self.trees
            .sessions
            .insert(hash, value)
            .map_err(StorageError::sled("write sessions"))?;
        self.trees
            .account_sessions
            .insert(
                account_session_key(session.account, hash),
                sled::IVec::default(),
            )
            .map_err(StorageError::sled("write account_sessions"))?;
        Ok(())
    }

    /// The session stored under `hash`, expired or not.
    pub fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>, StorageError> {
        let found = self.trees.sessions.get(hash);
        match found.map_err(StorageError::sled("read sessions"))? {
            Some(bytes) => decode("sessions", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Forgets one session (sign out).
    pub fn delete_session(&self, hash: &[u8; 32]) -> Result<(), StorageError> {
        let removed = self.trees.sessions.remove(hash);
        if let Some(bytes) = removed.map_err(StorageError::sled("delete a session"))? {
            let session: SessionRecord = decode("sessions", &bytes)?;
            self.trees
                .account_sessions
                .remove(account_session_key(session.account, hash))
                .map_err(StorageError::sled("delete a session"))?;
        }
        Ok(())
    }

    /// Forgets every session of an account (sign out everywhere); how many.
    pub fn delete_sessions_of(&self, account: AccountId) -> Result<usize, StorageError> {
        let mut deleted = 0;
        for item in self.trees.account_sessions.scan_prefix(account.to_key()) {
            let (key, _) = item.map_err(StorageError::sled("scan account_sessions"))?;
            if let Some(hash) = key.get(8..) {
                self.trees
                    .sessions
                    .remove(hash)
                    .map_err(StorageError::sled("delete a session"))?;
            }
            self.trees
                .account_sessions
                .remove(key)
                .map_err(StorageError::sled("delete a session"))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Stores the sign-in code of `email`, replacing (voiding) any earlier one.
    pub fn put_login_code(&self, email: &str, code: &LoginCode) -> Result<(), StorageError> {
        let value = encode("a login code", code)?;
        self.trees
            .login_codes
            .insert(normalize_email(email).as_bytes(), value)
            .map_err(StorageError::sled("write login_codes"))?;
        Ok(())
    }

    pub fn login_code(&self, email: &str) -> Result<Option<LoginCode>, StorageError> {
        let found = self
            .trees
            .login_codes
            .get(normalize_email(email).as_bytes());
        match found.map_err(StorageError::sled("read login_codes"))? {
            Some(bytes) => decode("login_codes", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Checks `code` for `email` at `now_ms`, atomically: a right code is
    /// consumed, a wrong one costs a try (two guesses racing both count).
    pub fn check_login_code(
        &self,
        email: &str,
        code: &str,
        now_ms: u64,
    ) -> Result<CodeCheck, StorageError> {
        let hash = login_code_hash(email, code);
        let judge = |stored: &LoginCode| {
            if stored.expires_ms <= now_ms {
                CodeCheck::Expired
            } else if stored.tries_left == 0 {
                CodeCheck::Locked
            } else if constant_time_eq(&stored.code_hash, &hash) {
                CodeCheck::Right
            } else {
                CodeCheck::Wrong {
                    tries_left: stored.tries_left - 1,
                }
            }
        };
        let key = normalize_email(email);
        let previous = self
            .trees
            .login_codes
            .fetch_and_update(key.as_bytes(), |old| {
                let bytes = old?;
                let Ok(mut stored) = serde_json::from_slice::<LoginCode>(bytes) else {
                    return Some(bytes.to_vec());
                };
                match judge(&stored) {
                    CodeCheck::Right => None,
                    CodeCheck::Wrong { tries_left } => {
                        stored.tries_left = tries_left;
                        serde_json::to_vec(&stored).ok().or(Some(bytes.to_vec()))
                    }
                    _ => Some(bytes.to_vec()),
                }
            })
            .map_err(StorageError::sled("update login_codes"))?;
        match previous {
            Some(bytes) => decode::<LoginCode>("login_codes", &bytes).map(|stored| judge(&stored)),
            None => Ok(CodeCheck::Missing),
        }
    }

    /// Records a sign-in and moves the profile's first/last sign-in times.
    pub fn record_signin(
        &self,
        account: AccountId,
        signin: &SignInRecord,
    ) -> Result<(), StorageError> {
        let unique = next_unique();
        let key = usage_key(account.get(), signin.at_ms, unique);
        self.trees
            .signins
            .insert(key, encode("a sign-in", signin)?)
            .map_err(StorageError::sled("write signins"))?;
        let mut profile = self.profile(account)?;
        profile.first_signin_ms.get_or_insert(signin.at_ms);
        profile.last_signin_ms = Some(signin.at_ms);
        self.put_profile(account, &profile)
    }

    /// An account's sign-ins, newest first, at most `limit`.
    pub fn signins(
        &self,
        account: AccountId,
        limit: usize,
    ) -> Result<Vec<SignInRecord>, StorageError> {
        self.trees
            .signins
            .scan_prefix(account.to_key())
            .values()
            .rev()
            .take(limit)
            .map(|item| {
                decode(
                    "signins",
                    &item.map_err(StorageError::sled("scan signins"))?,
                )
            })
            .collect()
    }

    /// An account's profile; the default one before anything was saved.
    pub fn profile(&self, account: AccountId) -> Result<Profile, StorageError> {
        let found = self.trees.profiles.get(account.to_key());
        match found.map_err(StorageError::sled("read profiles"))? {
            Some(bytes) => decode("profiles", &bytes),
            None => Ok(Profile::default()),
        }
    }

    pub fn put_profile(&self, account: AccountId, profile: &Profile) -> Result<(), StorageError> {
        self.trees
            .profiles
            .insert(account.to_key(), encode("a profile", profile)?)
            .map_err(StorageError::sled("write profiles"))?;
        Ok(())
    }

    /// Makes the people trees' writes durable (one sled flush, which covers
    /// every tree), off the async workers.
    pub async fn flush_people(&self) -> Result<(), StorageError> {
        self.db
            .flush_async()
            .await
            .map_err(StorageError::sled("flush people"))?;
        Ok(())
    }
}

/// A tie-breaker for two sign-ins of an account in the same millisecond.
fn next_unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
