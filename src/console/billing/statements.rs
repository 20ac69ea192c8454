//! The statements read before, per account and month, so a page load costs
//! the same however fast the account is spending. A month over for good
//! never changes and is served as read; the current month follows the
//! account on the ledger writer's entry feed (`tokun_storage::feed`) and
//! adds the entries the writer made durable since its last load, instead
//! of reading them back from the store (which, for an account settling
//! thousands of requests a second, decoded thousands of entries a load).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokun_storage::feed::Taken;
use tokun_storage::{AccountId, Books, Change, StorageError, Store};

use super::statement::{Month, Statement};

/// How long after a month ends an entry may still be stamped inside it
/// (the store's walk allows as much): a month read later than this is over
/// for good.
const MONTH_SETTLED_MS: u64 = 10 * 60 * 1000;

/// At most this many statements are kept; past it the cache starts over.
const CACHED_STATEMENTS: usize = 4096;

/// See the module docs.
#[derive(Default)]
pub struct Statements {
    cached: Mutex<HashMap<(AccountId, u64), Slot>>,
}

/// One statement, locked for a whole load: two loads of the same account
/// must not both take from its feed (each would miss what the other took).
type Slot = Arc<Mutex<Option<Cached>>>;

struct Cached {
    statement: Statement,
    /// The newest entry's seq and books when last brought up to date.
    newest: Option<(u64, Books)>,
    read_ms: u64,
}

impl Statements {
    /// `month` of `account`'s ledger as of now.
    pub fn get(
        &self,
        store: &Store,
        account: AccountId,
        month: Month,
        now_ms: u64,
    ) -> Result<Statement, StorageError> {
        let slot = {
            let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
            if cached.len() >= CACHED_STATEMENTS {
                cached.clear();
            }
            Arc::clone(cached.entry((account, month.start_ms())).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let current = now_ms < month.end_ms();
        let fresh = match slot.take() {
            Some(cached) if cached.read_ms >= month.end_ms().saturating_add(MONTH_SETTLED_MS) => {
                cached
            }
            Some(cached) if current => match bring_up_to_date(store, account, cached, now_ms) {
                Some(cached) => cached,
                None => read(store, account, month, now_ms, true)?,
            },
            _ => read(store, account, month, now_ms, current)?,
        };
        let statement = fresh.statement.clone();
        *slot = Some(fresh);
        Ok(statement)
    }
}

/// Reads the month whole; a current month follows the account's entry feed
/// first, so nothing written after the read is missed.
fn read(
    store: &Store,
    account: AccountId,
    month: Month,
    now_ms: u64,
    follow: bool,
) -> Result<Cached, StorageError> {
    if follow {
        store.feeds().entries.subscribe(account);
    }
    let (statement, newest) = Statement::read(store, account, month)?;
    Ok(Cached {
        statement,
        newest,
        read_ms: now_ms,
    })
}

/// The current month's statement plus the entries the writer made durable
/// since it was read (those the read already saw are skipped by seq);
/// `None` when the feed lost entries or one is stamped outside the month
/// (read it whole instead).
fn bring_up_to_date(
    store: &Store,
    account: AccountId,
    mut cached: Cached,
    now_ms: u64,
) -> Option<Cached> {
    let Taken::Items(entries) = store.feeds().entries.take(account) else {
        return None;
    };
    let month = cached.statement.month;
    let (mut seq, mut books) = cached.newest.unwrap_or((0, Books::ZERO));
    for entry in &entries {
        if entry.seq <= seq {
            // Seen by the read that subscribed.
            continue;
        }
        if !(month.start_ms()..month.end_ms()).contains(&entry.at_ms) {
            return None;
        }
        let change = Change::between(books, entry.books_after())?;
        cached.statement.add(entry, change);
        (seq, books) = (entry.seq, entry.books_after());
    }
    if seq > 0 {
        cached.newest = Some((seq, books));
        cached.statement.closing = books;
    }
    cached.read_ms = now_ms;
    Some(cached)
}
