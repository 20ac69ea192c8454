//! Staging a `PruneLedger`: which of the oldest entries go, and what the
//! checkpoint becomes once they are gone.
//!
//! The entries read are committed ones (a batch's new entries come after
//! every committed seq), at most `PRUNE_BATCH` past the checkpoint. The cut
//! is the last of them after which no hold is open, so a hold's opening is
//! never pruned while a later entry still names it; a window whose holds
//! never all close prunes nothing. Only one prune per batch: a second one
//! would have to see the first's index rewrites.

use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;

use super::Stage;
use crate::checkpoint::{LedgerCheckpoint, PRUNE_BATCH, PrunedReference};
use crate::codec::pair_key;
use crate::error::StorageError;
use crate::ids::{AccountId, HoldId};
use crate::ledger::{Book, EntryKind, LedgerEntry};
use crate::records::BalanceRow;
use crate::store::unpack_seqs;

/// What one prune changes, all in the batch's transaction.
#[derive(Debug)]
pub(in crate::writer) struct Pruned {
    pub(in crate::writer) checkpoint: LedgerCheckpoint,
    /// Accounts with pruned entries: their books after the last of them.
    pub(in crate::writer) books: HashMap<AccountId, BalanceRow>,
    /// References named by pruned `Topup` or `Refund` entries, in full.
    pub(in crate::writer) references: HashMap<String, PrunedReference>,
    /// The entries removed.
    pub(in crate::writer) seqs: RangeInclusive<u64>,
    /// `account_entries` keys rewritten (`Some`: the seqs left) or removed.
    pub(in crate::writer) index: Vec<IndexRewrite>,
}

/// One `account_entries` key and what it holds after a prune (`None`: gone).
pub(in crate::writer) type IndexRewrite = (Vec<u8>, Option<Vec<u8>>);

impl Stage<'_> {
    pub(super) fn prune(&mut self, op_index: usize, through_seq: u64) -> Result<(), StorageError> {
        if self.batch.pruned.is_some() || self.scratch.pruned.is_some() {
            return Err(StorageError::PruneRefused {
                op_index,
                reason: "another prune is in this batch; submit it again",
            });
        }
        let checkpoint = self.store.ledger_checkpoint()?.unwrap_or_default();
        let last = self.store.last_seq()?;
        let target = through_seq
            .min(last)
            .min(checkpoint.through_seq.saturating_add(PRUNE_BATCH));
        if target <= checkpoint.through_seq {
            return Ok(());
        }
        let mut entries = Vec::new();
        for entry in self.store.entries(checkpoint.through_seq + 1) {
            let entry = entry?;
            if entry.seq > target {
                break;
            }
            entries.push(entry);
        }
        let Some(cut) = last_without_open_holds(&entries) else {
            return Ok(());
        };
        entries.truncate(cut + 1);
        self.scratch.pruned = Some(self.fold(checkpoint, &entries)?);
        Ok(())
    }

    /// The checkpoint after `entries` (the next ones after `checkpoint`).
    fn fold(
        &self,
        mut checkpoint: LedgerCheckpoint,
        entries: &[LedgerEntry],
    ) -> Result<Pruned, StorageError> {
        let first = checkpoint.through_seq + 1;
        let mut books = HashMap::new();
        let mut references: HashMap<String, PrunedReference> = HashMap::new();
        for entry in entries {
            for (book, amount) in entry.postings() {
                match book {
                    Book::Revenue => checkpoint.revenue += i128::from(amount),
                    Book::External => checkpoint.external += i128::from(amount),
                    // An account's postings add up to its books, kept below.
                    Book::Available(_) | Book::Held(_) => {}
                }
            }
            let row = BalanceRow {
                books: entry.books_after(),
                last_seq: entry.seq,
            };
            books.insert(entry.account, row);
            if let (Some(reference), EntryKind::Topup | EntryKind::Refund) =
                (&entry.reference, entry.kind)
            {
                if !references.contains_key(reference) {
                    let stored = self.store.pruned_reference(reference)?;
                    references.insert(reference.clone(), stored.unwrap_or_default());
                }
                if let Some(money) = references.get_mut(reference) {
                    money.note(entry);
                }
            }
            checkpoint.max_hold = checkpoint.max_hold.max(entry.hold.map_or(0, HoldId::get));
            checkpoint.through_seq = entry.seq;
            checkpoint.through_at_ms = entry.at_ms;
        }
        let accounts: BTreeSet<AccountId> = entries.iter().map(|e| e.account).collect();
        let index = self.index_without(&accounts, checkpoint.through_seq)?;
        Ok(Pruned {
            checkpoint,
            books,
            references,
            seqs: first..=checkpoint.through_seq,
            index,
        })
    }

    /// The `account_entries` keys of `accounts` that list a seq up to
    /// `cut`, with only the seqs after it (`None`: none are left). A key
    /// is an account and the first of its seqs in one batch, so every key
    /// listing a pruned seq starts at or before the cut.
    fn index_without(
        &self,
        accounts: &BTreeSet<AccountId>,
        cut: u64,
    ) -> Result<Vec<IndexRewrite>, StorageError> {
        let mut index = Vec::new();
        for account in accounts {
            let range = pair_key(account.get(), 0)..=pair_key(account.get(), cut);
            for item in self.store.trees.account_entries.range(range) {
                let (key, packed) = item.map_err(StorageError::sled("scan account entries"))?;
                let left: Vec<u8> = unpack_seqs(&packed)
                    .filter(|seq| *seq > cut)
                    .flat_map(u64::to_be_bytes)
                    .collect();
                index.push((key.to_vec(), (!left.is_empty()).then_some(left)));
            }
        }
        Ok(index)
    }
}

