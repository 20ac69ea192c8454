//! How a restore writes the new store: money and records through a
//! `LedgerWriter` (`Loader`, a few submissions in flight, stopping at the
//! first refusal), and directly only what has no rule — request metadata
//! under its original keys, and the id ranges — once the writer stopped.

use std::collections::VecDeque;

use tokio::sync::oneshot;
use tokio_postgres::Transaction;

use super::restore::{CHUNK, refused};
use super::rows::{REQUEST_COLUMNS, request_from};
use super::{PgError, PgTarget, blocking};
use crate::codec::usage_key;
use crate::error::StorageError;
use crate::ops::{Ack, Durable, WriteOp};
use crate::store::Store;
use crate::writer::WriterHandle;

/// Submissions in flight to the writer at once.
pub(super) const IN_FLIGHT: usize = 8;

/// The highest id of each kind restored: new ids must come after them.
#[derive(Default)]
pub(super) struct Ids {
    pub(super) account: u64,
    pub(super) key: u64,
    pub(super) hold: u64,
}

/// Submissions to the writer with a few in flight; stops at the first refusal.
pub(super) struct Loader {
    writer: WriterHandle,
    pending: VecDeque<(
        oneshot::Receiver<Result<Durable, StorageError>>,
        &'static str,
    )>,
}

impl Loader {
    pub(super) fn new(writer: WriterHandle) -> Loader {
        Loader {
            writer,
            pending: VecDeque::new(),
        }
    }

    pub(super) async fn submit(
        &mut self,
        ops: Vec<WriteOp>,
        what: &'static str,
    ) -> Result<(), PgError> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.pending.len() >= IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let (done, durable) = oneshot::channel();
        let ack = Ack::new(move |result| {
            let _ = done.send(result);
        });
        // Never blocks: the queue holds twice what is kept in flight.
        self.writer.submit(ops, ack);
        self.pending.push_back((durable, what));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), PgError> {
        let Some((durable, what)) = self.pending.pop_front() else {
            return Ok(());
        };
        match durable.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(refused(format!(
                "the writer refused the snapshot's {what}: {err}"
            ))),
            Err(_) => Err(refused("the writer stopped".into())),
        }
    }

    pub(super) async fn finish(mut self) -> Result<(), PgError> {
        while !self.pending.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}

/// Writes request metadata under the keys it had in the snapshotted store.
/// A schema before migration 3 has no `cached_tokens` or `route`: 0 and none.
pub(super) async fn copy_requests(
    tx: &Transaction<'_>,
    target: &PgTarget,
    store: &Store,
    schema_version: i32,
) -> Result<u64, PgError> {
    let columns = match schema_version {
        4.. => REQUEST_COLUMNS.to_owned(),
        _ => REQUEST_COLUMNS.replace(
            "cached_tokens, route",
            "0::bigint AS cached_tokens, NULL::integer AS route",
        ),
    };
    let statement = format!("SELECT {columns} FROM requests");
    let portal = tx
        .bind(&statement, &[])
        .await
        .map_err(target.fail("read requests"))?;
    let mut written = 0;
    loop {
        let rows = tx
            .query_portal(&portal, CHUNK)
            .await
            .map_err(target.fail("read requests"))?;
        if rows.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        for row in &rows {
            let (unique, usage) = request_from(row)?;
            let key = usage_key(usage.account.get(), usage.at_ms, unique);
            batch.insert(&key[..], crate::codec::encode("a usage record", &usage)?);
        }
        written += rows.len() as u64;
        let tree = store.trees.usage.clone();
        blocking(move || {
            Ok(tree
                .apply_batch(batch)
                .map_err(StorageError::sled("restore usage"))?)
        })
        .await?;
    }
    Ok(written)
}

/// Makes the next id of each kind come after every restored one. The `ids`
/// tree layout is `ids_alloc`'s: kind name → first id not yet handed out.
pub(super) fn write_id_ranges(store: &Store, ids: &Ids) -> Result<(), PgError> {
    let tree = store
        .db
        .open_tree("ids")
        .map_err(StorageError::sled("open the ids tree"))?;
    for (kind, highest) in [
        ("account", ids.account),
        ("key", ids.key),
        ("hold", ids.hold),
    ] {
        let next = highest.saturating_add(1).to_be_bytes();
        tree.insert(kind, &next[..])
            .map_err(StorageError::sled("restore id ranges"))?;
    }
    store
        .db
        .flush()
        .map_err(StorageError::sled("flush the restored store"))?;
    Ok(())
}
