//! Requests in flight, for `POST /v1/requests/{id}/cancel`, and the
//! `Idempotency-Key` table (24 h): a retry gets the stored non-streaming
//! result, or 409 while the first attempt still runs, and is never charged
//! a second time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokun_storage::AccountId;

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

enum Slot {
    Running,
    Done(StoredResponse),
    /// A stream finished; streams are not replayed, but never run twice.
    Streamed,
}

pub enum Claim {
    /// First use of the key: go ahead; `finish` or drop the ticket.
    Proceed(IdempotencyTicket),
    InFlight,
    Replay(StoredResponse),
    AlreadyStreamed,
}

type Table = Arc<Mutex<HashMap<(AccountId, String), (Instant, Slot)>>>;

#[derive(Default)]
pub struct Idempotency {
    table: Table,
}

/// The right to run a request under an idempotency key. Dropped without
/// `finish` (the request failed before charging anything), the key is freed.
pub struct IdempotencyTicket {
    table: Table,
    key: Option<(AccountId, String)>,
}

impl Idempotency {
    pub fn claim(&self, account: AccountId, key: &str) -> Claim {
        let mut table = lock(&self.table);
        let now = Instant::now();
        table.retain(|_, (at, _)| now.duration_since(*at) < IDEMPOTENCY_TTL);
        let id = (account, key.to_owned());
        match table.get(&id) {
            Some((_, Slot::Running)) => Claim::InFlight,
            Some((_, Slot::Done(stored))) => Claim::Replay(stored.clone()),
            Some((_, Slot::Streamed)) => Claim::AlreadyStreamed,
            None => {
                table.insert(id.clone(), (now, Slot::Running));
                Claim::Proceed(IdempotencyTicket {
                    table: self.table.clone(),
                    key: Some(id),
                })
            }
        }
    }
}

impl IdempotencyTicket {
    /// The request was charged: remember its response (or that it streamed).
    pub fn finish(mut self, response: Option<StoredResponse>) {
        if let Some(key) = self.key.take() {
            let slot = response.map_or(Slot::Streamed, Slot::Done);
            lock(&self.table).insert(key, (Instant::now(), slot));
        }
    }
}

impl Drop for IdempotencyTicket {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.table).remove(&key);
        }
    }
}
