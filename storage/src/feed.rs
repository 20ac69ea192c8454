//! What the ledger writer has just made durable, handed to readers that
//! asked to follow one account — so a page that keeps a running sum (the
//! console's daily spend, its monthly statement) adds the new records it is
//! given instead of reading them back from sled and decoding them.
//!
//! A reader subscribes an account, reads the store once, and from then on
//! takes what the writer pushed since. Nothing is pushed for accounts nobody
//! follows: the writer's cost is one atomic load per batch while nobody
//! does, and a map lookup per record of a followed account while somebody
//! does. A queue nobody has taken from for [`IDLE_MS`] is dropped, and one
//! that grows past [`CAP`] items is emptied and marked overflowed; either
//! way its reader reads the store again, so a forgotten subscription costs
//! neither memory nor correctness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::ids::AccountId;
use crate::ledger::LedgerEntry;
use crate::money::Nanos;

/// A queue not taken from for this long is dropped.
pub const IDLE_MS: u64 = 15 * 60 * 1_000;
/// A queue longer than this is emptied and marked overflowed.
pub const CAP: usize = 200_000;

/// The wall clock in Unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    taken_ms: u64,
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
    pub fn subscribe(&self, account: AccountId, now_ms: u64) {
        let mut queues = self.lock();
        queues.insert(
            account,
            Queue {
                items: Vec::new(),
                taken_ms: now_ms,
            },
        );
        self.followed.store(queues.len(), Ordering::Release);
    }

    /// What was pushed for `account` since its last take or subscription.
    pub fn take(&self, account: AccountId, now_ms: u64) -> Taken<T> {
        let mut queues = self.lock();
        match queues.get_mut(&account) {
            Some(queue) => {
                queue.taken_ms = now_ms;
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
    pub fn push(&self, now_ms: u64, items: impl IntoIterator<Item = (AccountId, T)>) {
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
            queue.items.len() <= CAP && now_ms.saturating_sub(queue.taken_ms) < IDLE_MS
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
        feed.push(0, [(A, 1)]);
        assert_eq!(feed.take(A, 0), Taken::Lost);
        feed.subscribe(A, 0);
        feed.push(1, [(A, 2), (B, 3), (A, 4)]);
        assert_eq!(feed.take(A, 2), Taken::Items(vec![2, 4]));
        assert_eq!(feed.take(A, 3), Taken::Items(vec![]));
        assert_eq!(feed.take(B, 3), Taken::Lost);
        feed.unsubscribe(A);
        assert!(!feed.is_followed());
    }

    #[test]
    fn an_overflowing_or_idle_queue_is_lost() {
        let feed = Feed::<usize>::default();
        feed.subscribe(A, 0);
        feed.subscribe(B, 0);
        feed.push(1, (0..=CAP).map(|i| (A, i)));
        assert_eq!(feed.take(A, 2), Taken::Lost);
        feed.push(IDLE_MS, [(B, 1)]);
        assert_eq!(feed.take(B, IDLE_MS), Taken::Lost);
        assert!(!feed.is_followed());
    }
}
