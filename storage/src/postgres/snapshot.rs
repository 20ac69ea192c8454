//! One snapshot: everything the store holds that Postgres does not, in ONE
//! transaction that also moves the watermark (`snapshot_state.last_seq`).
//!
//! Entries retention pruned from the store are deleted here too, and the
//! ledger checkpoint written, in the same transaction (`checkpoint.rs`).
//!
//! The cut is the store's last seq when the snapshot starts. Ledger entries
//! after the watermark up to the cut are COPied straight into
//! `ledger_entries`: the watermark row is locked (`FOR UPDATE`) and moves in
//! the same transaction, so no two snapshots can copy the same seq, and a
//! snapshot that dies half-way (crash, killed connection) leaves nothing
//! behind but a rolled-back transaction. Balances and open holds are derived
//! from those same entries, so they describe exactly the cut. Accounts, keys
//! and request metadata are mirrored as they are when read (`mirror.rs`);
//! payments are read just before the cut and checked after (`payments.rs`);
//! audit records above the highest seq Postgres has are appended (`audit.rs`).
//!
//! sled is read on blocking threads, in chunks, while the connection sends
//! the previous chunk (`copy::copy_in`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Transaction;

use super::copy::{CopyRows, copy_in};
use super::rows::{ENTRY_COLUMNS, HOLD_COLUMNS, HoldRow, entry_from, hold_from, put_entry};
use super::{PgConn, PgError, PgTarget, blocking, checkpoint, mirror, payments};
use crate::checkpoint::CheckpointState;
use crate::ids::{AccountId, HoldId};
use crate::ledger::{Books, EntryKind, LedgerEntry};
use crate::store::Store;

/// What one snapshot wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotReport {
    /// The watermark before: entries up to here were already in Postgres.
    pub from_seq: u64,
    /// The watermark now: every entry up to here is in Postgres.
    pub last_seq: u64,
    pub entries: u64,
    /// Balance rows written (accounts with entries since the last snapshot).
    pub balances: u64,
    /// Accounts and keys mirrored (all of them, every time).
    pub accounts: u64,
    pub api_keys: u64,
    /// Holds open at the cut.
    pub open_holds: u64,
    /// Request metadata rows new to Postgres.
    pub requests: u64,
    /// Stripe payments mirrored (all of them, every time).
    pub payments: u64,
    /// Processed Stripe event marks new to Postgres.
    pub stripe_events: u64,
    /// Audit records new to Postgres.
    pub audit: u64,
    /// Entries deleted from Postgres because retention pruned them from
    /// the store (`checkpoint.rs`).
    pub pruned: u64,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

/// The state at the cut, computed from the entries as they are copied.
#[derive(Default)]
pub(super) struct Cut {
    /// Accounts with entries since the watermark: books after their last
    /// entry, and its seq.
    pub(super) balances: BTreeMap<AccountId, (Books, u64)>,
    /// Holds open at the cut (loaded as of the watermark, then stepped).
    pub(super) holds: BTreeMap<HoldId, HoldRow>,
    /// Accounts with settlements (or releases) since the watermark, and the
    /// time span of those entries: where their request metadata is (`mirror`).
    pub(super) settled: BTreeMap<AccountId, (u64, u64)>,
}

