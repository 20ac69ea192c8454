//! What callers hand the writer: `WriteOp`s (new ledger entries and record
//! puts), the `Ack` called once they are durable, and `Durable`, what the ack
//! says. A submission (one `Vec<WriteOp>` with one ack) is all-or-nothing.

use std::fmt;
use std::ops::Range;

use crate::error::StorageError;
use crate::ids::{AccountId, HoldId};
use crate::ledger::{Books, EntryKind, LedgerEntry};
use crate::money::Nanos;
use crate::payments::PaymentRecord;
use crate::price::Price;
use crate::records::{AccountRecord, KeyRecord, UsageRecord};

/// One change for the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Append a ledger entry; the writer assigns its seq and updates the
    /// account's balance row and the `holds` tree.
    Entry(NewEntry),
    /// Record the usage an open hold has reached, for recovery at restart.
    /// A no-op when the hold is already closed.
    Checkpoint {
        hold: HoldId,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// Create or replace an account (and its email index entry).
    PutAccount(AccountRecord),
    /// Create or replace an API key, by the SHA-256 of its secret.
    PutKey { hash: [u8; 32], record: KeyRecord },
    /// Record one request's metadata.
    PutUsage(UsageRecord),
    /// Create or update a Stripe payment. The writer refuses a change its
    /// rules forbid (crediting a session twice, moving it to another
    /// account, taking back a refund; see `writer/stage/payments.rs`), and a
    /// payment becoming paid must come with its `Topup` entry in the same
    /// submission.
    PutPayment(PaymentRecord),
    /// Mark a Stripe event id (or refund key) processed. Marking one twice
    /// is refused, so a submission carrying a mark is written at most once.
    MarkProcessed { key: String, at_ms: u64 },
    /// Retention: remove the oldest entries, up to `through_seq` (at most
    /// `PRUNE_BATCH` of them past the checkpoint, and only as far as no
    /// hold is open), folding what they add up to into the ledger
    /// checkpoint in the same transaction (see `checkpoint`). Alone in its
    /// submission; a second one in the same batch is refused.
    PruneLedger { through_seq: u64 },
    /// Write nothing, but flush even if the batch is otherwise empty: makes
    /// durable what was written to sled outside the writer (the
    /// `idempotency` tree) before this op was submitted.
    Sync,
}

/// A ledger entry before the writer gives it a seq. `balance_after` and
/// `held_after` are the books the account actor computed with
/// `ledger::apply`; the writer recomputes them and refuses the submission
/// if they differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    pub at_ms: u64,
    pub account: AccountId,
    pub kind: EntryKind,
    pub amount: Nanos,
    pub hold: Option<HoldId>,
    pub request_id: Option<String>,
    pub reference: Option<String>,
    pub estimated: bool,
    pub balance_after: Nanos,
    pub held_after: Nanos,
    /// Required for `Hold` entries (kept in the open hold for recovery),
    /// ignored otherwise.
    pub price: Option<Price>,
}

/// What a successful ack says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durable {
    /// The highest seq in the ledger once this submission's batch was flushed.
    pub last_seq: u64,
    /// The seqs given to this submission's entries, in submission order
    /// (empty if it had none).
    pub seqs: Range<u64>,
}

type Callback = Box<dyn FnOnce(Result<Durable, StorageError>) + Send>;

/// Called exactly once per submission: `Ok` after its batch is flushed to
/// disk, `Err` if it was refused or the write failed. It runs on the writer
/// thread, so it must be quick and must not block (sending on a tokio
/// oneshot is the intended use). An ack dropped unfired (say, a message
/// stranded in the queue at shutdown) fires `Err(WriterClosed)`.
pub struct Ack {
    callback: Option<Callback>,
}

impl NewEntry {
    /// An entry that leaves the account's books at `after`.
    pub fn new(
        at_ms: u64,
        account: AccountId,
        kind: EntryKind,
        amount: Nanos,
        after: Books,
    ) -> NewEntry {
        NewEntry {
            at_ms,
            account,
            kind,
            amount,
            hold: None,
            request_id: None,
            reference: None,
            estimated: false,
            balance_after: after.balance,
            held_after: after.held,
            price: None,
        }
    }

    pub fn with_hold(mut self, hold: HoldId) -> NewEntry {
        self.hold = Some(hold);
        self
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> NewEntry {
        self.request_id = Some(request_id.into());
        self
    }

    pub fn with_reference(mut self, reference: impl Into<String>) -> NewEntry {
        self.reference = Some(reference.into());
        self
    }

    pub fn with_price(mut self, price: Price) -> NewEntry {
        self.price = Some(price);
        self
    }

    /// Marks a settlement made from tokun's own token count.
    pub fn estimated(mut self) -> NewEntry {
        self.estimated = true;
        self
    }

    pub fn books_after(&self) -> Books {
        Books {
            balance: self.balance_after,
            held: self.held_after,
        }
    }

    pub(crate) fn to_entry(&self, seq: u64) -> LedgerEntry {
        LedgerEntry {
            seq,
            at_ms: self.at_ms,
            account: self.account,
            kind: self.kind,
            amount: self.amount,
            hold: self.hold,
            request_id: self.request_id.clone(),
            reference: self.reference.clone(),
            estimated: self.estimated,
            balance_after: self.balance_after,
            held_after: self.held_after,
        }
    }
}

impl Ack {
    /// `callback` hears the outcome once the submission is durable.
    pub fn new(callback: impl FnOnce(Result<Durable, StorageError>) + Send + 'static) -> Ack {
        Ack {
            callback: Some(Box::new(callback)),
        }
    }

    /// An ack that sends its result on a channel, for threads that block.
    pub fn channel() -> (
        Ack,
        crossbeam_channel::Receiver<Result<Durable, StorageError>>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ack = Ack::new(move |result| {
            // The receiver may be gone; then nobody is waiting for the result.
            let _ = tx.send(result);
        });
        (ack, rx)
    }

    pub(crate) fn fire(mut self, result: Result<Durable, StorageError>) {
        if let Some(callback) = self.callback.take() {
            callback(result);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(callback) = self.callback.take() {
            callback(Err(StorageError::WriterClosed));
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack")
            .field("waiting", &self.callback.is_some())
            .finish()
    }
}