/// The index of the last entry after which every hold opened so far is
/// closed (the hold rules of `Stage::hold_change`, replayed), if any.
fn last_without_open_holds(entries: &[LedgerEntry]) -> Option<usize> {
    let mut open: HashMap<HoldId, i128> = HashMap::new();
    let mut last = None;
    for (index, entry) in entries.iter().enumerate() {
        if let Some(hold) = entry.hold {
            let amount = i128::from(entry.amount.get());
            match entry.kind {
                EntryKind::Hold => {
                    open.insert(hold, amount);
                }
                EntryKind::Extend => *open.entry(hold).or_default() += amount,
                _ => {
                    // A hold opened before the window would show here as
                    // negative and never close: the prune stops short.
                    let left = open.entry(hold).or_default();
                    *left -= amount;
                    if *left == 0 {
                        open.remove(&hold);
                    }
                }
            }
        }
        if open.is_empty() {
            last = Some(index);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::super::{Changes, stage};
    use crate::error::StorageError;
    use crate::ids::AccountId;
    use crate::ledger::{Books, EntryKind};
    use crate::money::Nanos;
    use crate::ops::{NewEntry, WriteOp};
    use crate::records::AccountRecord;
    use crate::store::Store;
    use crate::writer::{LedgerWriter, WriterConfig};

    /// A store with five top-ups, its writer closed so tests stage directly.
    fn store_with_entries() -> Store {
        let store = Store::temporary().unwrap();
        let (writer, join) = LedgerWriter::start(store.clone(), WriterConfig::default()).unwrap();
        let account = AccountId::new(1);
        let record = AccountRecord {
            id: account,
            email: "prune@example.com".into(),
            created_ms: 1,
            disabled: false,
            floor: Nanos::ZERO,
            deleted_ms: None,
        };
        writer
            .submit_wait(vec![WriteOp::PutAccount(record)])
            .unwrap();
        for n in 1..=5 {
            let after = Books {
                balance: Nanos::new(n),
                held: Nanos::ZERO,
            };
            let entry = NewEntry::new(1, account, EntryKind::Topup, Nanos::new(1), after);
            writer.submit_wait(vec![WriteOp::Entry(entry)]).unwrap();
        }
        writer.close();
        join.join().unwrap();
        store
    }

    #[test]
    fn a_second_prune_in_the_same_batch_is_refused() {
        let store = store_with_entries();
        let prune = |through_seq| vec![WriteOp::PruneLedger { through_seq }];
        let first = stage(&store, &Changes::default(), 6, &prune(2)).unwrap();
        let pruned = first.pruned.as_ref().unwrap();
        assert_eq!(pruned.seqs, 1..=2);
        assert_eq!(pruned.checkpoint.external, -2);
        let mut batch = Changes::default();
        batch.absorb(first);
        let second = stage(&store, &batch, 6, &prune(4));
        assert!(matches!(second, Err(StorageError::PruneRefused { .. })));
        // Nothing to prune is not an error: it changes nothing.
        let none = stage(&store, &Changes::default(), 6, &prune(0)).unwrap();
        assert!(none.is_empty());
    }
}