/// Copies everything new in `store` to Postgres in one transaction.
pub async fn snapshot(store: &Store, conn: &mut PgConn) -> Result<SnapshotReport, PgError> {
    let started = Instant::now();
    let (client, target) = conn.parts();
    let tx = client
        .transaction()
        .await
        .map_err(target.fail("begin a snapshot"))?;
    let from_seq = locked_watermark(&tx, target).await?;
    // Payments are read before the cut: see `payments`.
    payments::stage(&tx, target, store).await?;
    let (pruned_state, pruned) = checkpoint::apply(&tx, target, store).await?;
    let through = pruned_state.checkpoint.through_seq;
    let last_seq = check_same_ledger(&tx, target, store, from_seq, through).await?;
    let mut cut = Cut::load(&tx, target).await?;
    if from_seq < through {
        cut.skip_pruned(&pruned_state, from_seq);
    }
    let start = from_seq.max(through);
    let (entries, mut cut) = copy_entries(&tx, target, store, start, last_seq, cut).await?;
    let balances = mirror::balances(&tx, target, &cut).await?;
    let open_holds = mirror::open_holds(&tx, target, store, &mut cut).await?;
    // Keys before accounts: a key seen in the scan belongs to an account
    // created before it, so the later accounts scan sees that account.
    let api_keys = mirror::api_keys(&tx, target, store).await?;
    let accounts = mirror::accounts(&tx, target, store).await?;
    let requests = mirror::requests(&tx, target, store, cut.settled).await?;
    let (payments, stripe_events) = payments::apply(&tx, target).await?;
    let audit = super::audit::snapshot(&tx, target, store).await?;
    let mut report = SnapshotReport {
        from_seq,
        last_seq,
        entries,
        balances,
        accounts,
        api_keys,
        open_holds,
        requests,
        payments,
        stripe_events,
        audit,
        pruned,
        duration: Duration::ZERO,
    };
    let rows = i64::try_from(report.rows()).unwrap_or(i64::MAX);
    let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE snapshot_state SET last_seq = $1, snapshot_at = now(), \
         last_duration_ms = $2, last_rows = $3 WHERE id = 1",
        &[&bigint("a seq", last_seq)?, &elapsed_ms, &rows],
    )
    .await
    .map_err(target.fail("move the watermark"))?;
    tx.commit()
        .await
        .map_err(target.fail("commit a snapshot"))?;
    report.duration = started.elapsed();
    Ok(report)
}

/// The watermark: every entry up to this seq is in Postgres.
pub async fn watermark(conn: &PgConn) -> Result<u64, PgError> {
    let row = conn
        .client()
        .query_one("SELECT last_seq FROM snapshot_state WHERE id = 1", &[])
        .await
        .map_err(conn.fail("read the watermark"))?;
    let last_seq: i64 = row.try_get(0).map_err(conn.fail("read the watermark"))?;
    u64::try_from(last_seq).map_err(|_| PgError::Inconsistent {
        message: format!("negative watermark {last_seq}"),
    })
}

impl SnapshotReport {
    /// Rows written to every table.
    pub fn rows(&self) -> u64 {
        self.entries
            + self.balances
            + self.accounts
            + self.api_keys
            + self.open_holds
            + self.requests
            + self.payments
            + self.stripe_events
            + self.audit
    }
}

impl Cut {
    /// The holds open as of the watermark, as the last snapshot left them.
    async fn load(tx: &Transaction<'_>, target: &PgTarget) -> Result<Cut, PgError> {
        let rows = tx
            .query(&format!("SELECT {HOLD_COLUMNS} FROM open_holds"), &[])
            .await
            .map_err(target.fail("read open_holds"))?;
        let mut cut = Cut::default();
        for row in &rows {
            let hold = hold_from(row)?;
            cut.holds.insert(hold.hold, hold);
        }
        Ok(cut)
    }

    /// Retention pruned entries after the watermark before any snapshot
    /// copied them: the cut moves to the checkpoint, where no hold is open
    /// and the accounts with entries since the watermark have the
    /// checkpoint's books. (Their request metadata is not looked for: it
    /// is as old as the entries, and its own retention covers it.)
    fn skip_pruned(&mut self, state: &CheckpointState, watermark: u64) {
        self.holds.clear();
        for (account, row) in &state.books {
            if row.last_seq > watermark {
                self.balances.insert(*account, (row.books, row.last_seq));
            }
        }
    }

    /// What one entry changes at the cut: its account's books, its hold,
    /// and where to look for request metadata.
    pub(super) fn step(&mut self, entry: &LedgerEntry) -> Result<(), PgError> {
        let account = entry.account;
        self.balances
            .insert(account, (entry.books_after(), entry.seq));
        // A request no route answered is logged with its `Release`.
        if matches!(
            entry.kind,
            EntryKind::Settle | EntryKind::Recovered | EntryKind::Release
        ) {
            let span = self
                .settled
                .entry(account)
                .or_insert((entry.at_ms, entry.at_ms));
            span.0 = span.0.min(entry.at_ms);
            span.1 = span.1.max(entry.at_ms);
        }
        let Some(hold) = entry.hold else {
            return Ok(());
        };
        if entry.kind == EntryKind::Hold {
            let opened = HoldRow {
                hold,
                account,
                amount: entry.amount,
                request_id: entry.request_id.clone(),
                opened_ms: entry.at_ms,
                checkpoint: None,
                price: None,
            };
            self.holds.insert(hold, opened);
            return Ok(());
        }
        let unknown = || PgError::Inconsistent {
            message: format!(
                "entry {} ({}) names {hold}, which was not open",
                entry.seq,
                entry.kind.as_str()
            ),
        };
        let open = self.holds.get_mut(&hold).ok_or_else(unknown)?;
        let amount = if entry.kind == EntryKind::Extend {
            open.amount.checked_add(entry.amount)
        } else {
            open.amount.checked_sub(entry.amount)
        };
        open.amount = amount
            .filter(|left| !left.is_negative())
            .ok_or_else(unknown)?;
        if open.amount.is_zero() {
            self.holds.remove(&hold);
        }
        Ok(())
    }
}

