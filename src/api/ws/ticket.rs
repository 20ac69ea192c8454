//! Single-use, short-lived tickets for browsers, which cannot set an
//! `Authorization` header on a WebSocket: `POST /v1/ws/ticket` (with a key)
//! returns one, the page opens `/v1/ws?ticket=…` within the TTL, and the
//! ticket is gone after that one use. Only SHA-256 hashes of tickets are kept,
//! in memory: a restart invalidates them, which a 60-second ticket can afford.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokun_storage::{KeyId, Store};

use crate::auth::Caller;
use crate::error::ApiError;

/// Tickets start with this, so a log reader can tell them from keys.
pub const TICKET_PREFIX: &str = "wst-";
/// Open tickets kept at most; beyond that, issuing waits for some to expire.
const MAX_OPEN: usize = 100_000;

/// The open tickets, by the hash of their secret.
pub struct Tickets {
    ttl: Duration,
    open: Mutex<HashMap<[u8; 32], Issued>>,
}

struct Issued {
    expires: Instant,
    key: KeyId,
}

impl Tickets {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for `caller`'s key.
    pub fn issue(&self, caller: &Caller) -> Result<String, ApiError> {
        let secret =
            crate::auth::new_key_secret().replacen(crate::auth::KEY_PREFIX, TICKET_PREFIX, 1);
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= MAX_OPEN {
            open.retain(|_, issued| issued.expires > now);
            if open.len() >= MAX_OPEN {
                return Err(ApiError::RateLimited {
                    message: "Too many WebSocket tickets are open; retry shortly.".into(),
                    retry_after: self.ttl,
                });
            }
        }
        open.insert(
            hash(&secret),
            Issued {
                expires: now + self.ttl,
                key: caller.key.id,
            },
        );
        Ok(secret)
    }

    /// Uses a ticket up: the caller it was issued to, if it is open, unexpired
    /// and its key is still live.
    pub fn redeem(&self, ticket: &str, store: &Store) -> Result<Caller, ApiError> {
        let refused = || ApiError::Unauthorized {
            message: "The WebSocket ticket is invalid, expired or already used.".into(),
        };
        let issued = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash(ticket))
            .ok_or_else(refused)?;
        if issued.expires <= Instant::now() {
            return Err(refused());
        }
        // Read the key again: it may have been revoked since the ticket was issued.
        let key = store
            .key(issued.key)
            .map_err(|_| ApiError::Internal)?
            .filter(|key| !key.is_revoked())
            .ok_or_else(|| ApiError::Unauthorized {
                message: "The API key behind this ticket has been revoked.".into(),
            })?;
        Ok(Caller {
            account: key.account,
            key: Arc::new(key),
        })
    }
}

fn hash(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(store: &Store) -> Caller {
        let key = tokun_storage::KeyRecord {
            id: store.next_key_id().unwrap(),
            account: store.next_account_id().unwrap(),
            prefix: String::new(),
            name: String::new(),
            created_ms: 0,
            last_used_ms: None,
            revoked_ms: None,
            spend_limit: None,
            rpm_limit: None,
            allowed_models: Vec::new(),
            debug: false,
            limit_reset: Default::default(),
            expires_ms: None,
        };
        Caller {
            account: key.account,
            key: Arc::new(key),
        }
    }

    /// The ticket was accepted when the refusal is about the (unstored) key.
    fn accepted(result: Result<Caller, ApiError>) -> bool {
        result.is_err_and(|e| e.to_string().contains("revoked"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_works_once_and_only_within_its_ttl() {
        let store = Store::temporary().unwrap();
        let caller = caller(&store);
        let tickets = Tickets::new(Duration::from_secs(60));
        let early = tickets.issue(&caller).unwrap();
        let late = tickets.issue(&caller).unwrap();
        assert!(early.starts_with(TICKET_PREFIX) && early.len() > 40);
        assert!(!accepted(tickets.redeem("wst-guessed", &store)));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(accepted(tickets.redeem(&early, &store)));
        assert!(!accepted(tickets.redeem(&early, &store)), "single use");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!accepted(tickets.redeem(&late, &store)), "expired at 60 s");
    }
}
