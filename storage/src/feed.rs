//! What the ledger writer has just made durable, handed to readers that
//! asked to follow one account — so a page that keeps a running sum (the
//! console's daily spend, its monthly statement) adds the new records it is
//! given instead of reading them back from sled and decoding them.
//!
//! A reader subscribes an account, reads the store once, and from then on
//! takes what the writer pushed since. Nothing is pushed for accounts nobody
//! follows: the writer's cost is one atomic load per batch while nobody
//! does, and a map lookup per record of a followed account while somebody
//! does. A queue nobody has taken from for [`IDLE`] is dropped, and one
//! that grows past [`CAP`] items is emptied and marked overflowed; either
//! way its reader reads the store again, so a forgotten subscription costs
//! neither memory nor correctness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ids::AccountId;
use crate::ledger::LedgerEntry;
use crate::money::Nanos;

/// A queue not taken from for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// A queue longer than this is emptied and marked overflowed.
pub const CAP: usize = 200_000;

/// A durable usage record, as much as a running sum needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageItem {
    /// The record's key in the `usage` tree (account ++ at_ms ++ unique).
    pub key: [u8; 24],
    pub at_ms: u64,
    pub model: String,
    pub cost: Nanos,
}

/// What a reader takes: the items pushed since its last take, in commit
/// order, or word that some were lost and the store must be read again.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<T> {
    Items(Vec<T>),
    /// Not subscribed (or dropped as idle), or overflowed: read the store.
    Lost,
}

/// The feeds of one store: usage records and ledger entries.
#[derive(Default)]
pub struct Feeds {
    pub usage: Feed<UsageItem>,
    pub entries: Feed<LedgerEntry>,
}

/// One kind of item, queued per followed account.
pub struct Feed<T> {
    /// How many accounts are followed: the writer skips the lock at zero.
    followed: AtomicUsize,
    queues: Mutex<HashMap<AccountId, Queue<T>>>,
}

struct Queue<T> {
    items: Vec<T>,
    /// Monotonic, not the wall clock: only its age matters.
    taken: Instant,
}

impl<T> Default for Feed<T> {
    fn default() -> Self {
        Self {
            followed: AtomicUsize::new(0),
            queues: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Feed<T> {
    /// Follows `account` from now on (again: its queue starts empty).
    /// Subscribe before reading the store, so nothing written between the
    /// read and the next take is missed; the first take may repeat what
    /// the read saw, and the reader skips those.
    pub fn subscribe(&self, account: AccountId) {
        let mut queues = self.lock();
        queues.insert(
            account,
            Queue {
                items: Vec::new(),
                taken: Instant::now(),
            },
        );
        self.followed.store(queues.len(), Ordering::Release);
    }

    /// What was pushed for `account` since its last take or subscription.
    pub fn take(&self, account: AccountId) -> Taken<T> {
        let mut queues = self.lock();
        match queues.get_mut(&account) {
            Some(queue) => {
                queue.taken = Instant::now();
                Taken::Items(std::mem::take(&mut queue.items))
            }
            None => Taken::Lost,
        }
    }

    /// Stops following `account`.
    pub fn unsubscribe(&self, account: AccountId) {
        let mut queues = self.lock();
        queues.remove(&account);
        self.followed.store(queues.len(), Ordering::Release);
    }

    /// Queues each item of a followed account (the writer, after a flush).
    pub fn push(&self, items: impl IntoIterator<Item = (AccountId, T)>) {
        self.push_at(Instant::now(), items);
    }

    fn push_at(&self, now: Instant, items: impl IntoIterator<Item = (AccountId, T)>) {
        if self.followed.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut queues = self.lock();
        for (account, item) in items {
            if let Some(queue) = queues.get_mut(&account) {
                queue.items.push(item);
            }
        }
        // Overflowed or forgotten queues go; their readers read the store.
        queues.retain(|_, queue| {
            queue.items.len() <= CAP && now.saturating_duration_since(queue.taken) < IDLE
        });
        self.followed.store(queues.len(), Ordering::Release);
    }

    /// Whether the writer has anything to do for this feed.
    pub fn is_followed(&self) -> bool {
        self.followed.load(Ordering::Acquire) > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Queue<T>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: AccountId = AccountId::new(1);
    const B: AccountId = AccountId::new(2);

    #[test]
    fn only_followed_accounts_are_queued_and_a_take_empties_the_queue() {
        let feed = Feed::<u32>::default();
        feed.push([(A, 1)]);
        assert_eq!(feed.take(A), Taken::Lost);
        feed.subscribe(A);
        feed.push([(A, 2), (B, 3), (A, 4)]);
        assert_eq!(feed.take(A), Taken::Items(vec![2, 4]));
        assert_eq!(feed.take(A), Taken::Items(vec![]));
        assert_eq!(feed.take(B), Taken::Lost);
        feed.unsubscribe(A);
        assert!(!feed.is_followed());
    }

    #[test]
    fn an_overflowing_or_idle_queue_is_lost() {
        let feed = Feed::<usize>::default();
        feed.subscribe(A);
        feed.subscribe(B);
        feed.push((0..=CAP).map(|i| (A, i)));
        assert_eq!(feed.take(A), Taken::Lost);
        feed.push_at(Instant::now() + IDLE, [(B, 1)]);
        assert_eq!(feed.take(B), Taken::Lost);
        assert!(!feed.is_followed());
    }
}
