//! `StorageError`, the one error of this crate's I/O: sled failures, values
//! that do not decode, writes the writer refused, and a writer that is gone.
//! It is `Clone` because one flush failure is reported to every ack of its
//! batch.

use std::sync::Arc;

use crate::ids::{AccountId, KeyId};
use crate::ledger::LedgerError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("sled failed to {op}: {source}")]
    Sled {
        op: &'static str,
        #[source]
        source: Arc<sled::Error>,
    },
    #[error("stored value in tree {tree} does not decode: {message}")]
    Decode { tree: &'static str, message: String },
    #[error("{what} does not encode: {message}")]
    Encode { what: &'static str, message: String },
    #[error("cannot start the writer thread: {message}")]
    Spawn { message: String },
    #[error("writing the export failed: {message}")]
    Export { message: String },
    /// A submission broke a ledger rule; nothing of it was written.
    #[error("write op {op_index} refused: {source}")]
    Rejected {
        op_index: usize,
        #[source]
        source: LedgerError,
    },
    #[error("write op {op_index} refused: unknown account {account}")]
    UnknownAccount { op_index: usize, account: AccountId },
    #[error("write op {op_index} refused: email {email:?} already belongs to {owner}")]
    EmailTaken {
        op_index: usize,
        email: String,
        owner: AccountId,
    },
    #[error("write op {op_index} refused: {key} {reason}")]
    KeyConflict {
        op_index: usize,
        key: KeyId,
        reason: &'static str,
    },
    /// A Stripe payment change broke a payment rule (credited twice, moved
    /// to another account, a refund taken back, a credit without its entry).
    #[error("write op {op_index} refused: payment {session} {reason}")]
    PaymentConflict {
        op_index: usize,
        session: String,
        reason: &'static str,
    },
    /// A Stripe event id or refund key that was already processed.
    #[error("write op {op_index} refused: {key} was already processed")]
    AlreadyProcessed { op_index: usize, key: String },
    /// A `PruneLedger` that cannot run now (another in the same batch).
    #[error("write op {op_index} refused: {reason}")]
    PruneRefused {
        op_index: usize,
        reason: &'static str,
    },
    /// A writer is already running on this store.
    #[error("a ledger writer is already running on this store")]
    WriterRunning,
    /// The writer thread has stopped (closed, or every handle dropped).
    #[error("the ledger writer is closed")]
    WriterClosed,
    /// An earlier batch failed to commit or flush; the writer refuses all
    /// further writes until the process restarts and recovers from disk.
    #[error("the ledger writer stopped after a storage failure: {cause}")]
    WriterPoisoned { cause: String },
    #[error("the id allocator's lock was poisoned by a panic")]
    IdsPoisoned,
}

impl StorageError {
    /// A submission refused by a rule (ledger, email, key or payment): nothing was
    /// written, and the writer is fine. Every other error is a storage
    /// failure or a stopped writer.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StorageError::Rejected { .. }
                | StorageError::UnknownAccount { .. }
                | StorageError::EmailTaken { .. }
                | StorageError::KeyConflict { .. }
                | StorageError::PaymentConflict { .. }
                | StorageError::AlreadyProcessed { .. }
                | StorageError::PruneRefused { .. }
        )
    }

    pub(crate) fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
        move |source| StorageError::Sled {
            op,
            source: Arc::new(source),
        }
    }
}
