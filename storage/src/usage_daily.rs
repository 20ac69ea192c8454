//! One account's spend per UTC day and model, for the console's dashboard,
//! kept up to date without reading the account's records back.
//!
//! The first read of an account follows it on the writer's usage feed
//! ([`crate::feed`]) and then scans its window of the `usage` tree once
//! (decoding only `at_ms`, `model` and `cost`). Later reads add what the
//! writer pushed since, so a page load costs the same however fast the
//! account is writing. The first takes may repeat records the scan already
//! saw (written between the subscription and the scan); the scan remembers
//! the keys dated within [`LATE_MS`] of it and skips them for [`REPEAT_MS`].
//! That relies on a record becoming durable within `LATE_MS` of its
//! `at_ms` (the meter reads the clock, the account actor and the ledger
//! writer store it moments later). A lost feed (idle, overflowed) means
//! a full scan again. Nothing here writes.
//!
//! The aggregates live in a process-wide map keyed by the store (its trees'
//! allocation, held by a `Weak` so the address cannot be reused while the
//! entry lives) and the account. Money is summed in `Nanos`, exactly.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::Deserialize;

use crate::codec::usage_key;
use crate::error::StorageError;
use crate::feed::Taken;
use crate::ids::AccountId;
use crate::money::Nanos;
use crate::store::{Store, Trees};

/// How long after its `at_ms` a usage record may still become durable.
pub const LATE_MS: u64 = 5_000;
/// How long after a scan the feed may still repeat a record it saw.
pub const REPEAT_MS: u64 = 60_000;
const MS_PER_DAY: u64 = 86_400_000;

/// One UTC day's spend: per model (the model asked for), and requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaySpend {
    pub by_model: HashMap<String, Nanos>,
    pub requests: u64,
}

/// An account's spend per day from `first_day` (days since 1970-01-01) on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DailySpend {
    pub first_day: u64,
    /// Only days with requests.
    pub days: BTreeMap<u64, DaySpend>,
}

/// The fields the aggregate needs; serde skips the rest of the record.
#[derive(Deserialize)]
struct Slim<'a> {
    at_ms: u64,
    #[serde(borrow)]
    model: Cow<'a, str>,
    cost: Nanos,
}

struct Entry {
    /// When the window was scanned.
    scanned_ms: u64,
    /// Keys the scan saw dated within `LATE_MS` of it: the feed may repeat
    /// them until `scanned_ms + REPEAT_MS`.
    repeats: HashSet<[u8; 24]>,
    spend: DailySpend,
}

/// One account's entry, locked for a whole read: two page loads of the same
/// account must not both take from its feed (each would miss what the
/// other took).
type Slot = Arc<Mutex<Option<Entry>>>;
type Cache = Mutex<HashMap<(usize, u64), (Weak<Trees>, Slot)>>;

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl DailySpend {
    fn add(&mut self, at_ms: u64, model: &str, cost: Nanos) {
        let day = self.days.entry(at_ms / MS_PER_DAY).or_default();
        match day.by_model.get_mut(model) {
            Some(sum) => *sum = sum.saturating_add(cost),
            None => {
                day.by_model.insert(model.to_owned(), cost);
            }
        }
        day.requests += 1;
    }
}

impl Store {
    /// `account`'s spend per UTC day and model from `first_day` through
    /// `now_ms`'s day (records dated later are counted on their own days).
    /// Cheap after the first call: see the module docs.
    pub fn daily_spend(
        &self,
        account: AccountId,
        first_day: u64,
        now_ms: u64,
    ) -> Result<DailySpend, StorageError> {
        let id = (Arc::as_ptr(&self.trees) as usize, account.get());
        let slot = {
            let mut cache = cache().lock().unwrap_or_else(PoisonError::into_inner);
            // Entries of stores that are gone (tests open many) go with them.
            cache.retain(|_, (trees, _)| trees.strong_count() > 0);
            let (_, slot) = cache
                .entry(id)
                .or_insert_with(|| (Arc::downgrade(&self.trees), Slot::default()));
            Arc::clone(slot)
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = slot
            .take()
            .filter(|entry| entry.spend.first_day <= first_day);
        let entry = match kept.and_then(|entry| self.catch_up(account, entry, first_day, now_ms)) {
            Some(entry) => entry,
            None => self.scan_window(account, first_day, now_ms)?,
        };
        let spend = entry.spend.clone();
        *slot = Some(entry);
        Ok(spend)
    }

    /// Adds what the feed brought since the last read and drops the days
    /// before `first_day`; `None` when the feed lost records.
    fn catch_up(
        &self,
        account: AccountId,
        mut entry: Entry,
        first_day: u64,
        now_ms: u64,
    ) -> Option<Entry> {
        let Taken::Items(items) = self.feeds().usage.take(account) else {
            return None;
        };
        for item in items {
            if !entry.repeats.remove(&item.key) {
                entry.spend.add(item.at_ms, &item.model, item.cost);
            }
        }
        if now_ms.saturating_sub(entry.scanned_ms) >= REPEAT_MS {
            entry.repeats = HashSet::new();
        }
        entry.spend.days = entry.spend.days.split_off(&first_day);
        entry.spend.first_day = first_day;
        Some(entry)
    }

    /// Follows the account on the feed, then reads its window whole.
    fn scan_window(
        &self,
        account: AccountId,
        first_day: u64,
        now_ms: u64,
    ) -> Result<Entry, StorageError> {
        self.feeds().usage.subscribe(account);
        let mut entry = Entry {
            scanned_ms: now_ms,
            repeats: HashSet::new(),
            spend: DailySpend {
                first_day,
                days: BTreeMap::new(),
            },
        };
        let late = now_ms.saturating_sub(LATE_MS);
        let start = usage_key(account.get(), first_day.saturating_mul(MS_PER_DAY), 0);
        let end = usage_key(account.get(), u64::MAX, u64::MAX);
        for item in self.trees.usage.range(start..=end) {
            let (key, value) = item.map_err(StorageError::sled("scan usage"))?;
            let record: Slim<'_> =
                serde_json::from_slice(&value).map_err(|err| StorageError::Decode {
                    tree: "usage",
                    message: err.to_string(),
                })?;
            if record.at_ms >= late
                && let Ok(key) = <[u8; 24]>::try_from(key.as_ref())
            {
                entry.repeats.insert(key);
            }
            entry.spend.add(record.at_ms, &record.model, record.cost);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests;
