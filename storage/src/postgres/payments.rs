//! Stripe payments and processed-event marks, in a snapshot and in a
//! restore.
//!
//! Snapshot: both are read BEFORE the cut is fixed. A sled transaction is
//! atomic for readers, so a payment seen credited has its `Topup` entry
//! (same submission, same batch) at or before the cut. A payment can still
//! move on between that read and the cut (a refund), so once the entries
//! are in, every payment is checked against the entries that reference it —
//! the check `verify` makes — and a mismatch fails the snapshot, to be
//! retried; a committed snapshot is always one a restore can replay.
//!
//! Restore: the writer only accepts a payment becoming `paid` together with
//! its `Topup` entry, so a credited payment is put, as it was when paid,
//! in the submission that replays that entry; final states (refunds,
//! unpaid, orphaned) and the marks follow the entries.

use std::collections::HashMap;

use tokio_postgres::{Row, Transaction};

use super::copy::CopyRows;
use super::mirror::{into_temp, mirror};
use super::snapshot::stopped;
use super::{PgError, PgTarget};
use crate::codec::{decode, read_u64};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::money::Nanos;
use crate::ops::WriteOp;
use crate::payments::{PaymentRecord, PaymentStatus};
use crate::store::Store;

const PAYMENT_COLUMNS: &str = "id, account_id, amount_nanos, currency, status, created_ms, \
     updated_ms, paid_nanos, refunded_nanos, debited_nanos, payment_intent, note";
const EVENT_COLUMNS: &str = "key, processed_ms";

/// Payments whose entries up to the cut (with the money of those retention
/// pruned, `checkpoint_references`) disagree with them (see module docs).
const CHECK: &str = "SELECT p.id FROM snap_payments p CROSS JOIN LATERAL ( \
       SELECT count(*) FILTER (WHERE e.kind = 'topup') AS topups, \
              coalesce(sum(e.amount_nanos) FILTER (WHERE e.kind = 'topup'), 0) AS paid, \
              coalesce(sum(e.amount_nanos) FILTER (WHERE e.kind = 'refund'), 0) AS debited \
       FROM ledger_entries e WHERE e.reference = p.id AND e.kind IN ('topup', 'refund')) m \
     LEFT JOIN checkpoint_references c ON c.reference = p.id \
     WHERE p.account_id IS NOT NULL AND \
       (m.debited + coalesce(c.refunded_nanos, 0) <> p.debited_nanos OR \
       CASE WHEN p.status IN ('paid', 'partially_refunded', 'refunded') \
            THEN m.topups + coalesce(c.topups, 0) <> 1 \
              OR m.paid + coalesce(c.topped_up_nanos, 0) <> p.paid_nanos \
            ELSE m.topups + coalesce(c.topups, 0) <> 0 END) \
     LIMIT 1";

