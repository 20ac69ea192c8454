//! The audit log in Postgres (`audit_log`): a snapshot appends the records
//! above the highest seq the table holds (records are never changed, so
//! that seq is the table's own watermark, read inside the snapshot's
//! transaction, which holds the `snapshot_state` lock); a restore writes
//! them back under their seqs, so the numbering goes on where it was.

use tokio_postgres::{Row, Transaction};

use super::copy::{CopyRows, copy_in};
use super::snapshot::stopped;
use super::{PgError, PgTarget, blocking};
use crate::audit::AuditRecord;
use crate::codec::decode;
use crate::error::StorageError;
use crate::store::Store;

const AUDIT_COLUMNS: &str = "seq, at_ms, actor, action, target, before, after, reason";
/// `jsonb`'s binary format: a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

/// Copies the records Postgres does not have yet; returns how many.
pub(super) async fn snapshot(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
) -> Result<u64, PgError> {
    let highest: i64 = tx
        .query_one("SELECT coalesce(max(seq), 0) FROM audit_log", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(target.fail("read audit_log"))?;
    let from = u64::try_from(highest).unwrap_or(0).saturating_add(1);
    let tree = store.trees.audit.audit.clone();
    let statement = format!("COPY audit_log ({AUDIT_COLUMNS}) FROM STDIN (FORMAT binary)");
    let (rows, ()) = copy_in(tx, target, &statement, move |emit| {
        let mut copy = CopyRows::new();
        for item in tree.range(from.to_be_bytes()..).values() {
            let value = item.map_err(StorageError::sled("scan audit"))?;
            put_audit(&mut copy, &decode("audit", &value)?)?;
            if !copy.flush_if_full(emit) {
                return Err(stopped());
            }
        }
        copy.finish(emit);
        Ok(())
    })
    .await?;
    Ok(rows)
}

/// Writes every record of the snapshot into the new store; returns how many.
/// A snapshot schema older than the audit log (migration 3) has none.
pub(super) async fn restore(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
) -> Result<u64, PgError> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('audit_log') IS NOT NULL", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(target.fail("look for audit_log"))?;
    if !exists {
        return Ok(0);
    }
    let rows = tx
        .query(
            "SELECT seq, at_ms, actor, action, target, before::text, after::text, reason \
             FROM audit_log ORDER BY seq",
            &[],
        )
        .await
        .map_err(target.fail("read audit_log"))?;
    let records = rows.iter().map(audit_from).collect::<Result<Vec<_>, _>>()?;
    let written = records.len() as u64;
    let store = store.clone();
    blocking(move || {
        for record in &records {
            store.put_audit_record(record)?;
        }
        Ok(())
    })
    .await?;
    Ok(written)
}

fn put_audit(copy: &mut CopyRows, record: &AuditRecord) -> Result<(), PgError> {
    copy.row(8).uint8("a seq", record.seq)?;
    copy.uint8("a time", record.at_ms)?;
    copy.text(&record.actor)?
        .text(&record.action)?
        .text(&record.target)?;
    copy.bytes(&jsonb(&record.before)?)?
        .bytes(&jsonb(&record.after)?)?
        .text(&record.reason)?;
    Ok(())
}

fn jsonb(value: &serde_json::Value) -> Result<Vec<u8>, PgError> {
    let mut bytes = vec![JSONB_VERSION];
    serde_json::to_writer(&mut bytes, value).map_err(|err| PgError::Inconsistent {
        message: format!("an audit record's JSON: {err}"),
    })?;
    Ok(bytes)
}

fn audit_from(row: &Row) -> Result<AuditRecord, PgError> {
    let bad = |err: tokio_postgres::Error| PgError::Inconsistent {
        message: format!("an audit_log row: {err}"),
    };
    let unsigned = |value: i64| {
        u64::try_from(value).map_err(|_| PgError::Inconsistent {
            message: format!("an audit_log row has a negative value {value}"),
        })
    };
    let json = |text: String| {
        serde_json::from_str(&text).map_err(|err| PgError::Inconsistent {
            message: format!("an audit_log row's JSON: {err}"),
        })
    };
    Ok(AuditRecord {
        seq: unsigned(row.try_get(0).map_err(bad)?)?,
        at_ms: unsigned(row.try_get(1).map_err(bad)?)?,
        actor: row.try_get(2).map_err(bad)?,
        action: row.try_get(3).map_err(bad)?,
        target: row.try_get(4).map_err(bad)?,
        before: json(row.try_get(5).map_err(bad)?)?,
        after: json(row.try_get(6).map_err(bad)?)?,
        reason: row.try_get(7).map_err(bad)?,
    })
}
