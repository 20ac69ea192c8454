//! Stripe payments in the account actor: crediting a paid Checkout Session,
//! marking one failed or expired, and debiting a refund — each exactly once.
//!
//! The edge verifies and parses Stripe's events; it knows nothing of books.
//! The actor decides. A payment message is handled to completion before the
//! next message of the account: check what the store says was already
//! processed, apply the entry to the book, send the entry, the payment
//! record and the event marks as ONE submission, and wait until it is
//! durable. This is the one place the actor waits on a flush: payments are
//! rare, and while one is in flight no other entry may be computed from
//! books that hold a credit the ledger might still refuse.
//!
//! Exactly-once rests on two layers. The actor checks first (the store is
//! current: every earlier payment of this account was awaited), so
//! duplicates are answered `Duplicate` without writing anything. The
//! writer's payment rules are the backstop: a session credited twice or an
//! event marked twice is refused whole. After a refused (or failed)
//! submission the book is restored from the store behind a ledger barrier,
//! and the caller gets an error, so Stripe retries and the retry finds the
//! truth.

use tokun_storage::ledger::EntryKind;
use tokun_storage::{Nanos, PaymentRecord, PaymentStatus, StorageError, WriteOp};

use super::{AccountError, AccountState};

/// What Stripe reported, as the edge parsed it. Amounts are Stripe's, never
/// the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// `checkout.session.completed` (paid) or `async_payment_succeeded`.
    Credit(PaidSession),
    /// `async_payment_failed` (`Failed`) or `expired` (`Expired`).
    Close {
        session: String,
        event: String,
        status: PaymentStatus,
        amount: Nanos,
        currency: String,
    },
    /// `charge.refunded` for a payment of this account.
    Refund(StripeRefund),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidSession {
    pub session: String,
    pub event: String,
    /// What Stripe reports paid (`amount_total`).
    pub amount: Nanos,
    pub currency: String,
    pub payment_intent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeRefund {
    pub session: String,
    pub event: String,
    pub charge: String,
    /// Stripe's cumulative refunded amount of the charge (`amount_refunded`).
    pub refunded_total: Nanos,
}

/// What a payment message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Credited {
        amount: Nanos,
        balance: Nanos,
    },
    /// `debited` is what the account still had of `refunded`; the rest is
    /// noted on the payment for an operator.
    Refunded {
        refunded: Nanos,
        debited: Nanos,
        balance: Nanos,
    },
    Marked(PaymentStatus),
    /// Already processed: nothing changed.
    Duplicate,
    /// The account is deleted: recorded for an operator, nothing credited.
    Orphaned {
        reason: &'static str,
    },
    /// Nothing to do, and nothing written (say, an expiry after a payment).
    Ignored {
        reason: &'static str,
    },
}

/// What a command turned into: ops to write (empty: nothing) and the outcome.
struct Plan {
    ops: Vec<WriteOp>,
    outcome: PaymentOutcome,
    /// Whether the book was changed (and so must be restored if the write fails).
    book_changed: bool,
}

impl Plan {
    fn nothing(outcome: PaymentOutcome) -> Plan {
        Plan {
            ops: Vec::new(),
            outcome,
            book_changed: false,
        }
    }
}

impl AccountState {
    /// Handles one payment command to completion (see the module docs).
    pub(super) async fn payment(
        &mut self,
        command: PaymentCommand,
        now: u64,
    ) -> Result<PaymentOutcome, AccountError> {
        let plan = self
            .plan_payment(command, now)
            .map_err(|_| AccountError::LedgerUnavailable)??;
        if plan.ops.is_empty() {
            return Ok(plan.outcome);
        }
        match self.ledger.append(plan.ops).await {
            Ok(_) => Ok(plan.outcome),
            Err(error) => {
                tracing::warn!(account = %self.record.id, %error, "payment submission not written");
                if plan.book_changed {
                    self.restore_books().await;
                }
                Err(AccountError::LedgerUnavailable)
            }
        }
    }

    /// The book applied an entry the ledger did not take: wait until
    /// everything sent before is durable, then take the books from the store.
    async fn restore_books(&mut self) {
        let _ = self.ledger.barrier().await;
        match self.store.books(self.record.id) {
            Ok(books) => self.book.restore_books(books),
            Err(error) => {
                tracing::error!(account = %self.record.id, %error, "cannot reload the books");
            }
        }
    }

    fn plan_payment(
        &mut self,
        command: PaymentCommand,
        now: u64,
    ) -> Result<Result<Plan, AccountError>, StorageError> {
        match command {
            PaymentCommand::Credit(paid) => self.plan_credit(paid, now),
            PaymentCommand::Close {
                session,
                event,
                status,
                amount,
                currency,
            } => {
                if self.store.is_processed(&event)? {
                    return Ok(Ok(Plan::nothing(PaymentOutcome::Duplicate)));
                }
                let before = self.store.payment(&session)?;
                if before.as_ref().is_some_and(|p| p.status.is_credited()) {
                    let reason = "the payment was already credited";
                    return Ok(Ok(Plan::nothing(PaymentOutcome::Ignored { reason })));
                }
                if before
                    .as_ref()
                    .is_some_and(|p| p.account != Some(self.record.id))
                {
                    let reason = "the session belongs to another account";
                    return Ok(Ok(Plan::nothing(PaymentOutcome::Ignored { reason })));
                }
                let mut record = before.unwrap_or_else(|| {
                    PaymentRecord::open(&session, self.record.id, amount, currency, now)
                });
                record.status = status;
                record.updated_ms = now;
                let ops = vec![WriteOp::PutPayment(record), mark(event, now)];
                Ok(Ok(Plan {
                    ops,
                    outcome: PaymentOutcome::Marked(status),
                    book_changed: false,
                }))
            }
            PaymentCommand::Refund(refund) => self.plan_refund(refund, now),
        }
    }

