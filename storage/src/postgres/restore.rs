//! Rebuilding a sled store from the latest snapshot, into an empty
//! directory. Read in one repeatable-read transaction, so a snapshot
//! committing meanwhile cannot tear the picture.
//!
//! Restore does not write money trees itself: it starts a `LedgerWriter` on
//! the new store and submits the accounts, the keys and then every ledger
//! entry in seq order, so each entry passes the same staging rules as in
//! production (books recomputed, holds opened and closed by the rules, seqs
//! assigned 1, 2, 3, … and compared). Only what has no rule is written
//! directly, once the writer has stopped: request metadata, under the keys
//! it had (so a later snapshot into the same schema recognises it), the
//! operators' audit log under its seqs, and the id ranges (so new accounts, keys and holds never reuse an id). Then
//! `verify` must come back clean and every balance must equal the
//! snapshot's `balances` row; otherwise the directory is emptied again and
//! the restore refused.
//!
//! Holds open at the snapshot's cut come back open, with their price and
//! last checkpoint, so the next `tokun serve` settles them as `recovered`.
//!
//! A snapshot whose oldest entries retention pruned carries the ledger
//! checkpoint: it is installed into the empty store first (its books,
//! its last seq, and the credited payments whose `Topup` it pruned), and
//! the writer replays the entries after it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tokio_postgres::{IsolationLevel, Transaction};

use super::load::{IN_FLIGHT, Ids, Loader, copy_requests, write_id_ranges};
use super::payments::Restored;
use super::rows::{
    ACCOUNT_COLUMNS, BALANCE_COLUMNS, ENTRY_COLUMNS, HOLD_COLUMNS, HoldRow, KEY_COLUMNS,
    account_from, entry_from, hold_from, key_from,
};
use super::{PgConn, PgError, PgTarget, blocking, checkpoint};
use crate::ids::{AccountId, HoldId};
use crate::ledger::{Books, EntryKind};
use crate::ops::{NewEntry, WriteOp};
use crate::store::Store;
use crate::verify::VerifyReport;
use crate::writer::{LedgerWriter, WriterConfig};

/// Rows fetched from Postgres per round trip, and entries per submission.
pub(super) const CHUNK: i32 = 4096;

/// What a restore rebuilt.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The snapshot's watermark: the store's last seq now.
    pub last_seq: u64,
    pub accounts: u64,
    pub api_keys: u64,
    pub open_holds: u64,
    pub requests: u64,
    pub payments: u64,
    pub stripe_events: u64,
    /// Operator audit records (`audit_log`), under their seqs.
    pub audit: u64,
    /// The audit of the rebuilt store (clean, or the restore was refused).
    pub verify: VerifyReport,
}

