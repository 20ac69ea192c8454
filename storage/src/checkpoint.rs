//! The ledger checkpoint: what the entries removed by retention added up
//! to, so the ledger can lose its oldest entries and still be audited
//! exactly. `verify` starts from it instead of seq 1 (books per account,
//! the Revenue and External postings, the money of every payment
//! reference), the Postgres snapshot carries it, and a restore installs it.
//!
//! It lives in the `ledger_checkpoint` tree: `m` → [`LedgerCheckpoint`],
//! `a` ++ account → the account's `BalanceRow` after its last pruned entry,
//! `r` ++ reference → a [`PrunedReference`]. Only the writer changes it
//! (`WriteOp::PruneLedger`, `writer/stage/prune.rs`), in the same
//! transaction that removes the entries; a restore writes it into an empty
//! store ([`Store::install_checkpoint`]) before its writer starts.
//!
//! **Invariant:** no hold is open at the checkpoint: every hold opened by
//! a pruned entry was closed by a pruned entry, so the entries left never
//! name a hold whose opening is gone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, read_u64};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::payments::{PaymentRecord, account_payment_key};
use crate::records::BalanceRow;
use crate::store::{META_LAST_SEQ, Store};

/// Most entries one `PruneLedger` removes, so a prune never makes the
/// writer's batch (and its transaction) large.
pub const PRUNE_BATCH: u64 = 1_000;

pub(crate) const META_KEY: &[u8] = b"m";
const BOOKS_PREFIX: u8 = b'a';
const REFERENCE_PREFIX: u8 = b'r';

/// Where the ledger starts now, and what came before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCheckpoint {
    /// Every entry with a seq up to this one was pruned.
    pub through_seq: u64,
    /// The time of the entry at `through_seq`.
    pub through_at_ms: u64,
    /// What the pruned entries posted to `Book::Revenue` (settlements).
    pub revenue: i128,
    /// What they posted to `Book::External` (negative: money came in).
    pub external: i128,
    /// The highest hold id a pruned entry named: a restore must not hand
    /// it out again.
    pub max_hold: u64,
}

/// The money of the pruned `Topup` and `Refund` entries that name one
/// reference (a Stripe session id, or an operator's note).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedReference {
    pub topups: u32,
    pub topped_up: i128,
    pub refunded: i128,
    pub accounts: Vec<AccountId>,
    /// The seq of the last pruned entry that named it.
    pub last_seq: u64,
}

/// Everything the checkpoint holds, read as one consistent picture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointState {
    pub checkpoint: LedgerCheckpoint,
    pub books: BTreeMap<AccountId, BalanceRow>,
    pub references: BTreeMap<String, PrunedReference>,
}

impl PrunedReference {
    /// Adds a pruned `Topup` or `Refund` entry naming this reference.
    pub(crate) fn note(&mut self, entry: &LedgerEntry) {
        if entry.kind == EntryKind::Topup {
            self.topups += 1;
            self.topped_up += i128::from(entry.amount.get());
        } else {
            self.refunded += i128::from(entry.amount.get());
        }
        if !self.accounts.contains(&entry.account) {
            self.accounts.push(entry.account);
        }
        self.last_seq = entry.seq;
    }
}

pub(crate) fn books_key(account: AccountId) -> Vec<u8> {
    let mut key = vec![BOOKS_PREFIX];
    key.extend_from_slice(&account.get().to_be_bytes());
    key
}

pub(crate) fn reference_key(reference: &str) -> Vec<u8> {
    let mut key = vec![REFERENCE_PREFIX];
    key.extend_from_slice(reference.as_bytes());
    key
}

