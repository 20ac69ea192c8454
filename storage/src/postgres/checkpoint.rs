//! The ledger checkpoint in Postgres: retention's promise covers every
//! copy, so entries the store pruned are deleted from `ledger_entries` too,
//! in the snapshot's transaction, and the checkpoint that replaces them is
//! written beside them (`ledger_checkpoint`, `checkpoint_balances`,
//! `checkpoint_references`) for a restore to start from.
//!
//! Only what changed since Postgres's own checkpoint is written: account
//! books and references whose last pruned entry is newer than it. Money
//! beyond `bigint` (the Revenue and External totals, a reference's sums)
//! is `numeric`, passed as text.

use std::collections::BTreeMap;

use tokio_postgres::{GenericClient, Transaction};

use super::copy::CopyRows;
use super::mirror::into_temp;
use super::snapshot::{bigint, stopped};
use super::{PgError, PgTarget, blocking};
use crate::checkpoint::{CheckpointState, LedgerCheckpoint, PrunedReference};
use crate::ids::AccountId;
use crate::ledger::Books;
use crate::money::Nanos;
use crate::records::BalanceRow;
use crate::store::Store;

const BOOKS_COLUMNS: &str = "account_id, balance_nanos, held_nanos, last_seq";

/// Brings Postgres's checkpoint up to the store's: deletes the entries it
/// pruned, writes what changed. Returns the store's checkpoint (what the
/// rest of the snapshot starts after) and the entries deleted.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
) -> Result<(CheckpointState, u64), PgError> {
    let store = store.clone();
    let state = blocking(move || Ok(store.checkpoint_state()?)).await?;
    let theirs = through_seq(tx, target).await?;
    let ours = state.checkpoint.through_seq;
    if ours < theirs {
        return Err(PgError::Inconsistent {
            message: format!(
                "postgres pruned through seq {theirs}, this store only through {ours}"
            ),
        });
    }
    if ours == theirs {
        return Ok((state, 0));
    }
    let deleted = tx
        .execute(
            "DELETE FROM ledger_entries WHERE seq <= $1",
            &[&bigint("a seq", ours)?],
        )
        .await
        .map_err(target.fail("delete pruned entries"))?;
    put_checkpoint(tx, target, &state.checkpoint).await?;
    put_books(tx, target, &state.books, theirs).await?;
    put_references(tx, target, &state.references, theirs).await?;
    Ok((state, deleted))
}

/// Postgres's checkpoint (0: nothing pruned there). Any client: the
/// snapshot's transaction, or a restore's.
pub(super) async fn through_seq(
    client: &impl GenericClient,
    target: &PgTarget,
) -> Result<u64, PgError> {
    let row = client
        .query_opt(
            "SELECT through_seq FROM ledger_checkpoint WHERE id = 1",
            &[],
        )
        .await
        .map_err(target.fail("read the ledger checkpoint"))?;
    let Some(row) = row else { return Ok(0) };
    let seq: i64 = row
        .try_get(0)
        .map_err(target.fail("read the ledger checkpoint"))?;
    unsigned(seq)
}

/// The whole checkpoint, for a restore; `None` when nothing was pruned.
pub(super) async fn load(
    tx: &Transaction<'_>,
    target: &PgTarget,
) -> Result<Option<CheckpointState>, PgError> {
    let fail = target.fail("read the ledger checkpoint");
    let row = tx
        .query_opt(
            "SELECT through_seq, through_at_ms, revenue_nanos::text, external_nanos::text, \
             max_hold_id FROM ledger_checkpoint WHERE id = 1",
            &[],
        )
        .await
        .map_err(fail)?;
    let Some(row) = row else { return Ok(None) };
    let get_i64 = |index| row.try_get::<_, i64>(index).map_err(bad_row);
    let get_text = |index| row.try_get::<_, String>(index).map_err(bad_row);
    let checkpoint = LedgerCheckpoint {
        through_seq: unsigned(get_i64(0)?)?,
        through_at_ms: unsigned(get_i64(1)?)?,
        revenue: wide(&get_text(2)?)?,
        external: wide(&get_text(3)?)?,
        max_hold: unsigned(get_i64(4)?)?,
    };
    let mut state = CheckpointState {
        checkpoint,
        ..CheckpointState::default()
    };
    let books = tx
        .query(
            &format!("SELECT {BOOKS_COLUMNS} FROM checkpoint_balances"),
            &[],
        )
        .await
        .map_err(target.fail("read checkpoint_balances"))?;
    for row in &books {
        let get = |index| row.try_get::<_, i64>(index).map_err(bad_row);
        let books = Books {
            balance: Nanos::new(get(1)?),
            held: Nanos::new(get(2)?),
        };
        let last_seq = unsigned(get(3)?)?;
        let account = AccountId::new(unsigned(get(0)?)?);
        state.books.insert(account, BalanceRow { books, last_seq });
    }
    let references = tx
        .query(
            "SELECT reference, topups, topped_up_nanos::text, refunded_nanos::text, \
             account_ids, last_seq FROM checkpoint_references",
            &[],
        )
        .await
        .map_err(target.fail("read checkpoint_references"))?;
    for row in &references {
        let topups: i32 = row.try_get(1).map_err(bad_row)?;
        let accounts: Vec<i64> = row.try_get(4).map_err(bad_row)?;
        let money = PrunedReference {
            topups: u32::try_from(topups).map_err(|_| inconsistent("negative topups"))?,
            topped_up: wide(&row.try_get::<_, String>(2).map_err(bad_row)?)?,
            refunded: wide(&row.try_get::<_, String>(3).map_err(bad_row)?)?,
            accounts: accounts
                .into_iter()
                .map(|id| unsigned(id).map(AccountId::new))
                .collect::<Result<_, _>>()?,
            last_seq: unsigned(row.try_get(5).map_err(bad_row)?)?,
        };
        let reference: String = row.try_get(0).map_err(bad_row)?;
        state.references.insert(reference, money);
    }
    Ok(Some(state))
}