/// Snapshot, before the cut: every payment and mark into temporary tables.
pub(super) async fn stage(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
) -> Result<(), PgError> {
    let tree = store.trees.payments.clone();
    into_temp(tx, target, "payments", PAYMENT_COLUMNS, move |emit| {
        let mut copy = CopyRows::new();
        for item in tree.iter().values() {
            let value = item.map_err(StorageError::sled("scan payments"))?;
            put_payment(&mut copy, &decode("payments", &value)?)?;
            if !copy.flush_if_full(emit) {
                return Err(stopped());
            }
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    let tree = store.trees.stripe_events.clone();
    into_temp(tx, target, "stripe_events", EVENT_COLUMNS, move |emit| {
        let mut copy = CopyRows::new();
        for item in tree.iter() {
            let (key, at) = item.map_err(StorageError::sled("scan stripe_events"))?;
            copy.row(2).bytes(&key)?;
            copy.uint8("a time", read_u64(&at, 0).unwrap_or(0))?;
            if !copy.flush_if_full(emit) {
                return Err(stopped());
            }
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    Ok(())
}

/// Snapshot, once the entries are in: checks the staged payments against
/// them, mirrors `payments` and adds new marks. Returns both row counts.
pub(super) async fn apply(tx: &Transaction<'_>, target: &PgTarget) -> Result<(u64, u64), PgError> {
    let mismatch = tx
        .query_opt(CHECK, &[])
        .await
        .map_err(target.fail("check payments"))?;
    if let Some(row) = mismatch {
        let id: String = row.try_get(0).map_err(target.fail("check payments"))?;
        return Err(PgError::Inconsistent {
            message: format!(
                "payment {id} does not match its entries (it changed during the snapshot?)"
            ),
        });
    }
    mirror(tx, target, "payments", "id", PAYMENT_COLUMNS).await?;
    let payments = tx
        .query_one("SELECT count(*) FROM snap_payments", &[])
        .await
        .and_then(|row| row.try_get::<_, i64>(0))
        .map_err(target.fail("count payments"))?;
    let marks = tx
        .execute(
            &format!(
                "INSERT INTO stripe_events ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} \
                 FROM snap_stripe_events ON CONFLICT DO NOTHING"
            ),
            &[],
        )
        .await
        .map_err(target.fail("insert stripe_events"))?;
    Ok((u64::try_from(payments).unwrap_or(0), marks))
}

/// A snapshot's payments and marks, for a restore.
pub(super) struct Restored {
    /// Credited payments by session id: put when their `Topup` is replayed.
    credited: HashMap<String, PaymentRecord>,
    payments: Vec<PaymentRecord>,
    marks: Vec<(String, u64)>,
}

impl Restored {
    pub(super) async fn load(tx: &Transaction<'_>, target: &PgTarget) -> Result<Restored, PgError> {
        let rows = tx
            .query(
                &format!("SELECT {PAYMENT_COLUMNS} FROM payments ORDER BY id"),
                &[],
            )
            .await
            .map_err(target.fail("read payments"))?;
        let payments = rows
            .iter()
            .map(payment_from)
            .collect::<Result<Vec<_>, _>>()?;
        let credited = payments
            .iter()
            .filter(|p| p.status.is_credited() && p.account.is_some())
            .map(|p| (p.session_id.clone(), p.clone()))
            .collect();
        let rows = tx
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM stripe_events ORDER BY key"),
                &[],
            )
            .await
            .map_err(target.fail("read stripe_events"))?;
        let marks = rows
            .iter()
            .map(|row| {
                let key: String = row.try_get(0).map_err(target.fail("read stripe_events"))?;
                let at: i64 = row.try_get(1).map_err(target.fail("read stripe_events"))?;
                Ok((key, u64::try_from(at).unwrap_or(0)))
            })
            .collect::<Result<Vec<_>, PgError>>()?;
        Ok(Restored {
            credited,
            payments,
            marks,
        })
    }

    pub(super) fn len(&self) -> (u64, u64) {
        (self.payments.len() as u64, self.marks.len() as u64)
    }

    /// The payment `entry` credits, as it was when it became paid.
    pub(super) fn credit(&self, entry: &LedgerEntry) -> Option<WriteOp> {
        if entry.kind != EntryKind::Topup {
            return None;
        }
        let payment = self.credited.get(entry.reference.as_deref()?)?;
        Some(WriteOp::PutPayment(PaymentRecord {
            status: PaymentStatus::Paid,
            refunded_amount: Nanos::ZERO,
            debited_amount: Nanos::ZERO,
            ..payment.clone()
        }))
    }

    /// The credited payments whose `Topup` retention pruned, as they were
    /// when credited: a restore installs them with the checkpoint, since
    /// the entry that would carry them is gone.
    pub(super) fn pruned_credits(
        &self,
        references: &std::collections::BTreeMap<String, crate::checkpoint::PrunedReference>,
    ) -> Vec<PaymentRecord> {
        self.credited
            .values()
            .filter(|p| references.get(&p.session_id).is_some_and(|r| r.topups > 0))
            .map(|payment| PaymentRecord {
                status: PaymentStatus::Paid,
                refunded_amount: Nanos::ZERO,
                debited_amount: Nanos::ZERO,
                ..payment.clone()
            })
            .collect()
    }

    /// What follows the entries: every payment's final state (a `paid` one
    /// was already put with its entry) and every mark.
    pub(super) fn after_entries(&self) -> Vec<WriteOp> {
        let payments = self
            .payments
            .iter()
            .filter(|p| {
                !(p.status == PaymentStatus::Paid && self.credited.contains_key(&p.session_id))
            })
            .map(|p| WriteOp::PutPayment(p.clone()));
        let marks = self
            .marks
            .iter()
            .map(|(key, at_ms)| WriteOp::MarkProcessed {
                key: key.clone(),
                at_ms: *at_ms,
            });
        payments.chain(marks).collect()
    }
}

fn put_payment(copy: &mut CopyRows, payment: &PaymentRecord) -> Result<(), PgError> {
    copy.row(12).text(&payment.session_id)?;
    copy.opt_uint8("an account id", payment.account.map(AccountId::get))?;
    copy.int8(payment.amount.get());
    copy.text(&payment.currency)?
        .text(payment.status.as_str())?;
    copy.uint8("a time", payment.created_ms)?;
    copy.uint8("a time", payment.updated_ms)?;
    copy.int8(payment.paid_amount.get())
        .int8(payment.refunded_amount.get())
        .int8(payment.debited_amount.get());
    copy.opt_text(payment.payment_intent.as_deref())?;
    copy.opt_text(payment.note.as_deref())?;
    Ok(())
}

fn payment_from(row: &Row) -> Result<PaymentRecord, PgError> {
    let bad = |err: tokio_postgres::Error| PgError::Inconsistent {
        message: format!("a payments row: {err}"),
    };
    let unsigned = |value: i64| {
        u64::try_from(value).map_err(|_| PgError::Inconsistent {
            message: format!("a payments row has a negative value {value}"),
        })
    };
    let status: String = row.try_get(4).map_err(bad)?;
    let account: Option<i64> = row.try_get(1).map_err(bad)?;
    Ok(PaymentRecord {
        session_id: row.try_get(0).map_err(bad)?,
        account: account.map(unsigned).transpose()?.map(AccountId::new),
        amount: Nanos::new(row.try_get(2).map_err(bad)?),
        currency: row.try_get(3).map_err(bad)?,
        status: PaymentStatus::parse(&status).ok_or_else(|| PgError::Inconsistent {
            message: format!("unknown payment status {status:?}"),
        })?,
        created_ms: unsigned(row.try_get(5).map_err(bad)?)?,
        updated_ms: unsigned(row.try_get(6).map_err(bad)?)?,
        paid_amount: Nanos::new(row.try_get(7).map_err(bad)?),
        refunded_amount: Nanos::new(row.try_get(8).map_err(bad)?),
        debited_amount: Nanos::new(row.try_get(9).map_err(bad)?),
        payment_intent: row.try_get(10).map_err(bad)?,
        note: row.try_get(11).map_err(bad)?,
    })
}
