//! An account's money as the account actor keeps it in memory, and the
//! decisions it makes: how much to hold, whether to extend, what to charge.
//!
//! Pure and synchronous, so the rules are unit- and property-tested without
//! an actor. Every method returns the ledger entries it implies; each entry's
//! `balance_after`/`held_after` comes from `ledger::apply_within_floor`, the
//! same function `verify` replays, so memory and ledger cannot disagree.

use std::collections::HashMap;

use tokun_storage::Nanos;
use tokun_storage::NewEntry;
use tokun_storage::Price;
use tokun_storage::ledger::{Books, EntryKind, LedgerError, apply_within_floor};
use tokun_storage::{AccountId, HoldId, KeyId, LimitReset};

/// What a request asks to reserve before its upstream call.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub request_id: String,
    pub key: Option<KeyId>,
    /// The key's spend limit, if it has one.
    pub key_limit: Option<KeyLimit>,
    pub price: Price,
    pub prompt_tokens: u64,
    /// Output tokens held up front (and per extension).
    pub increment_tokens: u64,
    /// The most output tokens the request may produce (client's `max_tokens`
    /// or the configured default).
    pub max_output_tokens: u64,
    /// Usage (prompt, completion) to record with the hold for crash
    /// recovery, written in the same batch: `(0, 0)` for an answer the client
    /// only receives once it is settled, so a hold a crash leaves open was
    /// never delivered and costs nothing.
    pub checkpoint: Option<(u64, u64)>,
}

/// A key's spend limit and the period it counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimit {
    pub amount: Nanos,
    pub reset: LimitReset,
}

/// A granted reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub hold: HoldId,
    pub amount: Nanos,
    /// Output tokens covered by the hold so far.
    pub allowance_tokens: u64,
    /// The `max_tokens` to send upstream: what the funds can pay for at most.
    pub max_tokens: u64,
    pub available_after: Nanos,
}

/// The result of settling a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// What was charged.
    pub cost: Nanos,
    /// Cost the account could not cover (upstream used more than was held and
    /// the balance was at its floor); never charged, reported for operators.
    pub shortfall: Nanos,
    pub balance_after: Nanos,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("insufficient credits: {available} available, {needed} needed")]
    Insufficient { available: Nanos, needed: Nanos },
    #[error("the key's spend limit is reached")]
    KeyLimit { limit: Nanos },
    #[error("unknown hold {0}")]
    UnknownHold(HoldId),
    #[error("the account is disabled")]
    Disabled,
    #[error("unknown account")]
    UnknownAccount,
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    #[error("ledger rule: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the ledger is unavailable")]
    LedgerUnavailable,
    /// The account actor did not answer in time (it or the ledger is overloaded).
    #[error("the account did not answer in time")]
    Busy,
    /// The account actor could not be started or stopped mid-call.
    #[error("the account actor failed")]
    ActorFailed,
}

#[derive(Debug, Clone)]
struct HoldState {
    remaining: Nanos,
    price: Price,
    request_id: String,
    key: Option<KeyId>,
    /// The key's spend limit when the hold was placed: extensions keep to it.
    key_limit: Option<Nanos>,
    allowance_tokens: u64,
    max_tokens: u64,
    increment_tokens: u64,
}

/// One account's books, open holds and per-key spend.
#[derive(Debug, Clone)]
pub struct AccountBook {
    account: AccountId,
    floor: Nanos,
    books: Books,
    holds: HashMap<HoldId, HoldState>,
    /// Settled spend per key in its current limit period, plus what its
    /// open holds reserve.
    key_committed: HashMap<KeyId, KeySpend>,
}

/// What a key has committed since `period_start_ms` (0 for keys whose
/// limit never starts over, and for keys without a limit).
#[derive(Debug, Clone, Copy, Default)]
struct KeySpend {
    committed: Nanos,
    period_start_ms: u64,
}

impl AccountBook {
    pub fn new(account: AccountId, floor: Nanos, books: Books) -> Self {
        Self {
            account,
            floor,
            books,
            holds: HashMap::new(),
            key_committed: HashMap::new(),
        }
    }

    pub fn books(&self) -> Books {
        self.books
    }

    pub fn open_holds(&self) -> usize {
        self.holds.len()
    }

    /// What holds may still take: `balance − held − floor`, never negative.
    pub fn spendable(&self) -> Nanos {
        let spendable = self.books.available().saturating_sub(self.floor);
        if spendable.is_negative() {
            Nanos::ZERO
        } else {
            spendable
        }
    }

