//! Staging: checks one submission against the store plus what earlier
//! submissions of the same batch changed, and turns it into `Changes`.
//! Nothing here writes to sled; a refused submission leaves no trace.

use std::collections::{HashMap, HashSet};

mod payments;
#[cfg(test)]
mod payments_tests;
mod prune;

pub(super) use self::prune::Pruned;

use crate::codec::{normalize_email, usage_key};
use crate::error::StorageError;
use crate::ids::{AccountId, HoldId, KeyId};
use crate::ledger::{EntryKind, LedgerEntry, LedgerError, apply};
use crate::ops::{NewEntry, WriteOp};
use crate::payments::PaymentRecord;
use crate::records::{AccountRecord, BalanceRow, KeyRecord, OpenHold, UsageRecord};
use crate::store::Store;

/// Everything a batch (or one staged submission) changes. Maps hold the
/// latest value per key; `None` in `emails`/`holds` means "remove".
#[derive(Default)]
pub(super) struct Changes {
    pub(super) entries: Vec<LedgerEntry>,
    pub(super) usage: Vec<([u8; 24], UsageRecord)>,
    pub(super) accounts: HashMap<AccountId, AccountRecord>,
    pub(super) emails: HashMap<String, Option<AccountId>>,
    pub(super) keys: HashMap<[u8; 32], KeyRecord>,
    pub(super) balances: HashMap<AccountId, BalanceRow>,
    pub(super) holds: HashMap<HoldId, Option<OpenHold>>,
    /// Stripe payments by session id.
    pub(super) payments: HashMap<String, PaymentRecord>,
    /// Stripe event ids and refund keys marked processed, with when.
    pub(super) processed: HashMap<String, u64>,
    /// The oldest entries removed by retention, and the new checkpoint.
    pub(super) pruned: Option<prune::Pruned>,
    /// Holds opened by these changes (so absent from the store). One that
    /// is also closed here is dropped from `holds` instead of becoming a
    /// removal: most requests open and close their hold within one batch,
    /// and a sled write saved per request is measurable.
    fresh_holds: HashSet<HoldId>,
}

/// Stages `ops` on top of `batch`; their entries get seqs from `first_seq`.
pub(super) fn stage(
    store: &Store,
    batch: &Changes,
    first_seq: u64,
    ops: &[WriteOp],
) -> Result<Changes, StorageError> {
    let mut stage = Stage {
        store,
        batch,
        scratch: Changes::default(),
        first_seq,
        credits: Vec::new(),
    };
    for (op_index, op) in ops.iter().enumerate() {
        match op {
            WriteOp::Entry(entry) => stage.entry(op_index, entry)?,
            WriteOp::Checkpoint {
                hold,
                prompt_tokens,
                completion_tokens,
            } => {
                stage.checkpoint(*hold, (*prompt_tokens, *completion_tokens))?;
            }
            WriteOp::PutAccount(account) => stage.put_account(op_index, account)?,
            WriteOp::PutKey { hash, record } => stage.put_key(op_index, *hash, record)?,
            WriteOp::PutUsage(usage) => stage.put_usage(usage)?,
            WriteOp::PutPayment(payment) => stage.put_payment(op_index, payment)?,
            WriteOp::MarkProcessed { key, at_ms } => stage.mark_processed(op_index, key, *at_ms)?,
            WriteOp::PruneLedger { through_seq } => stage.prune(op_index, *through_seq)?,
            // Only asks for a flush; see `write_batch`.
            WriteOp::Sync => {}
        }
    }
    stage.check_credits(ops)?;
    Ok(stage.scratch)
}

impl Changes {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.usage.is_empty()
            && self.accounts.is_empty()
            && self.emails.is_empty()
            && self.keys.is_empty()
            && self.balances.is_empty()
            && self.holds.is_empty()
            && self.payments.is_empty()
            && self.processed.is_empty()
            && self.pruned.is_none()
    }

    /// Records a hold's new state; `opened` marks a hold this entry opens.
    fn set_hold(&mut self, hold: HoldId, state: Option<OpenHold>, opened: bool) {
        if opened {
            self.fresh_holds.insert(hold);
        }
        if state.is_none() && self.fresh_holds.remove(&hold) {
            self.holds.remove(&hold);
        } else {
            self.holds.insert(hold, state);
        }
    }

    /// Adds a later submission's changes; later values win.
    pub(super) fn absorb(&mut self, later: Changes) {
        self.entries.extend(later.entries);
        self.usage.extend(later.usage);
        self.accounts.extend(later.accounts);
        self.emails.extend(later.emails);
        self.keys.extend(later.keys);
        self.balances.extend(later.balances);
        self.payments.extend(later.payments);
        self.processed.extend(later.processed);
        if later.pruned.is_some() {
            self.pruned = later.pruned;
        }
        for (hold, state) in later.holds {
            let opened = later.fresh_holds.contains(&hold);
            self.set_hold(hold, state, opened);
        }
    }
}

