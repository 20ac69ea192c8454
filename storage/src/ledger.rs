//! The ledger's vocabulary and its arithmetic: entry kinds, stored entries,
//! an account's `Books`, and `apply`, the one pure function that says what
//! each kind of entry does to them. The account actor (to decide), the writer
//! (to check) and `verify` (to replay) all use `apply`, so they cannot
//! disagree. Double-entry postings are defined here too. Nothing here does
//! I/O.

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, HoldId};
use crate::money::Nanos;

/// What a ledger entry records. The amount is never negative, except for
/// `Adjustment`, whose sign says credit (+) or debit (−).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Money paid in (Stripe, signup or demo credit): balance += amount.
    Topup,
    /// Money reserved for a request: held += amount.
    Hold,
    /// More money reserved for the same request: held += amount.
    Extend,
    /// The cost of a request, taken from its hold: balance −= amount, held −= amount.
    Settle,
    /// The unused part of a hold handed back: held −= amount.
    Release,
    /// Money paid back out (Stripe refund): balance −= amount.
    Refund,
    /// An operator's signed credit or debit with a reason: balance += amount.
    Adjustment,
    /// A settlement made at restart for a hold whose request never settled,
    /// at the last checkpointed usage: like `Settle`.
    Recovered,
}

/// One entry of the append-only ledger, as stored. Entries are never updated
/// or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the ledger: 1, 2, 3, … with no gaps, assigned by the writer.
    pub seq: u64,
    pub at_ms: u64,
    pub account: AccountId,
    pub kind: EntryKind,
    /// Never negative, except for `Adjustment` (signed).
    pub amount: Nanos,
    /// The hold this entry opens, extends or closes; `None` for money in and out.
    pub hold: Option<HoldId>,
    pub request_id: Option<String>,
    /// A Stripe id (topups, refunds) or the operator's reason (adjustments).
    pub reference: Option<String>,
    /// The settlement came from tokun's own token count, not upstream usage.
    pub estimated: bool,
    pub balance_after: Nanos,
    pub held_after: Nanos,
}

/// An account's money: `balance` is all its funds including what is held,
/// `held` the part reserved by open holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Books {
    pub balance: Nanos,
    pub held: Nanos,
}

/// A book of the double-entry view. Money moves between books; every entry
/// is one move, so the postings of the whole ledger sum to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Book {
    /// An account's spendable funds (`balance − held`).
    Available(AccountId),
    /// An account's reserved funds (`held`).
    Held(AccountId),
    /// The outside world: Stripe, operators.
    External,
    /// What tokun earned from settled requests.
    Revenue,
}

/// Why an entry may not be applied or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{kind:?} amount {amount} is negative")]
    NegativeAmount { kind: EntryKind, amount: Nanos },
    #[error("{kind:?} entry overflows the account's books")]
    Overflow { kind: EntryKind },
    #[error("{kind:?} would leave held at {held}: more taken from holds than is held")]
    HeldNegative { kind: EntryKind, held: Nanos },
    #[error("{kind:?} would leave {available} available, below the floor of {floor}")]
    BelowFloor {
        kind: EntryKind,
        available: Nanos,
        floor: Nanos,
    },
    #[error(
        "{kind:?} for {account}: entry says books after are {claimed:?}, replay gives {actual:?}"
    )]
    Diverged {
        account: AccountId,
        kind: EntryKind,
        claimed: Books,
        actual: Books,
    },
    #[error("entry for unknown account {account}")]
    UnknownAccount { account: AccountId },
    #[error("{kind:?} entry needs a hold id")]
    HoldRequired { kind: EntryKind },
    #[error("{kind:?} entry must not name a hold")]
    HoldNotExpected { kind: EntryKind },
    #[error("{hold} is already open")]
    HoldAlreadyOpen { hold: HoldId },
    #[error("{kind:?} for {hold}, which is not open")]
    HoldNotOpen { hold: HoldId, kind: EntryKind },
    #[error("{hold} belongs to {owner}, not {account}")]
    HoldAccountMismatch {
        hold: HoldId,
        owner: AccountId,
        account: AccountId,
    },
    #[error("{kind:?} of {amount} for {hold} exceeds its remaining {remaining}")]
    HoldExceeded {
        hold: HoldId,
        kind: EntryKind,
        remaining: Nanos,
        amount: Nanos,
    },
    #[error("hold entry for {hold} carries no price")]
    PriceRequired { hold: HoldId },
}