/// Rebuilds the store in `dir` (missing or empty) from the snapshot.
pub async fn restore(conn: &mut PgConn, dir: &Path) -> Result<RestoreReport, PgError> {
    let existed = match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => true,
            Some(_) => return Err(refused(format!("{} is not empty", dir.display()))),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => return Err(refused(format!("cannot read {}: {err}", dir.display()))),
    };
    let result = rebuild(conn, dir).await;
    if result.is_err() {
        // Leave the directory as it was, so nothing starts from half a store.
        let _ = std::fs::remove_dir_all(dir);
        if existed {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    result
}

async fn rebuild(conn: &mut PgConn, dir: &Path) -> Result<RestoreReport, PgError> {
    let (client, target) = conn.parts();
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(target.fail("begin reading the snapshot"))?;
    let last_seq = snapshot_watermark(&tx, target).await?;
    let accounts = select(&tx, target, ACCOUNT_COLUMNS, "accounts", "id").await?;
    let accounts = accounts
        .iter()
        .map(account_from)
        .collect::<Result<Vec<_>, _>>()?;
    let keys = select(&tx, target, KEY_COLUMNS, "api_keys", "id").await?;
    let keys = keys.iter().map(key_from).collect::<Result<Vec<_>, _>>()?;
    let holds = select(&tx, target, HOLD_COLUMNS, "open_holds", "hold_id").await?;
    let holds: BTreeMap<HoldId, HoldRow> = holds
        .iter()
        .map(|row| hold_from(row).map(|hold| (hold.hold, hold)))
        .collect::<Result<_, _>>()?;
    let payments = Restored::load(&tx, target).await?;
    let version = schema_version(&tx, target).await?;
    let pruned = match version {
        5.. => checkpoint::load(&tx, target).await?,
        _ => None,
    };

    let store = Store::open(dir)?;
    let mut ids = Ids::default();
    let from_seq = match &pruned {
        Some(state) => {
            store.install_checkpoint(state, &payments.pruned_credits(&state.references))?;
            ids.hold = state.checkpoint.max_hold;
            state.checkpoint.through_seq
        }
        None => 0,
    };
    let (writer, thread) = LedgerWriter::start(
        store.clone(),
        WriterConfig {
            max_batch: 65_536,
            max_batch_delay: std::time::Duration::ZERO,
            queue_capacity: IN_FLIGHT * 2,
        },
    )?;
    let mut loader = Loader::new(writer.clone());
    for chunk in accounts.chunks(CHUNK as usize) {
        ids.account = chunk.iter().map(|a| a.id.get()).fold(ids.account, u64::max);
        loader
            .submit(
                chunk.iter().cloned().map(WriteOp::PutAccount).collect(),
                "accounts",
            )
            .await?;
    }
    for chunk in keys.chunks(CHUNK as usize) {
        ids.key = chunk
            .iter()
            .map(|(_, k)| k.id.get())
            .fold(ids.key, u64::max);
        let ops = chunk
            .iter()
            .map(|(hash, record)| WriteOp::PutKey {
                hash: *hash,
                record: record.clone(),
            })
            .collect();
        loader.submit(ops, "api keys").await?;
    }
    let replay = Replay {
        holds: &holds,
        payments: &payments,
        from_seq,
        last_seq,
    };
    replay_entries(&tx, target, &mut loader, &replay, &mut ids).await?;
    for chunk in payments.after_entries().chunks(CHUNK as usize) {
        loader.submit(chunk.to_vec(), "payments").await?;
    }
    let checkpoints: Vec<WriteOp> = holds
        .values()
        .filter_map(|row| {
            let open = row.to_open_hold();
            open.checkpoint_tokens
                .map(|(prompt, completion)| WriteOp::Checkpoint {
                    hold: open.hold,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                })
        })
        .collect();
    loader.submit(checkpoints, "hold checkpoints").await?;
    let loaded = loader.finish().await;
    writer.close();
    blocking(move || {
        thread
            .join()
            .map_err(|_| refused("the writer thread panicked".into()))
    })
    .await?;
    loaded?;

    let requests = copy_requests(&tx, target, &store, version).await?;
    let audit = super::audit::restore(&tx, target, &store).await?;
    write_id_ranges(&store, &ids)?;
    let balances = select(&tx, target, BALANCE_COLUMNS, "balances", "account_id").await?;
    let verify = check(&store, &balances, holds.len() as u64).await?;
    tx.commit()
        .await
        .map_err(target.fail("end reading the snapshot"))?;
    let (payments, stripe_events) = payments.len();
    Ok(RestoreReport {
        last_seq,
        payments,
        stripe_events,
        accounts: accounts.len() as u64,
        api_keys: keys.len() as u64,
        open_holds: holds.len() as u64,
        requests,
        audit,
        verify,
    })
}

/// What the entries are replayed with.
struct Replay<'a> {
    holds: &'a BTreeMap<HoldId, HoldRow>,
    payments: &'a Restored,
    /// The checkpoint the snapshot starts after (0: nothing was pruned).
    from_seq: u64,
    last_seq: u64,
}

/// The newest migration the snapshot's schema has: a snapshot written by
/// an older tokun lacks the later tables and columns.
async fn schema_version(tx: &Transaction<'_>, target: &PgTarget) -> Result<i32, PgError> {
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(target.fail("read schema_migrations"))?;
    row.try_get(0)
        .map_err(target.fail("read schema_migrations"))
}

/// The watermark of the last snapshot; `NoSnapshot` if none ever committed.
async fn snapshot_watermark(tx: &Transaction<'_>, target: &PgTarget) -> Result<u64, PgError> {
    let row = tx
        .query_opt(
            "SELECT last_seq FROM snapshot_state WHERE id = 1 AND snapshot_at IS NOT NULL",
            &[],
        )
        .await;
    let no_snapshot = || PgError::NoSnapshot {
        schema: target.schema().to_owned(),
    };
    let row = match row {
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(no_snapshot());
        }
        row => row.map_err(target.fail("read the watermark"))?,
    };
    let last_seq: i64 = row
        .ok_or_else(no_snapshot)?
        .try_get(0)
        .map_err(target.fail("read the watermark"))?;
    u64::try_from(last_seq).map_err(|_| no_snapshot())
}

