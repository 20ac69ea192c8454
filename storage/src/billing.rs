//! Billing reads for the console: an account's ledger entries newest
//! first, a period's opening and closing books with every entry inside it
//! and what each one changed (the monthly statement), and the profiles that
//! asked for a low-balance alert, with the one flag the alert flips
//! atomically so it goes out once per fall. Nothing here moves money.
//!
//! A period's books come from the stored ones, walking back: every entry
//! stores its account's books after it, so what an entry changed is its
//! books minus the books after the entry before it, and
//! `closing = now − changes after the period`, `opening = closing − changes
//! inside it`. That is exact to the nano by construction, the closing of one
//! month is the opening of the next, and a statement only reads the entries
//! since its month began (not the account's whole history).

use crate::codec::{decode, pair_key};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::ledger::{Books, LedgerEntry};
use crate::money::Nanos;
use crate::people::Profile;
use crate::store::{Store, indexed_entry, unpack_seqs};

/// What one entry did to its account's books: the books after it minus the
/// books after the account's entry before it (zero books before the first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub balance: Nanos,
    pub held: Nanos,
}

/// An account's books at the start and at the end of a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub opening: Books,
    pub closing: Books,
    /// How many entries fall inside the period.
    pub entries: usize,
    /// The account's newest entry when the period was read (seq, books
    /// after it): where a reader following the writer's entry feed
    /// (`crate::feed`) carries on from.
    pub newest: Option<(u64, Books)>,
}

/// An account that asked for a low-balance alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertWatch {
    pub account: AccountId,
    pub threshold: Nanos,
    pub alerted: bool,
}

/// How far an entry's time may trail the time of an entry sequenced before
/// it. Entries are stamped by the account actor just before the writer
/// sequences them, so time order and seq order agree to within a batch;
/// the walk back goes this far past a period's start before it stops, so a
/// stamp a little out of order still lands in its own period.
const CLOCK_SLACK_MS: u64 = 10 * 60 * 1000;

impl Change {
    pub const ZERO: Change = Change {
        balance: Nanos::ZERO,
        held: Nanos::ZERO,
    };

    /// `after − before`; `None` only past `i64`.
    pub fn between(before: Books, after: Books) -> Option<Change> {
        Some(Change {
            balance: after.balance.checked_sub(before.balance)?,
            held: after.held.checked_sub(before.held)?,
        })
    }

    pub fn checked_add(self, other: Change) -> Option<Change> {
        Some(Change {
            balance: self.balance.checked_add(other.balance)?,
            held: self.held.checked_add(other.held)?,
        })
    }

    /// `books − self`: the books before a change, from those after it.
    fn undo(self, books: Books) -> Option<Books> {
        Some(Books {
            balance: books.balance.checked_sub(self.balance)?,
            held: books.held.checked_sub(self.held)?,
        })
    }
}

impl Store {
    /// One account's ledger entries with `seq < before_seq`, newest first,
    /// reading only as far back as the caller iterates.
    pub fn entries_newest_first(
        &self,
        account: AccountId,
        before_seq: u64,
    ) -> impl Iterator<Item = Result<LedgerEntry, StorageError>> + use<> {
        let entries = self.trees.entries.clone();
        let a = account.get();
        // Index keys are (account, first seq of a batch): every batch that
        // may hold a seq below `before_seq` starts below it.
        let seqs = self
            .trees
            .account_entries
            .range(pair_key(a, 0)..pair_key(a, before_seq))
            .values()
            .rev()
            .flat_map(move |chunk| match chunk {
                Ok(packed) => {
                    let mut seqs: Vec<Result<u64, StorageError>> = unpack_seqs(&packed)
                        .filter(|seq| *seq < before_seq)
                        .map(Ok)
                        .collect();
                    seqs.reverse();
                    seqs
                }
                Err(err) => vec![Err(StorageError::sled("scan account entries")(err))],
            });
        seqs.map(move |seq| {
            let seq = seq?;
            indexed_entry(&entries, seq)
        })
    }

    /// The account's books at `from_ms` and at `to_ms` (entries with
    /// `from_ms <= at_ms < to_ms` are inside), calling `each` with every
    /// entry inside and its [`Change`], newest first. Reads the entries
    /// from the period's start to now, not the ones before.
    pub fn period(
        &self,
        account: AccountId,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(&LedgerEntry, Change),
    ) -> Result<Period, StorageError> {
        let overflow = || StorageError::Decode {
            tree: "entries",
            message: format!("{account}'s books overflow between two entries"),
        };
        let stop_below = from_ms.saturating_sub(CLOCK_SLACK_MS);
        let mut walk = self.entries_newest_first(account, u64::MAX);
        let mut current = walk.next().transpose()?;
        let newest = current.as_ref().map(|e| (e.seq, e.books_after()));
        let now = newest.map_or(Books::ZERO, |(_, books)| books);
        let (mut later, mut inside, mut count) = (Change::ZERO, Change::ZERO, 0);
        while let Some(entry) = current {
            if entry.at_ms < stop_below {
                break;
            }
            let older = walk.next().transpose()?;
            let before = older.as_ref().map_or(Books::ZERO, LedgerEntry::books_after);
            let change = Change::between(before, entry.books_after()).ok_or_else(overflow)?;
            if entry.at_ms >= to_ms {
                later = later.checked_add(change).ok_or_else(overflow)?;
            } else if entry.at_ms >= from_ms {
                inside = inside.checked_add(change).ok_or_else(overflow)?;
                count += 1;
                each(&entry, change);
            }
            current = older;
        }
        let closing = later.undo(now).ok_or_else(overflow)?;
        let opening = inside.undo(closing).ok_or_else(overflow)?;
        Ok(Period {
            opening,
            closing,
            entries: count,
            newest,
        })
    }

    /// Every account with a low-balance alert set, in id order. A scan of
    /// the profiles: one small record per person.
    pub fn low_balance_watches(&self) -> Result<Vec<AlertWatch>, StorageError> {
        let mut watches = Vec::new();
        for item in self.trees.profiles.iter() {
            let (key, bytes) = item.map_err(StorageError::sled("scan profiles"))?;
            let Some(id) = crate::codec::read_u64(&key, 0) else {
                continue;
            };
            let profile: Profile = decode("profiles", &bytes)?;
            if let Some(threshold) = profile.low_balance {
                watches.push(AlertWatch {
                    account: AccountId::new(id),
                    threshold,
                    alerted: profile.low_balance_alerted,
                });
            }
        }
        Ok(watches)
    }

    /// Sets the account's "alerted" flag to `alerted`, atomically; whether
    /// it changed. Two checks racing to send the same alert: only the one
    /// that flips it to `true` sends.
    pub fn set_low_balance_alerted(
        &self,
        account: AccountId,
        alerted: bool,
    ) -> Result<bool, StorageError> {
        let mut changed = false;
        self.trees
            .profiles
            .fetch_and_update(account.to_key(), |old| {
                changed = false;
                let bytes = old?;
                let Ok(mut profile) = serde_json::from_slice::<Profile>(bytes) else {
                    return Some(bytes.to_vec());
                };
                if profile.low_balance_alerted == alerted {
                    return Some(bytes.to_vec());
                }
                profile.low_balance_alerted = alerted;
                match serde_json::to_vec(&profile) {
                    Ok(updated) => {
                        changed = true;
                        Some(updated)
                    }
                    Err(_) => Some(bytes.to_vec()),
                }
            })
            .map_err(StorageError::sled("update profiles"))?;
        Ok(changed)
    }
}

#[cfg(test)]
#[path = "billing_tests.rs"]
mod tests;
