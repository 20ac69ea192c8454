//! Staging rules for Stripe payments: what makes crediting exactly-once
//! inside the writer, whatever the callers do.
//!
//! - A payment is credited (becomes `paid`) at most once: marking a
//!   credited payment `paid` again is refused, even when both submissions
//!   fall into the same batch (reads see the batch's changes first).
//! - A payment becoming `paid` must carry its `Topup` entry in the same
//!   submission: one entry, for its account, of exactly `paid_amount`,
//!   referencing the session id; and a `Topup` referencing a known payment
//!   must be that payment's credit.
//! - A credited payment stays credited, keeps its account and paid amount,
//!   and its refunded and debited amounts never go down.
//! - A Stripe event id or refund key is marked processed at most once.
//!
//! A refused submission leaves nothing behind: its entry, its payment change
//! and its marks go together or not at all.

use super::{Stage, layered};
use crate::error::StorageError;
use crate::ledger::EntryKind;
use crate::ops::WriteOp;
use crate::payments::{PaymentRecord, PaymentStatus};

impl Stage<'_> {
    pub(super) fn put_payment(
        &mut self,
        op_index: usize,
        payment: &PaymentRecord,
    ) -> Result<(), StorageError> {
        let conflict = |reason| StorageError::PaymentConflict {
            op_index,
            session: payment.session_id.clone(),
            reason,
        };
        check_amounts(payment).map_err(conflict)?;
        let orphan = payment.status == PaymentStatus::Orphaned;
        match payment.account {
            None if !orphan => return Err(conflict("names no account")),
            Some(account) if !orphan && !self.account_exists(account)? => {
                return Err(StorageError::UnknownAccount { op_index, account });
            }
            _ => {}
        }
        let status = payment.status;
        match self.payment(&payment.session_id)? {
            None if status.is_credited() && status != PaymentStatus::Paid => {
                return Err(conflict("has no credit to refund"));
            }
            None => {}
            Some(before) => {
                if before.account.is_some() && before.account != payment.account {
                    return Err(conflict("cannot move to another account"));
                }
                check_transition(&before, payment).map_err(conflict)?;
            }
        }
        let credited_before = self
            .payment(&payment.session_id)?
            .is_some_and(|before| before.status.is_credited());
        if status == PaymentStatus::Paid && !credited_before {
            self.credits.push((op_index, payment.session_id.clone()));
        }
        self.scratch
            .payments
            .insert(payment.session_id.clone(), payment.clone());
        Ok(())
    }

    pub(super) fn mark_processed(
        &mut self,
        op_index: usize,
        key: &str,
        at_ms: u64,
    ) -> Result<(), StorageError> {
        if key.is_empty() || self.processed(key)? {
            return Err(StorageError::AlreadyProcessed {
                op_index,
                key: key.to_owned(),
            });
        }
        self.scratch.processed.insert(key.to_owned(), at_ms);
        Ok(())
    }

    /// Every credit of this submission has exactly its `Topup` entry, and
    /// every `Topup` naming a payment is that payment's credit.
    pub(super) fn check_credits(&self, ops: &[WriteOp]) -> Result<(), StorageError> {
        for (op_index, session) in &self.credits {
            let conflict = |reason| StorageError::PaymentConflict {
                op_index: *op_index,
                session: session.clone(),
                reason,
            };
            let payment = self
                .scratch
                .payments
                .get(session)
                .ok_or_else(|| conflict("vanished while staging"))?;
            let topups: Vec<_> = self
                .scratch
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::Topup && e.reference.as_ref() == Some(session))
                .collect();
            let matches = match topups.as_slice() {
                [topup] => {
                    Some(topup.account) == payment.account && topup.amount == payment.paid_amount
                }
                _ => false,
            };
            if !matches {
                return Err(conflict(
                    "is marked paid without exactly one matching topup entry",
                ));
            }
        }
        for (op_index, op) in ops.iter().enumerate() {
            let WriteOp::Entry(entry) = op else {
                continue;
            };
            let Some(reference) = &entry.reference else {
                continue;
            };
            if entry.kind != EntryKind::Topup
                || self.credits.iter().any(|(_, session)| session == reference)
            {
                continue;
            }
            if self.payment(reference)?.is_some() {
                return Err(StorageError::PaymentConflict {
                    op_index,
                    session: reference.clone(),
                    reason: "gets a topup entry without being marked paid",
                });
            }
        }
        Ok(())
    }

    fn payment(&self, session: &str) -> Result<Option<PaymentRecord>, StorageError> {
        match layered(&self.scratch.payments, &self.batch.payments, session) {
            Some(payment) => Ok(Some(payment.clone())),
            None => self.store.payment(session),
        }
    }

    fn processed(&self, key: &str) -> Result<bool, StorageError> {
        if layered(&self.scratch.processed, &self.batch.processed, key).is_some() {
            return Ok(true);
        }
        self.store.is_processed(key)
    }
}

/// The amounts agree with the status: nothing negative, debited ≤ refunded
/// ≤ paid, nothing paid unless credited, and the refund states say how much
/// was refunded.
fn check_amounts(payment: &PaymentRecord) -> Result<(), &'static str> {
    let (paid, refunded, debited) = (
        payment.paid_amount,
        payment.refunded_amount,
        payment.debited_amount,
    );
    if payment.amount.is_negative() || paid.is_negative() || debited.is_negative() {
        return Err("has a negative amount");
    }
    if debited > refunded || refunded > paid {
        return Err("has more debited than refunded, or more refunded than paid");
    }
    let consistent = match payment.status {
        PaymentStatus::Paid => paid.get() > 0 && refunded.is_zero(),
        PaymentStatus::PartiallyRefunded => refunded.get() > 0 && refunded < paid,
        PaymentStatus::Refunded => paid.get() > 0 && refunded == paid,
        _ => paid.is_zero(),
    };
    if consistent {
        Ok(())
    } else {
        Err("has amounts that do not fit its status")
    }
}

/// What may follow `before`: a credited payment stays credited with the
/// same paid amount and refunds that only grow; it is never paid again.
fn check_transition(before: &PaymentRecord, after: &PaymentRecord) -> Result<(), &'static str> {
    if !before.status.is_credited() {
        return if after.status.is_credited() && after.status != PaymentStatus::Paid {
            Err("has no credit to refund")
        } else {
            Ok(())
        };
    }
    if after.status == PaymentStatus::Paid {
        return Err("is already paid");
    }
    if !after.status.is_credited() {
        return Err("is credited and cannot leave that state");
    }
    if after.paid_amount != before.paid_amount {
        return Err("cannot change its paid amount");
    }
    if after.refunded_amount < before.refunded_amount
        || after.debited_amount < before.debited_amount
    {
        return Err("cannot take back a refund");
    }
    Ok(())
}
