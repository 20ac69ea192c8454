//! Requests in flight, for `POST /v1/requests/{id}/cancel`, and the
//! `Idempotency-Key` table (24 h, kept in the store so it survives a
//! restart): a retry gets the stored non-streaming result, or 409 while the
//! first attempt still runs, and is never charged a second time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokun_storage::{AccountId, IdempotentOutcome, StorageError, Store, StoredReply};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Running requests by id: the owning account and the cancel signal.
type Requests = Arc<Mutex<HashMap<Arc<str>, (Option<AccountId>, Arc<Notify>)>>>;

/// Cancel signals of running requests, by request id.
#[derive(Default)]
pub struct InFlight {
    requests: Requests,
}

/// Removes its request from [`InFlight`] when dropped (the response ended).
pub struct InFlightGuard {
    requests: Requests,
    id: Arc<str>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.requests).remove(&self.id);
    }
}

impl InFlight {
    pub fn register(
        &self,
        id: Arc<str>,
        account: Option<AccountId>,
    ) -> (Arc<Notify>, InFlightGuard) {
        let cancel = Arc::new(Notify::new());
        lock(&self.requests).insert(id.clone(), (account, cancel.clone()));
        (
            cancel,
            InFlightGuard {
                requests: self.requests.clone(),
                id,
            },
        )
    }

    /// Fires the cancel signal of `id` if it belongs to `account`.
    pub fn cancel(&self, id: &str, account: Option<AccountId>) -> bool {
        let id = id.strip_prefix("chatcmpl-").unwrap_or(id);
        match lock(&self.requests).get(id) {
            Some((owner, cancel)) if *owner == account => {
                cancel.notify_one();
                true
            }
            _ => false,
        }
    }
}

const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A stored response to replay.
#[derive(Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
}

pub enum Claim {
    /// First use of the key: go ahead; `finish` or drop the ticket.
    Proceed(IdempotencyTicket),
    InFlight,
    Replay(StoredResponse),
    AlreadyStreamed,
    /// The key was first used with another request.
    Mismatch,
    /// The first attempt was cut short by a restart; it is never run again.
    Interrupted,
}

type Running = Arc<Mutex<HashSet<(AccountId, String)>>>;

/// Keys whose first request still runs live in memory; finished ones in the
/// store (`IdempotentOutcome`), so a retry after a restart is still answered
/// from what the first attempt did.
pub struct Idempotency {
    running: Running,
    store: Store,
}

/// The right to run a request under an idempotency key. Dropped without
/// `finish` (the request failed before charging anything), the key is freed.
pub struct IdempotencyTicket {
    running: Running,
    store: Store,
    key: Option<(AccountId, String)>,
    fingerprint: String,
}

/// The oldest outcome still answered, in Unix ms.
fn window_start_ms() -> u64 {
    let ttl = u64::try_from(IDEMPOTENCY_TTL.as_millis()).unwrap_or(u64::MAX);
    tokun_providers::clock::unix_ms().saturating_sub(ttl)
}

impl Idempotency {
    pub fn new(store: Store) -> Self {
        Self {
            running: Running::default(),
            store,
        }
    }

    /// Claims `key` for a request whose fingerprint (a hash of the request)
    /// is `fingerprint`.
    pub fn claim(
        &self,
        account: AccountId,
        key: &str,
        fingerprint: &str,
    ) -> Result<Claim, StorageError> {
        let mut running = lock(&self.running);
        let id = (account, key.to_owned());
        if running.contains(&id) {
            return Ok(Claim::InFlight);
        }
        // Checked under the lock: a finishing request writes its outcome
        // before it leaves `running`, so no retry slips between the two.
        let remembered = self
            .store
            .idempotent_outcome(account, key, window_start_ms())?;
        Ok(match remembered {
            Some(IdempotentOutcome {
                fingerprint: Some(first),
                ..
            }) if first != fingerprint => Claim::Mismatch,
            Some(IdempotentOutcome {
                response: Some(reply),
                ..
            }) => Claim::Replay(StoredResponse {
                status: reply.status,
                body: Bytes::from(reply.body),
                headers: reply.headers,
            }),
            // Not running here, yet claimed: the process that ran it stopped.
            Some(IdempotentOutcome { pending: true, .. }) => Claim::Interrupted,
            Some(IdempotentOutcome { response: None, .. }) => Claim::AlreadyStreamed,
            None => {
                // The claim is written before anything runs: any flush that
                // makes the request's hold durable makes this durable too, so
                // after a crash a retry finds it and does not charge again.
                let claimed = IdempotentOutcome {
                    at_ms: tokun_providers::clock::unix_ms(),
                    response: None,
                    fingerprint: Some(fingerprint.to_owned()),
                    pending: true,
                };
                self.store.remember_outcome(account, key, &claimed)?;
                running.insert(id.clone());
                Claim::Proceed(IdempotencyTicket {
                    running: self.running.clone(),
                    store: self.store.clone(),
                    key: Some(id),
                    fingerprint: fingerprint.to_owned(),
                })
            }
        })
    }

    /// Forgets outcomes past the 24 h window; returns how many.
    pub fn purge_expired(&self) -> Result<usize, StorageError> {
        self.store.purge_outcomes(window_start_ms())
    }
}

impl IdempotencyTicket {
    /// The request was charged: remember its response (or that it streamed).
    /// The outcome is written to the store but not flushed: the caller makes
    /// it durable with the next ledger flush (`LedgerHandle::barrier`).
    pub fn finish(mut self, response: Option<StoredResponse>) {
        let Some((account, key)) = self.key.take() else {
            return;
        };
        let outcome = IdempotentOutcome {
            at_ms: tokun_providers::clock::unix_ms(),
            fingerprint: Some(std::mem::take(&mut self.fingerprint)),
            pending: false,
            response: response.map(|r| StoredReply {
                status: r.status,
                headers: r.headers,
                body: String::from_utf8_lossy(&r.body).into_owned(),
            }),
        };
        let mut running = lock(&self.running);
        if let Err(error) = self.store.remember_outcome(account, &key, &outcome) {
            // A retry of this key would run again; say so loudly.
            tracing::error!(%error, %account, "could not remember an idempotent outcome");
        }
        running.remove(&(account, key));
    }
}

impl Drop for IdempotencyTicket {
    /// Dropped without `finish`: the request failed before it was charged,
    /// so its claim is withdrawn and a retry runs.
    fn drop(&mut self) {
        if let Some((account, key)) = self.key.take() {
            let mut running = lock(&self.running);
            if let Err(error) = self.store.forget_outcome(account, &key) {
                tracing::error!(%error, %account, "could not withdraw an idempotency claim");
            }
            running.remove(&(account, key));
        }
    }
}