impl Store {
    /// The checkpoint, `None` while nothing was ever pruned.
    pub fn ledger_checkpoint(&self) -> Result<Option<LedgerCheckpoint>, StorageError> {
        let stored = self.trees.checkpoint.get(META_KEY);
        match stored.map_err(StorageError::sled("read the ledger checkpoint"))? {
            Some(bytes) => decode("ledger_checkpoint", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The pruned money of one reference, if a pruned entry named it.
    pub(crate) fn pruned_reference(
        &self,
        reference: &str,
    ) -> Result<Option<PrunedReference>, StorageError> {
        let stored = self.trees.checkpoint.get(reference_key(reference));
        match stored.map_err(StorageError::sled("read the ledger checkpoint"))? {
            Some(bytes) => decode("ledger_checkpoint", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The whole checkpoint. A prune committing during the read is seen by
    /// the checkpoint moving, and the read is made again; a store pruned
    /// without pause for that long is refused as busy.
    pub fn checkpoint_state(&self) -> Result<CheckpointState, StorageError> {
        for _ in 0..16 {
            let before = self.ledger_checkpoint()?;
            let state = self.read_checkpoint_rows(before.unwrap_or_default())?;
            if self.ledger_checkpoint()? == before {
                return Ok(state);
            }
        }
        Err(StorageError::Decode {
            tree: "ledger_checkpoint",
            message: "it kept moving while it was read".into(),
        })
    }

    fn read_checkpoint_rows(
        &self,
        checkpoint: LedgerCheckpoint,
    ) -> Result<CheckpointState, StorageError> {
        let mut state = CheckpointState {
            checkpoint,
            ..CheckpointState::default()
        };
        for item in self.trees.checkpoint.iter() {
            let (key, value) = item.map_err(StorageError::sled("scan the ledger checkpoint"))?;
            match key.first() {
                Some(&BOOKS_PREFIX) => {
                    let account = read_u64(&key, 1).map(AccountId::new);
                    let account = account.ok_or_else(|| StorageError::Decode {
                        tree: "ledger_checkpoint",
                        message: "short key".into(),
                    })?;
                    state
                        .books
                        .insert(account, decode("ledger_checkpoint", &value)?);
                }
                Some(&REFERENCE_PREFIX) => {
                    let reference = String::from_utf8_lossy(&key[1..]).into_owned();
                    state
                        .references
                        .insert(reference, decode("ledger_checkpoint", &value)?);
                }
                _ => {}
            }
        }
        Ok(state)
    }

    /// The last seq the next prune may reach for entries older than
    /// `cutoff_ms`: at most [`PRUNE_BATCH`] entries past the checkpoint,
    /// stopping at the first entry at or after the cutoff. `None` when the
    /// oldest entry left is not older than the cutoff.
    pub fn prune_target(&self, cutoff_ms: u64) -> Result<Option<u64>, StorageError> {
        let from = self.ledger_checkpoint()?.map_or(0, |c| c.through_seq) + 1;
        let mut target = None;
        for entry in self.entries(from).take(PRUNE_BATCH as usize) {
            let entry = entry?;
            if entry.at_ms >= cutoff_ms {
                break;
            }
            target = Some(entry.seq);
        }
        Ok(target)
    }

    /// Writes a checkpoint read from a snapshot into an empty store, with
    /// the balance rows it implies, the last seq it reached and the credited
    /// payments whose `Topup` it pruned (as they were when credited): what
    /// a restore does before its writer replays the entries after it.
    /// Refused on a store that has a ledger.
    pub(crate) fn install_checkpoint(
        &self,
        state: &CheckpointState,
        credited: &[PaymentRecord],
    ) -> Result<(), StorageError> {
        if self.last_seq()? != 0 || self.ledger_checkpoint()?.is_some() {
            return Err(StorageError::Decode {
                tree: "meta",
                message: "a checkpoint goes only into an empty store".into(),
            });
        }
        let mut checkpoint = sled::Batch::default();
        checkpoint.insert(META_KEY, encode("a checkpoint", &state.checkpoint)?);
        let mut balances = sled::Batch::default();
        for (account, row) in &state.books {
            checkpoint.insert(books_key(*account), encode("a checkpoint", row)?);
            balances.insert(&account.to_key()[..], encode("a balance row", row)?);
        }
        for (reference, money) in &state.references {
            checkpoint.insert(reference_key(reference), encode("a checkpoint", money)?);
        }
        let [mut payments, mut account_payments, mut intents] =
            [(); 3].map(|()| sled::Batch::default());
        for payment in credited {
            let session = payment.session_id.as_bytes();
            payments.insert(session, encode("a payment", payment)?);
            if let Some(account) = payment.account {
                let index = account_payment_key(account, &payment.session_id);
                account_payments.insert(index, Vec::new());
            }
            if let Some(intent) = &payment.payment_intent {
                intents.insert(intent.as_bytes(), session);
            }
        }
        let t = &self.trees;
        for (tree, batch) in [
            (&t.checkpoint, checkpoint),
            (&t.balances, balances),
            (&t.payments, payments),
            (&t.account_payments, account_payments),
            (&t.payment_intents, intents),
        ] {
            tree.apply_batch(batch)
                .map_err(StorageError::sled("install a checkpoint"))?;
        }
        let last_seq = state.checkpoint.through_seq.to_be_bytes();
        t.meta
            .insert(META_LAST_SEQ, &last_seq[..])
            .map_err(StorageError::sled("install a checkpoint"))?;
        self.db
            .flush()
            .map_err(StorageError::sled("flush the checkpoint"))?;
        Ok(())
    }
}
