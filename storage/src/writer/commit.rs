//! Writing one batch's `Changes` atomically: a single sled transaction over
//! all the trees it touches. sled seals a transaction's writes in its log as
//! one unit, so after a crash either all of a batch is there or none of it.
//!
//! Trees are committed in a fixed order that `verify` relies on to check a
//! live store: `balances` before `holds`, `balances` before the payment
//! trees, the ledger checkpoint after the entries a prune removes, and
//! `meta` (the last committed seq) last, so a reader that sees a seq in
//! `meta` sees everything written up to it.

use std::collections::BTreeMap;
use std::convert::Infallible;

use sled::IVec;
use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional};

use super::stage::{Changes, Pruned};
use crate::checkpoint::{META_KEY, books_key, reference_key};
use crate::codec::{encode, pair_key, read_u64};
use crate::error::StorageError;
use crate::payments::account_payment_key;
use crate::store::{META_LAST_SEQ, Store};

const ENTRIES: usize = 0;
const ACCOUNT_ENTRIES: usize = 1;
const USAGE: usize = 2;
const ACCOUNTS: usize = 3;
const EMAILS: usize = 4;
const KEYS: usize = 5;
const KEY_IDS: usize = 6;
const ACCOUNT_KEYS: usize = 7;
const BALANCES: usize = 8;
const HOLDS: usize = 9;
const PAYMENTS: usize = 10;
const ACCOUNT_PAYMENTS: usize = 11;
const PAYMENT_INTENTS: usize = 12;
const STRIPE_EVENTS: usize = 13;
const CHECKPOINT: usize = 14;
const META: usize = 15;
const TREES: usize = 16;

/// A write to one tree: `None` removes the key.
type Write = (IVec, Option<IVec>);

/// Writes `changes` in one transaction; does not flush.
pub(super) fn write(store: &Store, changes: &Changes) -> Result<(), StorageError> {
    let writes = encode_all(changes)?;
    let t = &store.trees;
    let trees = [
        &t.entries,
        &t.account_entries,
        &t.usage,
        &t.accounts,
        &t.emails,
        &t.keys,
        &t.key_ids,
        &t.account_keys,
        &t.balances,
        &t.holds,
        &t.payments,
        &t.account_payments,
        &t.payment_intents,
        &t.stripe_events,
        &t.checkpoint,
        &t.meta,
    ];
    // Only the trees this batch writes take part: sled's transaction costs
    // per participating tree (a typical billed batch touches 6 of the 16).
    // The fixed order above is kept.
    let (trees, writes): (Vec<&sled::Tree>, Vec<&Vec<Write>>) = trees
        .into_iter()
        .zip(&writes)
        .filter(|(_, writes)| !writes.is_empty())
        .unzip();
    if trees.is_empty() {
        return Ok(());
    }
    let result = trees[..].transaction(|tx| -> ConflictableTransactionResult<(), Infallible> {
        for (tree, writes) in tx.iter().zip(&writes) {
            for (key, value) in writes.iter() {
                match value {
                    Some(value) => tree.insert(key.clone(), value.clone())?,
                    None => tree.remove(key.clone())?,
                };
            }
        }
        Ok(())
    });
    result.map_err(|err| match err {
        TransactionError::Storage(source) => StorageError::sled("commit a batch")(source),
        TransactionError::Abort(never) => match never {},
    })
}

fn encode_all(changes: &Changes) -> Result<[Vec<Write>; TREES], StorageError> {
    let mut writes: [Vec<Write>; TREES] = Default::default();
    // The per-account index gets one key per account per batch, holding
    // that account's seqs in the batch: an index key per entry nearly
    // doubled the time a batch takes to commit.
    let mut seqs_per_account: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for entry in &changes.entries {
        let seq = entry.seq.to_be_bytes();
        writes[ENTRIES].push(put(seq, encode("a ledger entry", entry)?));
        seqs_per_account
            .entry(entry.account.get())
            .or_default()
            .extend_from_slice(&seq);
    }
    for (account, seqs) in seqs_per_account {
        let first = read_u64(&seqs, 0).unwrap_or_default();
        writes[ACCOUNT_ENTRIES].push(put(pair_key(account, first), seqs));
    }
    if let Some(last) = changes.entries.last() {
        writes[META].push(put(META_LAST_SEQ, last.seq.to_be_bytes().to_vec()));
    }
    for (key, usage) in &changes.usage {
        writes[USAGE].push(put(key, encode("a usage record", usage)?));
    }
    for (id, account) in &changes.accounts {
        writes[ACCOUNTS].push(put(id.to_key(), encode("an account", account)?));
    }
    for (email, owner) in &changes.emails {
        let owner = owner.map(|id| IVec::from(&id.to_key()[..]));
        writes[EMAILS].push((IVec::from(email.as_bytes()), owner));
    }
    for (hash, key) in &changes.keys {
        writes[KEYS].push(put(hash, encode("an API key", key)?));
        writes[KEY_IDS].push(put(key.id.to_key(), hash.to_vec()));
        let index = pair_key(key.account.get(), key.id.get());
        writes[ACCOUNT_KEYS].push(put(index, hash.to_vec()));
    }
    for (id, row) in &changes.balances {
        writes[BALANCES].push(put(id.to_key(), encode("a balance row", row)?));
    }
    for (id, hold) in &changes.holds {
        let value = hold
            .as_ref()
            .map(|open| encode("an open hold", open))
            .transpose()?;
        writes[HOLDS].push((IVec::from(&id.to_key()[..]), value.map(IVec::from)));
    }
    for (session, payment) in &changes.payments {
        writes[PAYMENTS].push(put(session, encode("a payment", payment)?));
        if let Some(account) = payment.account {
            let index = account_payment_key(account, session);
            writes[ACCOUNT_PAYMENTS].push(put(index, Vec::new()));
        }
        if let Some(intent) = &payment.payment_intent {
            writes[PAYMENT_INTENTS].push(put(intent, session.as_bytes().to_vec()));
        }
    }
    for (key, at_ms) in &changes.processed {
        writes[STRIPE_EVENTS].push(put(key, at_ms.to_be_bytes().to_vec()));
    }
    if let Some(pruned) = &changes.pruned {
        encode_prune(pruned, &mut writes)?;
    }
    Ok(writes)
}

/// A prune: its entries and their index removed, the checkpoint moved.
fn encode_prune(pruned: &Pruned, writes: &mut [Vec<Write>; TREES]) -> Result<(), StorageError> {
    for seq in pruned.seqs.clone() {
        writes[ENTRIES].push((IVec::from(&seq.to_be_bytes()[..]), None));
    }
    for (key, seqs) in &pruned.index {
        writes[ACCOUNT_ENTRIES].push((IVec::from(&key[..]), seqs.as_deref().map(IVec::from)));
    }
    let checkpoint = &mut writes[CHECKPOINT];
    checkpoint.push(put(META_KEY, encode("a checkpoint", &pruned.checkpoint)?));
    for (account, row) in &pruned.books {
        checkpoint.push(put(books_key(*account), encode("a checkpoint", row)?));
    }
    for (reference, money) in &pruned.references {
        checkpoint.push(put(
            reference_key(reference),
            encode("a checkpoint", money)?,
        ));
    }
    Ok(())
}

fn put(key: impl AsRef<[u8]>, value: Vec<u8>) -> Write {
    (IVec::from(key.as_ref()), Some(IVec::from(value)))
}
