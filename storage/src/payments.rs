//! Stripe payments beside the ledger: one `PaymentRecord` per Checkout
//! Session (or per unmatched Stripe object, `orphaned`), the marks of Stripe
//! events and refunds already processed, the reads over them, and the audit
//! `verify` runs on them. The rules for changing them are in
//! `writer/stage/payments.rs`; this file holds plain data and reads.
//!
//! Trees: `payments` (session id → record), `account_payments` (account ++
//! session id → nothing: an account's payments), `payment_intents`
//! (PaymentIntent id → session id: how a refund finds its payment) and
//! `stripe_events` (processed event or refund key → when).
//!
//! **Invariant:** a credited payment has exactly one `Topup` entry, for its
//! account, of its `paid_amount`, whose reference is its session id; the
//! `Refund` entries referencing it add up to its `debited_amount`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, read_u64};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::money::Nanos;
use crate::store::Store;

/// Where a payment is in its life. `Paid`, `PartiallyRefunded` and
/// `Refunded` are "credited": the account got `paid_amount` exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// The Checkout Session was created; nothing paid yet.
    Open,
    Paid,
    /// An asynchronous payment method failed.
    Failed,
    /// The session expired unpaid.
    Expired,
    Refunded,
    PartiallyRefunded,
    /// Stripe reported money tokun could not match to a live account (an
    /// unknown or deleted account, missing metadata, another currency):
    /// recorded for an operator, nothing credited.
    Orphaned,
}

/// One Stripe payment as tokun knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The Checkout Session id (`cs_…`); for an orphaned refund, the charge id.
    pub session_id: String,
    /// `None` only for an orphan whose account could not be read at all.
    pub account: Option<AccountId>,
    /// What the session asked for at creation (for an orphan: what Stripe reported).
    pub amount: Nanos,
    /// ISO code in lowercase, as Stripe writes it (`usd`).
    pub currency: String,
    pub status: PaymentStatus,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// What Stripe reported paid and tokun credited; zero until credited.
    pub paid_amount: Nanos,
    /// What Stripe reported refunded so far (cumulative).
    pub refunded_amount: Nanos,
    /// What `Refund` entries took from the account: at most
    /// `refunded_amount`, less when the account had already spent the money.
    pub debited_amount: Nanos,
    /// The PaymentIntent that paid the session (refunds name it).
    pub payment_intent: Option<String>,
    /// Why an orphan is one, or what else an operator should know.
    pub note: Option<String>,
}

impl PaymentStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Open => "open",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Expired => "expired",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Orphaned => "orphaned",
        }
    }

    /// Parses the names `as_str` gives.
    pub fn parse(name: &str) -> Option<PaymentStatus> {
        [
            PaymentStatus::Open,
            PaymentStatus::Paid,
            PaymentStatus::Failed,
            PaymentStatus::Expired,
            PaymentStatus::Refunded,
            PaymentStatus::PartiallyRefunded,
            PaymentStatus::Orphaned,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }

    /// Whether the account was credited for this payment.
    pub const fn is_credited(self) -> bool {
        matches!(
            self,
            PaymentStatus::Paid | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        )
    }
}

impl PaymentRecord {
    /// A session just created at Stripe, not paid yet.
    pub fn open(
        session_id: impl Into<String>,
        account: AccountId,
        amount: Nanos,
        currency: impl Into<String>,
        now_ms: u64,
    ) -> PaymentRecord {
        PaymentRecord {
            session_id: session_id.into(),
            account: Some(account),
            amount,
            currency: currency.into(),
            status: PaymentStatus::Open,
            created_ms: now_ms,
            updated_ms: now_ms,
            paid_amount: Nanos::ZERO,
            refunded_amount: Nanos::ZERO,
            debited_amount: Nanos::ZERO,
            payment_intent: None,
            note: None,
        }
    }
}

impl PaymentRecord {
    /// Money Stripe reported that tokun could not match to a live account.
    pub fn orphan(
        id: impl Into<String>,
        account: Option<AccountId>,
        amount: Nanos,
        currency: impl Into<String>,
        note: String,
        now_ms: u64,
    ) -> PaymentRecord {
        PaymentRecord {
            account,
            status: PaymentStatus::Orphaned,
            note: Some(note),
            ..PaymentRecord::open(id, AccountId::new(0), amount, currency, now_ms)
        }
    }
}

/// The `account_payments` key: account ++ session id.
pub(crate) fn account_payment_key(account: AccountId, session_id: &str) -> Vec<u8> {
    let mut key = account.to_key().to_vec();
    key.extend_from_slice(session_id.as_bytes());
    key
}