    /// Replaces the books with the store's, after the ledger refused an
    /// entry this book had already applied (see `payment`). Holds are kept:
    /// only the refused entry's effect on the books is undone.
    pub fn restore_books(&mut self, books: Books) {
        self.books = books;
    }

    /// The most one new hold may take of what a key with a spend limit has
    /// `left`: half of it, shared with the key's holds already open. Holds
    /// count against the limit in full (it is never exceeded), so without a
    /// share a few concurrent streams would hold a small limit whole and
    /// refuse the rest long before it is spent; with it, each holds its first
    /// tokens and extends as it goes.
    fn key_share(&self, key: KeyId, left: Nanos) -> Nanos {
        let open = self.holds.values().filter(|h| h.key == Some(key)).count();
        let parts = i64::try_from(2 * (open + 1)).unwrap_or(i64::MAX);
        Nanos::new(left.get() / parts)
    }

    /// Seeds a key's settled spend in the period that began at
    /// `period_start_ms` (loaded at start from usage records).
    pub fn set_key_spent(&mut self, key: KeyId, spent: Nanos, period_start_ms: u64) {
        self.key_committed.insert(
            key,
            KeySpend {
                committed: spent,
                period_start_ms,
            },
        );
    }

    /// What `key` has committed (settled plus held) in its current period.
    pub fn key_committed(&self, key: KeyId) -> Nanos {
        self.key_committed
            .get(&key)
            .map_or(Nanos::ZERO, |spend| spend.committed)
    }

    /// Starts a key's count over when `now_ms` is in a later period than
    /// the one counted: what its open holds reserve carries over (they
    /// settle in the new period), the settled spend does not.
    fn roll_key_period(&mut self, key: KeyId, reset: LimitReset, now_ms: u64) {
        let start = reset.period_start_ms(now_ms);
        let current = self.key_committed.get(&key).map(|s| s.period_start_ms);
        if current.is_some_and(|at| at >= start) {
            return;
        }
        let committed = self
            .holds
            .values()
            .filter(|h| h.key == Some(key))
            .fold(Nanos::ZERO, |sum, h| sum.saturating_add(h.remaining));
        self.key_committed.insert(
            key,
            KeySpend {
                committed,
                period_start_ms: start,
            },
        );
    }

    /// Adopts a hold that is open in the store (after a restart of this actor).
    pub fn adopt_hold(&mut self, hold: HoldId, remaining: Nanos, price: Price, request_id: String) {
        self.holds.insert(
            hold,
            HoldState {
                remaining,
                price,
                request_id,
                key: None,
                key_limit: None,
                allowance_tokens: u64::MAX,
                max_tokens: u64::MAX,
                increment_tokens: 0,
            },
        );
    }

    pub fn reserve(
        &mut self,
        hold: HoldId,
        req: &ReserveRequest,
        now_ms: u64,
    ) -> Result<(Reservation, NewEntry), AccountError> {
        let mut budget = self.spendable();
        let input = req.price.input_cost(req.prompt_tokens);
        let minimal = input.saturating_add(req.price.output_cost(1));
        // What one hold may take of a key's spend limit (see `key_share`).
        let mut share = None;
        if let (
            Some(key),
            Some(KeyLimit {
                amount: limit,
                reset,
            }),
        ) = (req.key, req.key_limit)
        {
            self.roll_key_period(key, reset, now_ms);
            let left = limit.saturating_sub(self.key_committed(key));
            if left < minimal {
                return Err(AccountError::KeyLimit { limit });
            }
            budget = budget.min(left);
            share = Some(self.key_share(key, left).max(minimal));
        }
        if budget < minimal {
            let wanted = req.increment_tokens.min(req.max_output_tokens);
            let needed = input.saturating_add(req.price.output_cost(wanted));
            return Err(AccountError::Insufficient {
                available: self.spendable(),
                needed,
            });
        }
        let affordable = req
            .price
            .output_tokens_affordable(budget.saturating_sub(input));
        let mut max_tokens = req.max_output_tokens.min(affordable).max(1);
        let mut allowance_tokens = max_tokens.min(req.increment_tokens.max(1));
        if let Some(share) = share {
            let shared = req
                .price
                .output_tokens_affordable(share.saturating_sub(input))
                .max(1);
            if allowance_tokens > shared {
                // A whole answer cannot be extended: its cap shrinks with its hold.
                if allowance_tokens == max_tokens {
                    max_tokens = shared;
                }
                allowance_tokens = shared;
            }
        }
        let amount = input.saturating_add(req.price.output_cost(allowance_tokens));
        let books = apply_within_floor(self.books, EntryKind::Hold, amount, self.floor)?;
        self.books = books;
        if let Some(key) = req.key {
            let spend = self.key_committed.entry(key).or_default();
            spend.committed = spend.committed.saturating_add(amount);
        }
        self.holds.insert(
            hold,
            HoldState {
                remaining: amount,
                price: req.price,
                request_id: req.request_id.clone(),
                key: req.key,
                key_limit: req.key_limit.map(|limit| limit.amount),
                allowance_tokens,
                max_tokens,
                increment_tokens: req.increment_tokens.max(1),
            },
        );
        let entry = NewEntry::new(now_ms, self.account, EntryKind::Hold, amount, books)
            .with_hold(hold)
            .with_request_id(req.request_id.clone())
            .with_price(req.price);
        let reservation = Reservation {
            hold,
            amount,
            allowance_tokens,
            max_tokens,
            available_after: self.spendable(),
        };
        Ok((reservation, entry))
    }