/// Reads see this submission's changes, then the batch's, then the store.
struct Stage<'a> {
    store: &'a Store,
    batch: &'a Changes,
    scratch: Changes,
    first_seq: u64,
    /// Payments this submission marks paid, with their op index: each needs
    /// its `Topup` entry in the same submission (`check_credits`).
    credits: Vec<(usize, String)>,
}

impl Stage<'_> {
    fn entry(&mut self, op_index: usize, entry: &NewEntry) -> Result<(), StorageError> {
        let reject = |source| StorageError::Rejected { op_index, source };
        let account = entry.account;
        if !self.account_exists(account)? {
            return Err(reject(LedgerError::UnknownAccount { account }));
        }
        let row = self.balance(account)?;
        let actual = apply(row.books, entry.kind, entry.amount).map_err(reject)?;
        let claimed = entry.books_after();
        if claimed != actual {
            return Err(reject(LedgerError::Diverged {
                account,
                kind: entry.kind,
                claimed,
                actual,
            }));
        }
        let hold_change = self.hold_change(entry).map_err(|rule| match rule {
            Refusal::Rule(source) => reject(source),
            Refusal::Storage(err) => err,
        })?;
        let seq = self.first_seq + self.scratch.entries.len() as u64;
        self.scratch.entries.push(entry.to_entry(seq));
        self.scratch.balances.insert(
            account,
            BalanceRow {
                books: actual,
                last_seq: seq,
            },
        );
        if let Some((hold, state)) = hold_change {
            self.scratch
                .set_hold(hold, state, entry.kind == EntryKind::Hold);
        }
        Ok(())
    }

    /// What `entry` does to its hold: the closing rule lives here. A hold is
    /// opened by `Hold`, grown by `Extend`, and shrunk by `Settle`, `Release`
    /// and `Recovered`; the entry that leaves it at exactly zero closes it
    /// (the row is removed). Taking more than remains is refused.
    fn hold_change(&self, entry: &NewEntry) -> Result<Option<(HoldId, Option<OpenHold>)>, Refusal> {
        let kind = entry.kind;
        let Some(hold) = entry.hold else {
            return if kind.needs_hold() {
                Err(LedgerError::HoldRequired { kind }.into())
            } else {
                Ok(None)
            };
        };
        if !kind.needs_hold() {
            return Err(LedgerError::HoldNotExpected { kind }.into());
        }
        let current = self.hold(hold)?;
        if kind == EntryKind::Hold {
            if current.is_some() {
                return Err(LedgerError::HoldAlreadyOpen { hold }.into());
            }
            let price = entry.price.ok_or(LedgerError::PriceRequired { hold })?;
            let opened = OpenHold {
                hold,
                account: entry.account,
                amount: entry.amount,
                request_id: entry.request_id.clone(),
                opened_ms: entry.at_ms,
                checkpoint_tokens: None,
                price,
            };
            return Ok(Some((hold, Some(opened))));
        }
        let mut open = current.ok_or(LedgerError::HoldNotOpen { hold, kind })?;
        if open.account != entry.account {
            let (owner, account) = (open.account, entry.account);
            return Err(LedgerError::HoldAccountMismatch {
                hold,
                owner,
                account,
            }
            .into());
        }
        if kind == EntryKind::Extend {
            open.amount = open
                .amount
                .checked_add(entry.amount)
                .ok_or(LedgerError::Overflow { kind })?;
            return Ok(Some((hold, Some(open))));
        }
        let remaining = open.amount;
        open.amount = remaining
            .checked_sub(entry.amount)
            .filter(|left| !left.is_negative())
            .ok_or(LedgerError::HoldExceeded {
                hold,
                kind,
                remaining,
                amount: entry.amount,
            })?;
        let closed = open.amount.is_zero();
        Ok(Some((hold, if closed { None } else { Some(open) })))
    }

    fn checkpoint(&mut self, hold: HoldId, tokens: (u64, u64)) -> Result<(), StorageError> {
        // A checkpoint racing its own settlement finds the hold closed; the
        // settlement is what counts, so this is not an error.
        if let Some(mut open) = self.hold(hold)? {
            open.checkpoint_tokens = Some(tokens);
            self.scratch.holds.insert(hold, Some(open));
        }
        Ok(())
    }

    fn put_account(
        &mut self,
        op_index: usize,
        account: &AccountRecord,
    ) -> Result<(), StorageError> {
        let email = normalize_email(&account.email);
        if !email.is_empty() {
            if let Some(owner) = self
                .email_owner(&email)?
                .filter(|owner| *owner != account.id)
            {
                return Err(StorageError::EmailTaken {
                    op_index,
                    email,
                    owner,
                });
            }
        }
        if let Some(previous) = self.account(account.id)? {
            let previous = normalize_email(&previous.email);
            if previous != email && !previous.is_empty() {
                self.scratch.emails.insert(previous, None);
            }
        }
        if !email.is_empty() {
            self.scratch.emails.insert(email, Some(account.id));
        }
        self.scratch.accounts.insert(account.id, account.clone());
        Ok(())
    }

    fn put_key(
        &mut self,
        op_index: usize,
        hash: [u8; 32],
        record: &KeyRecord,
    ) -> Result<(), StorageError> {
        let conflict = |reason| StorageError::KeyConflict {
            op_index,
            key: record.id,
            reason,
        };
        if self.account(record.account)?.is_none() {
            return Err(StorageError::UnknownAccount {
                op_index,
                account: record.account,
            });
        }
        if self
            .key_hash(record.id)?
            .is_some_and(|existing| existing != hash)
        {
            return Err(conflict("already has a different secret"));
        }
        if let Some(existing) = self.key(&hash)? {
            if existing.id != record.id {
                return Err(conflict("has a secret that belongs to another key"));
            }
            if existing.account != record.account {
                return Err(conflict("cannot move to another account"));
            }
            // A revoked key is revoked forever: no later write may revive it
            // (say, a last-used update made from a stale copy).
            if existing.revoked_ms.is_some() && record.revoked_ms.is_none() {
                return Err(conflict("is revoked and stays revoked"));
            }
        }
        self.scratch.keys.insert(hash, record.clone());
        Ok(())
    }

    fn put_usage(&mut self, usage: &UsageRecord) -> Result<(), StorageError> {
        // sled's ids are crash-safe and unique, so two requests of the same
        // account in the same millisecond get distinct keys.
        let unique = self
            .store
            .db
            .generate_id()
            .map_err(StorageError::sled("generate an id"))?;
        let key = usage_key(usage.account.get(), usage.at_ms, unique);
        self.scratch.usage.push((key, usage.clone()));
        Ok(())
    }

    fn account(&self, id: AccountId) -> Result<Option<AccountRecord>, StorageError> {
        match layered(&self.scratch.accounts, &self.batch.accounts, &id) {
            Some(account) => Ok(Some(account.clone())),
            None => self.store.account(id),
        }
    }

    fn account_exists(&self, id: AccountId) -> Result<bool, StorageError> {
        if layered(&self.scratch.accounts, &self.batch.accounts, &id).is_some() {
            return Ok(true);
        }
        let found = self.store.trees.accounts.contains_key(id.to_key());
        found.map_err(StorageError::sled("read accounts"))
    }

    fn balance(&self, id: AccountId) -> Result<BalanceRow, StorageError> {
        match layered(&self.scratch.balances, &self.batch.balances, &id) {
            Some(row) => Ok(*row),
            None => Ok(self.store.balance_row(id)?.unwrap_or_default()),
        }
    }

    fn hold(&self, hold: HoldId) -> Result<Option<OpenHold>, StorageError> {
        match layered(&self.scratch.holds, &self.batch.holds, &hold) {
            Some(state) => Ok(state.clone()),
            None => self.store.open_hold(hold),
        }
    }

    fn email_owner(&self, email: &str) -> Result<Option<AccountId>, StorageError> {
        match layered(&self.scratch.emails, &self.batch.emails, email) {
            Some(owner) => Ok(*owner),
            None => Ok(self
                .store
                .account_by_email(email)?
                .map(|account| account.id)),
        }
    }

    fn key(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>, StorageError> {
        match layered(&self.scratch.keys, &self.batch.keys, hash) {
            Some(record) => Ok(Some(record.clone())),
            None => self.store.key_by_hash(hash),
        }
    }

    fn key_hash(&self, id: KeyId) -> Result<Option<[u8; 32]>, StorageError> {
        let staged = [&self.scratch.keys, &self.batch.keys]
            .into_iter()
            .find_map(|keys| {
                keys.iter()
                    .find(|(_, record)| record.id == id)
                    .map(|(hash, _)| *hash)
            });
        match staged {
            Some(hash) => Ok(Some(hash)),
            None => self.store.key_hash(id),
        }
    }
}

/// Why a hold rule refused an entry, or a read failed while checking it.
enum Refusal {
    Rule(LedgerError),
    Storage(StorageError),
}

impl From<LedgerError> for Refusal {
    fn from(err: LedgerError) -> Refusal {
        Refusal::Rule(err)
    }
}

impl From<StorageError> for Refusal {
    fn from(err: StorageError) -> Refusal {
        Refusal::Storage(err)
    }
}

fn layered<'m, K, V, Q>(top: &'m HashMap<K, V>, below: &'m HashMap<K, V>, key: &Q) -> Option<&'m V>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    top.get(key).or_else(|| below.get(key))
}