/// What one entry does to an account's books. Checks only what holds for
/// every account: amounts are not negative (except `Adjustment`), nothing
/// overflows, `held` never goes below zero. The floor is a per-account
/// policy: see [`apply_within_floor`].
pub fn apply(books: Books, kind: EntryKind, amount: Nanos) -> Result<Books, LedgerError> {
    if amount.is_negative() && kind != EntryKind::Adjustment {
        return Err(LedgerError::NegativeAmount { kind, amount });
    }
    let overflow = || LedgerError::Overflow { kind };
    // `i64::MIN` has no negation, so it has no double-entry posting.
    if amount.get() == i64::MIN {
        return Err(overflow());
    }
    let Books { balance, held } = books;
    let (balance, held) = match kind {
        EntryKind::Topup | EntryKind::Adjustment => (balance.checked_add(amount), Some(held)),
        EntryKind::Refund => (balance.checked_sub(amount), Some(held)),
        EntryKind::Hold | EntryKind::Extend => (Some(balance), held.checked_add(amount)),
        EntryKind::Settle | EntryKind::Recovered => {
            (balance.checked_sub(amount), held.checked_sub(amount))
        }
        EntryKind::Release => (Some(balance), held.checked_sub(amount)),
    };
    let after = Books {
        balance: balance.ok_or_else(overflow)?,
        held: held.ok_or_else(overflow)?,
    };
    if after.held.is_negative() {
        return Err(LedgerError::HeldNegative {
            kind,
            held: after.held,
        });
    }
    // Keep `available()` exact for every reachable state.
    after.balance.checked_sub(after.held).ok_or_else(overflow)?;
    Ok(after)
}

/// `apply`, refusing any entry that lowers the available funds below
/// `floor` (0 for a prepaid account). Entries that do not lower the
/// available funds (settles, releases, topups) are always allowed. This is
/// the check the account actor makes before a hold or an extension.
pub fn apply_within_floor(
    books: Books,
    kind: EntryKind,
    amount: Nanos,
    floor: Nanos,
) -> Result<Books, LedgerError> {
    let after = apply(books, kind, amount)?;
    let available = after.available();
    if available < books.available() && available < floor {
        return Err(LedgerError::BelowFloor {
            kind,
            available,
            floor,
        });
    }
    Ok(after)
}

impl EntryKind {
    pub const ALL: [EntryKind; 8] = [
        EntryKind::Topup,
        EntryKind::Hold,
        EntryKind::Extend,
        EntryKind::Settle,
        EntryKind::Release,
        EntryKind::Refund,
        EntryKind::Adjustment,
        EntryKind::Recovered,
    ];

    /// The snake_case name used in JSON, exports and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Topup => "topup",
            EntryKind::Hold => "hold",
            EntryKind::Extend => "extend",
            EntryKind::Settle => "settle",
            EntryKind::Release => "release",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Recovered => "recovered",
        }
    }

    /// Whether an entry of this kind belongs to a hold (and must name one).
    pub const fn needs_hold(self) -> bool {
        !matches!(
            self,
            EntryKind::Topup | EntryKind::Refund | EntryKind::Adjustment
        )
    }

    /// Whether an entry of this kind takes money out of a hold, and so may
    /// close it (see `writer` for the closing rule).
    pub const fn takes_from_hold(self) -> bool {
        matches!(
            self,
            EntryKind::Settle | EntryKind::Release | EntryKind::Recovered
        )
    }
}

impl Books {
    pub const ZERO: Books = Books {
        balance: Nanos::ZERO,
        held: Nanos::ZERO,
    };

    /// Funds not reserved by any hold: `balance − held`.
    pub fn available(&self) -> Nanos {
        self.balance.saturating_sub(self.held)
    }
}

impl LedgerEntry {
    pub fn books_after(&self) -> Books {
        Books {
            balance: self.balance_after,
            held: self.held_after,
        }
    }

    /// The entry as a move between two books: `(from, −amount), (to, +amount)`.
    pub fn postings(&self) -> [(Book, i64); 2] {
        let account = self.account;
        let (from, to) = match self.kind {
            EntryKind::Topup | EntryKind::Adjustment => (Book::External, Book::Available(account)),
            EntryKind::Hold | EntryKind::Extend => (Book::Available(account), Book::Held(account)),
            EntryKind::Settle | EntryKind::Recovered => (Book::Held(account), Book::Revenue),
            EntryKind::Release => (Book::Held(account), Book::Available(account)),
            EntryKind::Refund => (Book::Available(account), Book::External),
        };
        // `apply` refuses `i64::MIN`, so the negation is exact for stored entries.
        let amount = self.amount.get();
        [(from, amount.saturating_neg()), (to, amount)]
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
