//! The tables a snapshot rewrites rather than appends to: balances (the
//! accounts touched since the watermark), open holds (all of them, as of the
//! cut), accounts and API keys (mirrored: inserted, updated where they
//! differ, deleted where the store no longer has them) and request metadata
//! (new rows only). Each goes through a temporary table filled by binary
//! COPY and one set-based statement, inside the snapshot's transaction;
//! request metadata, which can be large, in batches of one COPY chunk.

use std::collections::BTreeMap;

use tokio_postgres::Transaction;

use super::copy::{CopyRows, Emit, copy_in, copy_in_batches};
use super::rows::{
    ACCOUNT_COLUMNS, BALANCE_COLUMNS, HOLD_COLUMNS, KEY_COLUMNS, REQUEST_COLUMNS, put_account,
    put_balance, put_hold, put_key, put_request,
};
use super::snapshot::{Cut, stopped};
use super::{PgError, PgTarget, blocking};
use crate::codec::{decode, read_u64, usage_key};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::store::Store;

/// How far around its settlements an account's request metadata is looked
/// for. A usage record is written in the same batch as its `Settle` entry,
/// stamped a moment before it; the margin covers clock steps and slow
/// mailboxes, and re-reading a row is harmless (`ON CONFLICT DO NOTHING`).
const USAGE_MARGIN_MS: u64 = 5 * 60 * 1000;