impl Store {
    pub fn payment(&self, session_id: &str) -> Result<Option<PaymentRecord>, StorageError> {
        let found = self.trees.payments.get(session_id.as_bytes());
        match found.map_err(StorageError::sled("read payments"))? {
            Some(bytes) => decode("payments", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The payment a PaymentIntent paid, if tokun credited one with it.
    pub fn payment_by_intent(
        &self,
        payment_intent: &str,
    ) -> Result<Option<PaymentRecord>, StorageError> {
        let found = self.trees.payment_intents.get(payment_intent.as_bytes());
        match found.map_err(StorageError::sled("read payment_intents"))? {
            Some(session) => self.payment(&String::from_utf8_lossy(&session)),
            None => Ok(None),
        }
    }

    /// An account's payments, newest first.
    pub fn payments_for(&self, account: AccountId) -> Result<Vec<PaymentRecord>, StorageError> {
        let mut payments = Vec::new();
        for item in self
            .trees
            .account_payments
            .scan_prefix(account.to_key())
            .keys()
        {
            let key = item.map_err(StorageError::sled("scan account payments"))?;
            let session = String::from_utf8_lossy(&key[8.min(key.len())..]).into_owned();
            payments.extend(self.payment(&session)?);
        }
        payments.sort_by_key(|p| std::cmp::Reverse(p.created_ms));
        Ok(payments)
    }

    /// Every payment with `status` (all without one), newest first, at most `limit`.
    pub fn payments(
        &self,
        status: Option<PaymentStatus>,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, StorageError> {
        let mut found = Vec::new();
        for item in self.trees.payments.iter().values() {
            let bytes = item.map_err(StorageError::sled("scan payments"))?;
            let payment: PaymentRecord = decode("payments", &bytes)?;
            if status.is_none_or(|status| payment.status == status) {
                found.push(payment);
            }
        }
        found.sort_by_key(|p| std::cmp::Reverse(p.updated_ms));
        found.truncate(limit);
        Ok(found)
    }

    /// Payments Stripe reported that tokun could not credit: for operators.
    pub fn orphaned_payments(&self) -> Result<Vec<PaymentRecord>, StorageError> {
        self.payments(Some(PaymentStatus::Orphaned), usize::MAX)
    }

    /// Whether a Stripe event id (or refund key) was already processed.
    pub fn is_processed(&self, key: &str) -> Result<bool, StorageError> {
        let found = self.trees.stripe_events.contains_key(key.as_bytes());
        found.map_err(StorageError::sled("read stripe_events"))
    }

    /// When a Stripe event id (or refund key) was processed.
    pub fn processed_at(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let found = self.trees.stripe_events.get(key.as_bytes());
        let found = found.map_err(StorageError::sled("read stripe_events"))?;
        Ok(found.and_then(|bytes| read_u64(&bytes, 0)))
    }
}

/// What the ledger says about payments, gathered while `verify` replays it:
/// per reference, the `Topup` and `Refund` entries naming it.
#[derive(Default)]
pub(crate) struct PaymentEntries {
    by_reference: HashMap<String, ReferencedMoney>,
}

#[derive(Default)]
struct ReferencedMoney {
    topups: u32,
    topped_up: i128,
    refunded: i128,
    accounts: Vec<AccountId>,
}

impl PaymentEntries {
    /// Starts from the money of the entries retention pruned.
    pub(crate) fn from_checkpoint(
        references: &std::collections::BTreeMap<String, crate::checkpoint::PrunedReference>,
    ) -> PaymentEntries {
        let by_reference = references
            .iter()
            .map(|(reference, pruned)| {
                let money = ReferencedMoney {
                    topups: pruned.topups,
                    topped_up: pruned.topped_up,
                    refunded: pruned.refunded,
                    accounts: pruned.accounts.clone(),
                };
                (reference.clone(), money)
            })
            .collect();
        PaymentEntries { by_reference }
    }

    pub(crate) fn note(&mut self, entry: &LedgerEntry) {
        let (Some(reference), EntryKind::Topup | EntryKind::Refund) =
            (&entry.reference, entry.kind)
        else {
            return;
        };
        let money = self.by_reference.entry(reference.clone()).or_default();
        if entry.kind == EntryKind::Topup {
            money.topups += 1;
            money.topped_up += i128::from(entry.amount.get());
        } else {
            money.refunded += i128::from(entry.amount.get());
        }
        if !money.accounts.contains(&entry.account) {
            money.accounts.push(entry.account);
        }
    }
}

impl Store {
    /// Checks every payment against the entries that reference it (see the
    /// module invariant). Payments of accounts written after the replay's
    /// `last_seq` are skipped: their entries were not replayed. The writer
    /// commits `balances` before the payment trees, so a payment changed
    /// after the replay shows a balance row past `last_seq`.
    pub(crate) fn verify_payments(
        &self,
        entries: &PaymentEntries,
        last_seq: u64,
        problems: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        for payment in self.payments(None, usize::MAX)? {
            let Some(account) = payment.account else {
                continue;
            };
            let moved = self
                .balance_row(account)?
                .is_some_and(|row| row.last_seq > last_seq);
            if moved {
                continue;
            }
            let empty = ReferencedMoney::default();
            let money = entries
                .by_reference
                .get(&payment.session_id)
                .unwrap_or(&empty);
            let id = &payment.session_id;
            let (topups, paid) = if payment.status.is_credited() {
                (1, i128::from(payment.paid_amount.get()))
            } else {
                (0, 0)
            };
            if money.topups != topups || money.topped_up != paid {
                problems.push(format!(
                    "payment {id} ({}): {} topup entries of {} in all, expected {topups} of {paid}",
                    payment.status.as_str(),
                    money.topups,
                    money.topped_up
                ));
            }
            if money.refunded != i128::from(payment.debited_amount.get()) {
                problems.push(format!(
                    "payment {id}: refund entries take {}, the payment says {}",
                    money.refunded, payment.debited_amount
                ));
            }
            if money.accounts.iter().any(|other| *other != account) {
                problems.push(format!(
                    "payment {id}: entries for another account than {account}"
                ));
            }
            if payment.debited_amount > payment.refunded_amount
                || payment.refunded_amount > payment.paid_amount
            {
                problems.push(format!(
                    "payment {id}: debited {} > refunded {} or refunded > paid {}",
                    payment.debited_amount, payment.refunded_amount, payment.paid_amount
                ));
            }
        }
        Ok(())
    }
}