async fn put_checkpoint(
    tx: &Transaction<'_>,
    target: &PgTarget,
    checkpoint: &LedgerCheckpoint,
) -> Result<(), PgError> {
    tx.execute(
        "INSERT INTO ledger_checkpoint (id, through_seq, through_at_ms, revenue_nanos, \
         external_nanos, max_hold_id) VALUES (1, $1, $2, $3::text::numeric, $4::text::numeric, $5) \
         ON CONFLICT (id) DO UPDATE SET through_seq = excluded.through_seq, \
         through_at_ms = excluded.through_at_ms, revenue_nanos = excluded.revenue_nanos, \
         external_nanos = excluded.external_nanos, max_hold_id = excluded.max_hold_id",
        &[
            &bigint("a seq", checkpoint.through_seq)?,
            &bigint("a time", checkpoint.through_at_ms)?,
            &checkpoint.revenue.to_string(),
            &checkpoint.external.to_string(),
            &bigint("a hold id", checkpoint.max_hold)?,
        ],
    )
    .await
    .map_err(target.fail("write the ledger checkpoint"))?;
    Ok(())
}

/// Account books whose last pruned entry is after `since`, by COPY (a
/// first prune can cover every account).
async fn put_books(
    tx: &Transaction<'_>,
    target: &PgTarget,
    books: &BTreeMap<AccountId, BalanceRow>,
    since: u64,
) -> Result<(), PgError> {
    let rows: Vec<(AccountId, BalanceRow)> = books
        .iter()
        .filter(|(_, row)| row.last_seq > since)
        .map(|(account, row)| (*account, *row))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    into_temp(
        tx,
        target,
        "checkpoint_balances",
        BOOKS_COLUMNS,
        move |emit| {
            let mut copy = CopyRows::new();
            for (account, row) in rows {
                copy.row(4).uint8("an account id", account.get())?;
                copy.int8(row.books.balance.get())
                    .int8(row.books.held.get());
                copy.uint8("a seq", row.last_seq)?;
                if !copy.flush_if_full(emit) {
                    return Err(stopped());
                }
            }
            copy.finish(emit);
            Ok(())
        },
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO checkpoint_balances ({BOOKS_COLUMNS}) SELECT {BOOKS_COLUMNS} \
             FROM snap_checkpoint_balances ON CONFLICT (account_id) DO UPDATE SET \
             balance_nanos = excluded.balance_nanos, held_nanos = excluded.held_nanos, \
             last_seq = excluded.last_seq"
        ),
        &[],
    )
    .await
    .map_err(target.fail("write checkpoint_balances"))?;
    Ok(())
}

/// References whose last pruned entry is after `since`: few (top-ups and
/// refunds), one statement each.
async fn put_references(
    tx: &Transaction<'_>,
    target: &PgTarget,
    references: &BTreeMap<String, PrunedReference>,
    since: u64,
) -> Result<(), PgError> {
    let statement = tx
        .prepare(
            "INSERT INTO checkpoint_references (reference, topups, topped_up_nanos, \
             refunded_nanos, account_ids, last_seq) \
             VALUES ($1, $2, $3::text::numeric, $4::text::numeric, $5, $6) \
             ON CONFLICT (reference) DO UPDATE SET topups = excluded.topups, \
             topped_up_nanos = excluded.topped_up_nanos, \
             refunded_nanos = excluded.refunded_nanos, \
             account_ids = excluded.account_ids, last_seq = excluded.last_seq",
        )
        .await
        .map_err(target.fail("write checkpoint_references"))?;
    for (reference, money) in references.iter().filter(|(_, m)| m.last_seq > since) {
        let topups = i32::try_from(money.topups).unwrap_or(i32::MAX);
        let accounts = money
            .accounts
            .iter()
            .map(|id| bigint("an account id", id.get()))
            .collect::<Result<Vec<i64>, _>>()?;
        tx.execute(
            &statement,
            &[
                reference,
                &topups,
                &money.topped_up.to_string(),
                &money.refunded.to_string(),
                &accounts,
                &bigint("a seq", money.last_seq)?,
            ],
        )
        .await
        .map_err(target.fail("write checkpoint_references"))?;
    }
    Ok(())
}

fn unsigned(value: i64) -> Result<u64, PgError> {
    u64::try_from(value).map_err(|_| inconsistent("a negative seq, time or id"))
}

fn wide(text: &str) -> Result<i128, PgError> {
    text.parse()
        .map_err(|_| inconsistent("a checkpoint sum is not an integer"))
}

fn bad_row(err: tokio_postgres::Error) -> PgError {
    PgError::Inconsistent {
        message: format!("a checkpoint row: {err}"),
    }
}

fn inconsistent(message: &str) -> PgError {
    PgError::Inconsistent {
        message: format!("the ledger checkpoint: {message}"),
    }
}