pub(super) async fn balances(
    tx: &Transaction<'_>,
    target: &PgTarget,
    cut: &Cut,
) -> Result<u64, PgError> {
    if cut.balances.is_empty() {
        return Ok(0);
    }
    let rows: Vec<_> = cut.balances.iter().map(|(id, row)| (*id, *row)).collect();
    into_temp(tx, target, "balances", BALANCE_COLUMNS, move |emit| {
        let mut copy = CopyRows::new();
        for (account, (books, last_seq)) in rows {
            put_balance(&mut copy, account, books, last_seq)?;
            if !copy.flush_if_full(emit) {
                return Err(stopped());
            }
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    exec(
        tx,
        target,
        "upsert balances",
        &format!(
            "INSERT INTO balances ({BALANCE_COLUMNS}) SELECT {BALANCE_COLUMNS} FROM snap_balances \
             ON CONFLICT (account_id) DO UPDATE SET balance_nanos = excluded.balance_nanos, \
             held_nanos = excluded.held_nanos, last_seq = excluded.last_seq"
        ),
    )
    .await
}

/// Replaces `open_holds` with the holds open at the cut, with the price and
/// checkpoint the `holds` tree has for them (read after the cut, so a hold
/// closed since keeps what the last snapshot knew).
pub(super) async fn open_holds(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
    cut: &mut Cut,
) -> Result<u64, PgError> {
    let store = store.clone();
    let in_tree = blocking(move || Ok(store.open_holds()?)).await?;
    for open in in_tree {
        if let Some(row) = cut.holds.get_mut(&open.hold) {
            row.checkpoint = open.checkpoint_tokens;
            row.price = Some(open.price);
        }
    }
    exec(tx, target, "clear open_holds", "DELETE FROM open_holds").await?;
    let holds: Vec<_> = cut.holds.values().cloned().collect();
    let statement = format!("COPY open_holds ({HOLD_COLUMNS}) FROM STDIN (FORMAT binary)");
    let (rows, ()) = copy_in(tx, target, &statement, move |emit| {
        let mut copy = CopyRows::new();
        for hold in &holds {
            put_hold(&mut copy, hold)?;
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    Ok(rows)
}

pub(super) async fn api_keys(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
) -> Result<u64, PgError> {
    let tree = store.trees.keys.clone();
    mirror_tree(
        tx,
        target,
        tree,
        "api_keys",
        KEY_COLUMNS,
        |copy, hash, value| put_key(copy, hash, &decode("keys", value)?),
    )
    .await
}

pub(super) async fn accounts(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
) -> Result<u64, PgError> {
    let tree = store.trees.accounts.clone();
    mirror_tree(
        tx,
        target,
        tree,
        "accounts",
        ACCOUNT_COLUMNS,
        |copy, _, value| put_account(copy, &decode("accounts", value)?),
    )
    .await
}

/// Encodes one `(key, value)` record of a tree as a COPY row.
type PutRecord = fn(&mut CopyRows, &[u8], &[u8]) -> Result<(), PgError>;

/// Copies every record of `tree` (each turned into a row by `put`) and makes
/// `table` equal to them; returns the rows copied.
async fn mirror_tree(
    tx: &Transaction<'_>,
    target: &PgTarget,
    tree: sled::Tree,
    table: &'static str,
    columns: &'static str,
    put: PutRecord,
) -> Result<u64, PgError> {
    let rows = into_temp(tx, target, table, columns, move |emit| {
        let mut copy = CopyRows::new();
        for item in tree.iter() {
            let (key, value) = item.map_err(StorageError::sled("scan a mirrored tree"))?;
            put(&mut copy, &key, &value)?;
            if !copy.flush_if_full(emit) {
                return Err(stopped());
            }
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    mirror(tx, target, table, "id", columns).await?;
    Ok(rows)
}

/// Request metadata of the accounts settled since the watermark, around
/// the time of those settlements; returns the rows new to Postgres.
pub(super) async fn requests(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
    settled: BTreeMap<AccountId, (u64, u64)>,
) -> Result<u64, PgError> {
    if settled.is_empty() {
        return Ok(0);
    }
    let tree = store.trees.usage.clone();
    create_temp(tx, target, "requests").await?;
    let insert = format!(
        "INSERT INTO requests ({REQUEST_COLUMNS}) SELECT {REQUEST_COLUMNS} FROM snap_requests \
         ON CONFLICT DO NOTHING"
    );
    let copy = format!("COPY snap_requests ({REQUEST_COLUMNS}) FROM STDIN (FORMAT binary)");
    // In batches: a catch-up can hold 100,000s of rows, and one INSERT of
    // them all would be a burst of Postgres CPU that pacing cannot spread.
    let staged = "snap_requests";
    let (inserted, ()) = copy_in_batches(tx, target, &copy, &insert, staged, move |emit| {
        let mut copy = CopyRows::new();
        for (account, (first_ms, last_ms)) in settled {
            let from = usage_key(account.get(), first_ms.saturating_sub(USAGE_MARGIN_MS), 0);
            let to = usage_key(
                account.get(),
                last_ms.saturating_add(USAGE_MARGIN_MS),
                u64::MAX,
            );
            for item in tree.range(from..=to) {
                let (key, value) = item.map_err(StorageError::sled("scan usage"))?;
                let unique = read_u64(&key, 16).ok_or_else(|| StorageError::Decode {
                    tree: "usage",
                    message: "short key".into(),
                })?;
                put_request(&mut copy, unique, &decode("usage", &value)?)?;
                if !copy.flush_if_full(emit) {
                    return Err(stopped());
                }
            }
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    Ok(inserted)
}

/// Creates `snap_<table>`, dropped when the transaction ends.
async fn create_temp(
    tx: &Transaction<'_>,
    target: &PgTarget,
    table: &'static str,
) -> Result<(), PgError> {
    let create = format!("CREATE TEMP TABLE snap_{table} (LIKE {table}) ON COMMIT DROP");
    tx.batch_execute(&create)
        .await
        .map_err(target.fail("create a temporary table"))
}

/// Creates `snap_<table>` for this transaction and COPies rows into it.
pub(super) async fn into_temp(
    tx: &Transaction<'_>,
    target: &PgTarget,
    table: &'static str,
    columns: &'static str,
    produce: impl FnOnce(Emit<'_>) -> Result<(), PgError> + Send + 'static,
) -> Result<u64, PgError> {
    create_temp(tx, target, table).await?;
    let statement = format!("COPY snap_{table} ({columns}) FROM STDIN (FORMAT binary)");
    let (rows, ()) = copy_in(tx, target, &statement, produce).await?;
    Ok(rows)
}

/// Makes `table` equal `snap_<table>`: inserts the new rows, updates the
/// changed ones, deletes the ones the store no longer has.
pub(super) async fn mirror(
    tx: &Transaction<'_>,
    target: &PgTarget,
    table: &'static str,
    key: &'static str,
    columns: &'static str,
) -> Result<(), PgError> {
    let updates = columns
        .split(", ")
        .filter(|column| *column != key)
        .map(|column| format!("{column} = excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let upsert = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM snap_{table} \
         ON CONFLICT ({key}) DO UPDATE SET {updates} \
         WHERE ({table}.*) IS DISTINCT FROM (excluded.*)"
    );
    exec(tx, target, "mirror a table", &upsert).await?;
    let delete = format!(
        "DELETE FROM {table} t WHERE NOT EXISTS \
         (SELECT 1 FROM snap_{table} s WHERE s.{key} = t.{key})"
    );
    exec(tx, target, "mirror a table", &delete).await?;
    Ok(())
}

async fn exec(
    tx: &Transaction<'_>,
    target: &PgTarget,
    op: &'static str,
    statement: &str,
) -> Result<u64, PgError> {
    tx.execute(statement, &[]).await.map_err(target.fail(op))
}
