//! One account's spend per UTC day and model, for the console's dashboard,
//! kept up to date without re-reading the whole window on every page load.
//!
//! The first read of an account scans its window of the `usage` tree once
//! (decoding only `at_ms`, `model` and `cost`). Later reads scan only the
//! keys written since, found from the wall clock: a record becomes durable
//! within [`LATE_MS`] of its `at_ms` (the meter reads the clock, the account
//! actor and the ledger writer store it moments later), so every key with
//! `at_ms` before `last read − LATE_MS` has been seen; the keys seen at or
//! after that point are remembered, so none is counted twice. A record
//! stored later than that would be missed until the account's next full
//! scan ([`REBUILD_MS`] after the last, or when the window moves to a new
//! day). Nothing here writes: the ledger writer's path is untouched.
//!
//! The aggregates live in a process-wide map keyed by the store (its trees'
//! allocation, held by a `Weak` so the address cannot be reused while the
//! entry lives) and the account. Money is summed in `Nanos`, exactly.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::Deserialize;

use crate::codec::{read_u64, usage_key};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::money::Nanos;
use crate::store::{Store, Trees};

/// How long after its `at_ms` a usage record may still become durable.
pub const LATE_MS: u64 = 1_000;
/// A cached account is scanned in full again after this long.
pub const REBUILD_MS: u64 = 5 * 60 * 1_000;
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
    trees: Weak<Trees>,
    built_ms: u64,
    /// Every key with `at_ms < sealed_ms` is in `spend`.
    sealed_ms: u64,
    /// The keys in `spend` with `at_ms >= sealed_ms`.
    recent: BTreeSet<[u8; 24]>,
    spend: DailySpend,
}

type Cache = Mutex<HashMap<(usize, u64), Entry>>;

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
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
        let taken = {
            let mut cache = cache().lock().unwrap_or_else(PoisonError::into_inner);
            cache.remove(&id)
        };
        let mut entry = match taken {
            Some(entry)
                if entry.trees.upgrade().is_some()
                    && entry.spend.first_day == first_day
                    && now_ms.saturating_sub(entry.built_ms) < REBUILD_MS =>
            {
                entry
            }
            _ => Entry {
                trees: Arc::downgrade(&self.trees),
                built_ms: now_ms,
                sealed_ms: first_day.saturating_mul(MS_PER_DAY),
                recent: BTreeSet::new(),
                spend: DailySpend {
                    first_day,
                    days: BTreeMap::new(),
                },
            },
        };
        self.catch_up(account, &mut entry, now_ms)?;
        let spend = entry.spend.clone();
        let mut cache = cache().lock().unwrap_or_else(PoisonError::into_inner);
        // Entries of stores that are gone (tests open many) go with them.
        cache.retain(|_, e| e.trees.strong_count() > 0);
        cache.insert(id, entry);
        Ok(spend)
    }

    /// Adds the records stored since `entry` was last brought up to date.
    fn catch_up(
        &self,
        account: AccountId,
        entry: &mut Entry,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let start = usage_key(account.get(), entry.sealed_ms, 0);
        let end = usage_key(account.get(), u64::MAX, u64::MAX);
        for item in self.trees.usage.range(start..=end) {
            let (key, value) = item.map_err(StorageError::sled("scan usage"))?;
            let Ok(key) = <[u8; 24]>::try_from(key.as_ref()) else {
                continue;
            };
            if !entry.recent.insert(key) {
                continue;
            }
            let record: Slim<'_> =
                serde_json::from_slice(&value).map_err(|err| StorageError::Decode {
                    tree: "usage",
                    message: err.to_string(),
                })?;
            let day = entry
                .spend
                .days
                .entry(record.at_ms / MS_PER_DAY)
                .or_default();
            let cost = day.by_model.entry(record.model.into_owned()).or_default();
            *cost = cost.saturating_add(record.cost);
            day.requests += 1;
        }
        let sealed = now_ms.saturating_sub(LATE_MS).max(entry.sealed_ms);
        entry.sealed_ms = sealed;
        let boundary = usage_key(account.get(), sealed, 0);
        entry.recent = entry.recent.split_off(&boundary);
        debug_assert!(entry.recent.iter().all(|k| read_u64(k, 8) >= Some(sealed)));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