    fn plan_credit(
        &mut self,
        paid: PaidSession,
        now: u64,
    ) -> Result<Result<Plan, AccountError>, StorageError> {
        if self.store.is_processed(&paid.event)? {
            return Ok(Ok(Plan::nothing(PaymentOutcome::Duplicate)));
        }
        let before = self.store.payment(&paid.session)?;
        if before.as_ref().is_some_and(|p| p.status.is_credited()) {
            return Ok(Ok(Plan::nothing(PaymentOutcome::Duplicate)));
        }
        if before
            .as_ref()
            .is_some_and(|p| p.account != Some(self.record.id))
        {
            let reason = "the session belongs to another account";
            return Ok(Ok(Plan::nothing(PaymentOutcome::Ignored { reason })));
        }
        if paid.amount.get() <= 0 {
            let message = format!("a paid session of {} cannot be credited", paid.amount);
            return Ok(Err(AccountError::InvalidAmount(message)));
        }
        let mut record = before.unwrap_or_else(|| {
            let (session, account) = (&paid.session, self.record.id);
            PaymentRecord::open(session, account, paid.amount, &paid.currency, now)
        });
        record.updated_ms = now;
        record.payment_intent = paid.payment_intent.clone().or(record.payment_intent);
        if self.record.deleted_ms.is_some() {
            let reason = "the account is deleted";
            record.status = PaymentStatus::Orphaned;
            record.amount = paid.amount;
            record.note = Some(format!("Stripe reported {} paid; {reason}", paid.amount));
            let ops = vec![WriteOp::PutPayment(record), mark(paid.event, now)];
            return Ok(Ok(Plan {
                ops,
                outcome: PaymentOutcome::Orphaned { reason },
                book_changed: false,
            }));
        }
        if record.amount != paid.amount {
            record.note = Some(format!(
                "the session asked for {}, Stripe reported {} paid",
                record.amount, paid.amount
            ));
        }
        let entry = match self
            .book
            .transfer(EntryKind::Topup, paid.amount, &paid.session, now)
        {
            Ok(entry) => entry,
            Err(error) => return Ok(Err(error)),
        };
        let balance = entry.balance_after;
        record.status = PaymentStatus::Paid;
        record.paid_amount = paid.amount;
        let ops = vec![
            WriteOp::Entry(entry),
            WriteOp::PutPayment(record),
            mark(paid.event, now),
        ];
        Ok(Ok(Plan {
            ops,
            outcome: PaymentOutcome::Credited {
                amount: paid.amount,
                balance,
            },
            book_changed: true,
        }))
    }

    fn plan_refund(
        &mut self,
        refund: StripeRefund,
        now: u64,
    ) -> Result<Result<Plan, AccountError>, StorageError> {
        if self.store.is_processed(&refund.event)? {
            return Ok(Ok(Plan::nothing(PaymentOutcome::Duplicate)));
        }
        let Some(mut record) = self
            .store
            .payment(&refund.session)?
            .filter(|p| p.status.is_credited() && p.account == Some(self.record.id))
        else {
            let reason = "no credited payment of this account to refund";
            return Ok(Ok(Plan::nothing(PaymentOutcome::Ignored { reason })));
        };
        // Stripe's total, never more than was credited.
        let total = refund.refunded_total.min(record.paid_amount);
        let new = total.saturating_sub(record.refunded_amount);
        let key = format!("refund:{}:{}", refund.charge, total.get());
        if new.get() <= 0 || self.store.is_processed(&key)? {
            return Ok(Ok(Plan::nothing(PaymentOutcome::Duplicate)));
        }
        // The book clamps a refund to what the account can still spend: the
        // account ends at its floor and is blocked until topped up.
        let entry = match self
            .book
            .transfer(EntryKind::Refund, new, &refund.session, now)
        {
            Ok(entry) => entry,
            Err(error) => return Ok(Err(error)),
        };
        let debited = entry.amount;
        let balance = entry.balance_after;
        record.refunded_amount = total;
        record.debited_amount = record.debited_amount.saturating_add(debited);
        record.status = if total == record.paid_amount {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        };
        record.updated_ms = now;
        let unrecovered = record.refunded_amount.saturating_sub(record.debited_amount);
        if unrecovered.get() > 0 {
            record.note = Some(format!(
                "refunds of {} exceeded what the account had: {unrecovered} not recovered",
                record.refunded_amount
            ));
        }
        let mut ops = Vec::with_capacity(4);
        if debited.get() > 0 {
            ops.push(WriteOp::Entry(entry));
        }
        ops.extend([
            WriteOp::PutPayment(record),
            mark(refund.event, now),
            mark(key, now),
        ]);
        Ok(Ok(Plan {
            ops,
            outcome: PaymentOutcome::Refunded {
                refunded: new,
                debited,
                balance,
            },
            book_changed: debited.get() > 0,
        }))
    }
}

fn mark(key: String, at_ms: u64) -> WriteOp {
    WriteOp::MarkProcessed { key, at_ms }
}

#[cfg(test)]
#[path = "payment_tests.rs"]
mod tests;