    /// Holds another increment of output tokens; returns the new allowance.
    /// Refused (`Insufficient`) when not even one more token is affordable.
    pub fn extend(&mut self, hold: HoldId, now_ms: u64) -> Result<(u64, NewEntry), AccountError> {
        let spendable = self.spendable();
        let state = self
            .holds
            .get(&hold)
            .ok_or(AccountError::UnknownHold(hold))?;
        let wanted = state
            .increment_tokens
            .min(state.max_tokens.saturating_sub(state.allowance_tokens));
        let mut tokens = wanted.min(state.price.output_tokens_affordable(spendable));
        if tokens == 0 {
            return Err(AccountError::Insufficient {
                available: spendable,
                needed: state.price.output_cost(1),
            });
        }
        if let (Some(key), Some(limit)) = (state.key, state.key_limit) {
            // An extension keeps to the key's limit, and to a share of what
            // is left of it, like a new hold.
            let left = limit.saturating_sub(self.key_committed(key));
            let within = state.price.output_tokens_affordable(left);
            if within == 0 {
                return Err(AccountError::KeyLimit { limit });
            }
            let share = state
                .price
                .output_tokens_affordable(self.key_share(key, left))
                .max(1);
            tokens = tokens.min(within).min(share);
        }
        let amount = state.price.output_cost(tokens);
        let books = apply_within_floor(self.books, EntryKind::Extend, amount, self.floor)?;
        self.books = books;
        let state = self
            .holds
            .get_mut(&hold)
            .ok_or(AccountError::UnknownHold(hold))?;
        state.remaining = state.remaining.saturating_add(amount);
        state.allowance_tokens += tokens;
        if let Some(key) = state.key {
            let spend = self.key_committed.entry(key).or_default();
            spend.committed = spend.committed.saturating_add(amount);
        }
        let entry = NewEntry::new(now_ms, self.account, EntryKind::Extend, amount, books)
            .with_hold(hold)
            .with_request_id(state.request_id.clone());
        Ok((state.allowance_tokens, entry))
    }

    /// Charges `usage` against the hold and releases the rest. `kind` is
    /// `Settle` normally, `Recovered` at restart.
    pub fn settle(
        &mut self,
        hold: HoldId,
        usage: (u64, u64, u64),
        estimated: bool,
        kind: EntryKind,
        now_ms: u64,
    ) -> Result<(Settled, Vec<NewEntry>), AccountError> {
        let state = self
            .holds
            .get(&hold)
            .ok_or(AccountError::UnknownHold(hold))?;
        let (prompt, cached, completion) = usage;
        let cost = state.price.cost(prompt, cached, completion);
        self.close(hold, cost, estimated, kind, now_ms)
    }