/// Reads the watermark and locks its row until the transaction ends, so
/// concurrent snapshots into the same schema take turns.
async fn locked_watermark(tx: &Transaction<'_>, target: &PgTarget) -> Result<u64, PgError> {
    let row = tx
        .query_opt(
            "SELECT last_seq FROM snapshot_state WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(target.fail("read the watermark"))?;
    let last_seq: i64 = match row {
        Some(row) => row.try_get(0).map_err(target.fail("read the watermark"))?,
        None => {
            return Err(PgError::Inconsistent {
                message: "snapshot_state has no row".into(),
            });
        }
    };
    u64::try_from(last_seq).map_err(|_| PgError::Inconsistent {
        message: format!("negative watermark {last_seq}"),
    })
}

/// The store's last seq, after checking that Postgres holds a snapshot of
/// this ledger: not ahead of it, and with the same entry at the watermark
/// (unless retention pruned it: `through` is the store's checkpoint).
async fn check_same_ledger(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
    watermark: u64,
    through: u64,
) -> Result<u64, PgError> {
    let store = store.clone();
    let (last_seq, ours) = blocking(move || {
        let last_seq = store.last_seq()?;
        let ours = match watermark {
            seq if seq <= through => None,
            seq => store.entries(seq).next().transpose()?,
        };
        Ok((last_seq, ours))
    })
    .await?;
    if last_seq < watermark {
        return Err(PgError::Ahead {
            watermark,
            last_seq,
        });
    }
    if watermark > through {
        let row = tx
            .query_opt(
                &format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE seq = $1"),
                &[&bigint("a seq", watermark)?],
            )
            .await
            .map_err(target.fail("read the entry at the watermark"))?;
        let theirs = row.as_ref().map(entry_from).transpose()?;
        if ours.filter(|entry| entry.seq == watermark) != theirs {
            return Err(PgError::Diverged { seq: watermark });
        }
    }
    Ok(last_seq)
}

/// COPies entries `from_seq + 1 ..= last_seq` and steps the cut with them.
async fn copy_entries(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
    from_seq: u64,
    last_seq: u64,
    cut: Cut,
) -> Result<(u64, Cut), PgError> {
    if last_seq == from_seq {
        return Ok((0, cut));
    }
    let store = store.clone();
    let statement = format!("COPY ledger_entries ({ENTRY_COLUMNS}) FROM STDIN (FORMAT binary)");
    copy_in(tx, target, &statement, move |emit| {
        let mut cut = cut;
        let mut rows = CopyRows::new();
        let mut next = from_seq + 1;
        for entry in store.entries(next) {
            let entry = entry?;
            if entry.seq > last_seq {
                break;
            }
            if entry.seq != next {
                return Err(PgError::Inconsistent {
                    message: format!("the store skips from seq {next} to {}", entry.seq),
                });
            }
            next += 1;
            cut.step(&entry)?;
            put_entry(&mut rows, &entry)?;
            if !rows.flush_if_full(emit) {
                return Err(stopped());
            }
        }
        if next != last_seq + 1 {
            return Err(PgError::Inconsistent {
                message: format!("the store ends at seq {} before {last_seq}", next - 1),
            });
        }
        rows.finish(emit);
        Ok(cut)
    })
    .await
}

/// The COPY went away (its error is what the caller reports).
pub(super) fn stopped() -> PgError {
    PgError::Blocking {
        message: "the COPY stopped taking rows".into(),
    }
}

/// A `u64` as a `bigint` parameter.
pub(super) fn bigint(what: &'static str, value: u64) -> Result<i64, PgError> {
    i64::try_from(value).map_err(|_| PgError::OutOfRange { what, value })
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}