async fn select(
    tx: &Transaction<'_>,
    target: &PgTarget,
    columns: &str,
    table: &str,
    order: &str,
) -> Result<Vec<tokio_postgres::Row>, PgError> {
    tx.query(
        &format!("SELECT {columns} FROM {table} ORDER BY {order}"),
        &[],
    )
    .await
    .map_err(target.fail("read the snapshot"))
}

/// Submits entries `from_seq + 1..=last_seq` in order, a chunk per
/// submission.
async fn replay_entries(
    tx: &Transaction<'_>,
    target: &PgTarget,
    loader: &mut Loader,
    replay: &Replay<'_>,
    ids: &mut Ids,
) -> Result<(), PgError> {
    let last_seq = replay.last_seq;
    let statement = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE seq > $1 AND seq <= $2 ORDER BY seq"
    );
    let from = i64::try_from(replay.from_seq).unwrap_or(i64::MAX);
    let bound = i64::try_from(last_seq).unwrap_or(i64::MAX);
    let portal = tx
        .bind(&statement, &[&from, &bound])
        .await
        .map_err(target.fail("read ledger_entries"))?;
    let mut next = replay.from_seq + 1;
    loop {
        let rows = tx
            .query_portal(&portal, CHUNK)
            .await
            .map_err(target.fail("read ledger_entries"))?;
        if rows.is_empty() {
            break;
        }
        let mut ops = Vec::with_capacity(rows.len());
        for row in &rows {
            let entry = entry_from(row)?;
            if entry.seq != next {
                return Err(refused(format!(
                    "the snapshot's ledger has no entry {next}"
                )));
            }
            next += 1;
            ids.hold = entry.hold.map_or(ids.hold, |hold| ids.hold.max(hold.get()));
            // Only open holds need their real price (for recovery); the
            // writer requires one on every `Hold` entry.
            let price = (entry.kind == EntryKind::Hold).then(|| {
                entry
                    .hold
                    .and_then(|hold| replay.holds.get(&hold))
                    .and_then(|row| row.price)
                    .unwrap_or_default()
            });
            let credit = replay.payments.credit(&entry);
            let books = Books {
                balance: entry.balance_after,
                held: entry.held_after,
            };
            let mut new =
                NewEntry::new(entry.at_ms, entry.account, entry.kind, entry.amount, books);
            new.hold = entry.hold;
            new.request_id = entry.request_id;
            new.reference = entry.reference;
            new.estimated = entry.estimated;
            new.price = price;
            ops.push(WriteOp::Entry(new));
            ops.extend(credit);
        }
        loader.submit(ops, "ledger entries").await?;
    }
    if next != last_seq + 1 {
        return Err(refused(format!(
            "the snapshot's watermark is {last_seq} but its ledger ends at {}",
            next - 1
        )));
    }
    Ok(())
}

/// `verify` must be clean and every balance must match the snapshot's.
async fn check(
    store: &Store,
    balances: &[tokio_postgres::Row],
    open_holds: u64,
) -> Result<VerifyReport, PgError> {
    let mut expected = BTreeMap::new();
    for row in balances {
        let account: i64 = row.try_get(0).map_err(|err| refused(err.to_string()))?;
        let books = Books {
            balance: crate::money::Nanos::new(
                row.try_get(1).map_err(|err| refused(err.to_string()))?,
            ),
            held: crate::money::Nanos::new(row.try_get(2).map_err(|err| refused(err.to_string()))?),
        };
        expected.insert(AccountId::new(u64::try_from(account).unwrap_or(0)), books);
    }
    let store = store.clone();
    blocking(move || {
        let report = store.verify()?;
        if !report.is_clean() {
            let first = report.problems.first().cloned().unwrap_or_default();
            return Err(refused(format!(
                "the rebuilt ledger does not verify: {first}"
            )));
        }
        if report.open_holds != open_holds {
            return Err(refused(format!(
                "{} holds are open, the snapshot has {open_holds}",
                report.open_holds
            )));
        }
        for (account, books) in &expected {
            if store.books(*account)? != *books {
                return Err(refused(format!(
                    "{account}'s balance differs from the snapshot's"
                )));
            }
        }
        if report.accounts != expected.len() as u64 {
            return Err(refused(
                "the snapshot's balances do not cover every account".into(),
            ));
        }
        Ok(report)
    })
    .await
}

pub(super) fn refused(message: String) -> PgError {
    PgError::Restore { message }
}