    /// Charges `cost` to the hold (taking any excess from what is spendable,
    /// never below the floor), releases the rest and forgets the hold.
    fn close(
        &mut self,
        hold: HoldId,
        cost: Nanos,
        estimated: bool,
        kind: EntryKind,
        now_ms: u64,
    ) -> Result<(Settled, Vec<NewEntry>), AccountError> {
        let state = self
            .holds
            .remove(&hold)
            .ok_or(AccountError::UnknownHold(hold))?;
        let mut entries = Vec::with_capacity(3);
        let mut remaining = state.remaining;
        if cost > remaining {
            // Upstream used more than was held: take the difference from what
            // is spendable, never below the floor.
            let extra = cost.saturating_sub(remaining).min(self.spendable());
            if extra.get() > 0 {
                self.books = apply_within_floor(self.books, EntryKind::Extend, extra, self.floor)?;
                remaining = remaining.saturating_add(extra);
                entries.push(self.entry(EntryKind::Extend, extra, hold, &state.request_id, now_ms));
            }
        }
        let charged = cost.min(remaining);
        self.books = apply_within_floor(self.books, kind, charged, self.floor)?;
        let mut settle = self.entry(kind, charged, hold, &state.request_id, now_ms);
        if estimated {
            settle = settle.estimated();
        }
        entries.push(settle);
        let release = remaining.saturating_sub(charged);
        if release.get() > 0 {
            self.books = apply_within_floor(self.books, EntryKind::Release, release, self.floor)?;
            entries.push(self.entry(EntryKind::Release, release, hold, &state.request_id, now_ms));
        }
        if let Some(key) = state.key {
            let spend = self.key_committed.entry(key).or_default();
            spend.committed = spend
                .committed
                .saturating_sub(state.remaining.saturating_sub(charged));
        }
        let settled = Settled {
            cost: charged,
            shortfall: cost.saturating_sub(charged),
            balance_after: self.books.balance,
        };
        Ok((settled, entries))
    }

    /// Settles a hold its request never settled (the process died): at the
    /// checkpointed usage if there is one, else the whole hold, as `Recovered`.
    /// Never charges more than was held.
    pub fn recover(
        &mut self,
        hold: HoldId,
        checkpoint: Option<(u64, u64)>,
        now_ms: u64,
    ) -> Result<(Settled, Vec<NewEntry>), AccountError> {
        let state = self
            .holds
            .get(&hold)
            .ok_or(AccountError::UnknownHold(hold))?;
        let cost = match checkpoint {
            Some((prompt, completion)) => {
                state.price.cost(prompt, 0, completion).min(state.remaining)
            }
            None => state.remaining,
        };
        self.close(hold, cost, true, EntryKind::Recovered, now_ms)
    }

    /// Releases a whole hold: the request was refused before any token.
    pub fn release(&mut self, hold: HoldId, now_ms: u64) -> Result<NewEntry, AccountError> {
        let state = self
            .holds
            .remove(&hold)
            .ok_or(AccountError::UnknownHold(hold))?;
        self.books =
            apply_within_floor(self.books, EntryKind::Release, state.remaining, self.floor)?;
        if let Some(key) = state.key {
            let spend = self.key_committed.entry(key).or_default();
            spend.committed = spend.committed.saturating_sub(state.remaining);
        }
        Ok(self.entry(
            EntryKind::Release,
            state.remaining,
            hold,
            &state.request_id,
            now_ms,
        ))
    }

    /// Money in or out that is not a request: `Topup`, `Adjustment` (signed),
    /// `Refund`. Debits never take the spendable funds below the floor,
    /// except a `Refund`, which is clamped to what is there.
    pub fn transfer(
        &mut self,
        kind: EntryKind,
        amount: Nanos,
        reference: &str,
        now_ms: u64,
    ) -> Result<NewEntry, AccountError> {
        let amount = match kind {
            EntryKind::Refund => amount.min(self.spendable()),
            EntryKind::Topup | EntryKind::Adjustment => amount,
            _ => {
                return Err(AccountError::InvalidAmount(format!(
                    "{} is not a transfer",
                    kind.as_str()
                )));
            }
        };
        let books = apply_within_floor(self.books, kind, amount, self.floor)?;
        self.books = books;
        Ok(NewEntry::new(now_ms, self.account, kind, amount, books).with_reference(reference))
    }

    fn entry(
        &self,
        kind: EntryKind,
        amount: Nanos,
        hold: HoldId,
        request_id: &str,
        now_ms: u64,
    ) -> NewEntry {
        NewEntry::new(now_ms, self.account, kind, amount, self.books)
            .with_hold(hold)
            .with_request_id(request_id)
    }
}

#[cfg(test)]
#[path = "book_periods.rs"]
mod periods;
