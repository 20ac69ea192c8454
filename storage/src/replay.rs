//! Replaying the ledger from its entries alone: books per account, postings
//! per book and the life of every hold, noting every inconsistency. Used by
//! `verify`, which then compares the result with the stored state.

use std::collections::{BTreeMap, HashMap};

use crate::checkpoint::CheckpointState;
use crate::ids::{AccountId, HoldId};
use crate::ledger::{Book, EntryKind, LedgerEntry, apply};
use crate::money::Nanos;
use crate::records::BalanceRow;

/// Problems beyond this many are counted, not kept.
const MAX_PROBLEMS: usize = 1000;

pub(crate) struct Replay {
    floors: HashMap<AccountId, Nanos>,
    /// The seq the next entry must have.
    pub(crate) next_seq: u64,
    pub(crate) entries: u64,
    pub(crate) accounts: BTreeMap<AccountId, BalanceRow>,
    pub(crate) postings: HashMap<Book, i128>,
    pub(crate) holds: BTreeMap<HoldId, HoldReplay>,
    /// Per account: how many entries, and the sum of their seqs — what the
    /// `account_entries` index must list.
    pub(crate) seq_fingerprints: HashMap<AccountId, SeqFingerprint>,
    pub(crate) problems: Problems,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqFingerprint {
    pub(crate) count: u64,
    pub(crate) sum: u128,
}

pub(crate) struct HoldReplay {
    pub(crate) account: AccountId,
    /// Hold + extends.
    pub(crate) reserved: i128,
    /// Settles + releases + recovered.
    pub(crate) taken: i128,
    pub(crate) closed: bool,
}

#[derive(Default)]
pub(crate) struct Problems {
    pub(crate) kept: Vec<String>,
    pub(crate) omitted: u64,
}

impl Replay {
    pub(crate) fn new(floors: HashMap<AccountId, Nanos>) -> Replay {
        Replay {
            floors,
            next_seq: 1,
            entries: 0,
            accounts: BTreeMap::new(),
            postings: HashMap::new(),
            holds: BTreeMap::new(),
            seq_fingerprints: HashMap::new(),
            problems: Problems::default(),
        }
    }

    /// A replay that starts after the ledger checkpoint: every account
    /// with pruned entries at its books then, and the postings those
    /// entries made (an account's add up to its books).
    pub(crate) fn from_checkpoint(
        floors: HashMap<AccountId, Nanos>,
        state: &CheckpointState,
    ) -> Replay {
        let mut replay = Replay::new(floors);
        let checkpoint = &state.checkpoint;
        replay.next_seq = checkpoint.through_seq + 1;
        for (account, row) in &state.books {
            replay.accounts.insert(*account, *row);
            let available = i128::from(row.books.available().get());
            let held = i128::from(row.books.held.get());
            *replay
                .postings
                .entry(Book::Available(*account))
                .or_default() += available;
            *replay.postings.entry(Book::Held(*account)).or_default() += held;
        }
        if checkpoint.through_seq > 0 {
            replay.postings.insert(Book::Revenue, checkpoint.revenue);
            replay.postings.insert(Book::External, checkpoint.external);
        }
        replay
    }

    pub(crate) fn step(&mut self, entry: &LedgerEntry) {
        let seq = entry.seq;
        self.entries += 1;
        if seq != self.next_seq {
            self.problems
                .add(format!("entry {seq}: expected seq {}", self.next_seq));
        }
        self.next_seq = seq.saturating_add(1);
        self.seq_fingerprints
            .entry(entry.account)
            .or_default()
            .add(seq);
        let floor = self.floors.get(&entry.account).copied().unwrap_or_else(|| {
            self.problems
                .add(format!("entry {seq}: unknown account {}", entry.account));
            Nanos::ZERO
        });
        let row = self.accounts.entry(entry.account).or_default();
        row.last_seq = seq;
        let before = row.books;
        let after = match apply(before, entry.kind, entry.amount) {
            Ok(after) => after,
            Err(err) => {
                self.problems.add(format!("entry {seq}: {err}"));
                return;
            }
        };
        row.books = after;
        if entry.books_after() != after {
            let claimed = entry.books_after();
            self.problems.add(format!(
                "entry {seq}: says books after are {claimed:?}, replay gives {after:?}"
            ));
        }
        let available = after.available();
        if available < before.available() && available < floor {
            self.problems.add(format!(
                "entry {seq}: {} available is below {}'s floor of {floor}",
                available, entry.account
            ));
        }
        for (book, amount) in entry.postings() {
            *self.postings.entry(book).or_default() += i128::from(amount);
        }
        self.hold_step(entry);
    }

    /// The hold rules of the writer, replayed: a hold is opened once, by
    /// `Hold`; grown by `Extend`; shrunk by `Settle`/`Release`/`Recovered`;
    /// closed by the entry that leaves it at zero; untouched after that.
    fn hold_step(&mut self, entry: &LedgerEntry) {
        let (seq, kind) = (entry.seq, entry.kind);
        let hold = match (entry.hold, kind.needs_hold()) {
            (Some(hold), true) => hold,
            (None, false) => return,
            (Some(_), false) => {
                return self
                    .problems
                    .add(format!("entry {seq}: {kind:?} names a hold"));
            }
            (None, true) => {
                return self
                    .problems
                    .add(format!("entry {seq}: {kind:?} names no hold"));
            }
        };
        let amount = i128::from(entry.amount.get());
        if kind == EntryKind::Hold {
            if self.holds.contains_key(&hold) {
                return self
                    .problems
                    .add(format!("entry {seq}: {hold} opened twice"));
            }
            let opened = HoldReplay {
                account: entry.account,
                reserved: amount,
                taken: 0,
                closed: false,
            };
            self.holds.insert(hold, opened);
            return;
        }
        let problem = match self.holds.get_mut(&hold) {
            None => Some(format!(
                "entry {seq}: {kind:?} for {hold} before it was opened"
            )),
            Some(replay) if replay.closed => {
                Some(format!("entry {seq}: {kind:?} for {hold} after it closed"))
            }
            Some(replay) if replay.account != entry.account => Some(format!(
                "entry {seq}: {hold} belongs to {}, not {}",
                replay.account, entry.account
            )),
            Some(replay) if kind == EntryKind::Extend => {
                replay.reserved += amount;
                None
            }
            Some(replay) => {
                replay.taken += amount;
                replay.closed = replay.remaining() == 0;
                (replay.remaining() < 0)
                    .then(|| format!("entry {seq}: more taken from {hold} than it held"))
            }
        };
        if let Some(problem) = problem {
            self.problems.add(problem);
        }
    }
}

impl SeqFingerprint {
    pub(crate) fn add(&mut self, seq: u64) {
        self.count += 1;
        self.sum += u128::from(seq);
    }
}

impl HoldReplay {
    pub(crate) fn remaining(&self) -> i128 {
        self.reserved - self.taken
    }
}

impl Problems {
    pub(crate) fn add(&mut self, problem: String) {
        if self.kept.len() < MAX_PROBLEMS {
            self.kept.push(problem);
        } else {
            self.omitted += 1;
        }
    }
}
