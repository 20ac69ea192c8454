//! `Store::verify`, the audit behind `tokun ledger verify`: replays every
//! entry after the ledger checkpoint (`replay`, starting from what the
//! pruned entries added up to) and compares the result with the stored
//! balances and open holds; and `Store::export_jsonl`. Read-only.
//!
//! On a quiescent store the check is exact. On a live store it is still
//! sound: it replays up to the seq recorded in `meta` when it starts, and
//! skips (and counts) the accounts whose balance row moved past that seq
//! while it ran. This relies on the writer's commit order (`balances` before
//! `holds`, `meta` last) and on reading `holds` before `balances`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use serde::Serialize;

use crate::checkpoint::CheckpointState;
use crate::codec::{decode, read_u64};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::ledger::Book;
use crate::payments::PaymentEntries;
use crate::records::{AccountRecord, BalanceRow, OpenHold};
use crate::replay::{Replay, SeqFingerprint};
use crate::store::{Store, unpack_seqs};

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries replayed.
    pub entries: u64,
    /// The ledger checkpoint the replay started from: entries up to this
    /// seq were pruned by retention (0: none).
    pub pruned_through: u64,
    /// Accounts with at least one entry.
    pub accounts: u64,
    pub open_holds: u64,
    /// The seq the replay stopped at.
    pub last_seq: u64,
    /// Accounts written to while verify ran, so not compared.
    pub skipped_accounts: u64,
    /// What tokun earned: the sum of settled and recovered amounts.
    pub revenue: i128,
    /// Money in from outside (topups and credits − refunds and debits).
    pub external_in: i128,
    pub problems: Vec<String>,
    /// Problems found beyond those listed.
    pub problems_omitted: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }
}

impl Store {
    /// Recomputes every balance from the entries and checks: seqs are 1, 2,
    /// 3, … without gaps (after the checkpoint, when retention pruned the
    /// oldest: then the replay starts from the checkpoint's books, postings
    /// and payment money); every entry's books-after match the replay;
    /// every entry that lowers an account's available funds keeps them at
    /// or above the account's floor; stored balance rows match the replay;
    /// the double-entry postings sum to zero and match each account's
    /// available and held books; every closed hold took out exactly what
    /// went in; the `holds` tree holds exactly the unclosed holds with their
    /// remaining amounts, which add up to each account's held; every Stripe
    /// payment matches the entries that reference it (see `payments`).
    pub fn verify(&self) -> Result<VerifyReport, StorageError> {
        // A prune committing while the entries are read moves the
        // checkpoint: the replay is then made again from the new one.
        let mut attempts = 0;
        loop {
            let state = self.checkpoint_state()?;
            let report = self.verify_from(&state)?;
            attempts += 1;
            let moved = self.ledger_checkpoint()?.unwrap_or_default() != state.checkpoint;
            if !moved || attempts == 3 {
                return Ok(report);
            }
        }
    }

    fn verify_from(&self, state: &CheckpointState) -> Result<VerifyReport, StorageError> {
        let last_seq = self.last_seq()?;
        let mut replay = Replay::from_checkpoint(self.floors()?, state);
        let mut payment_entries = PaymentEntries::from_checkpoint(&state.references);
        for entry in self.entries(state.checkpoint.through_seq + 1) {
            let entry = entry?;
            if entry.seq > last_seq {
                break;
            }
            payment_entries.note(&entry);
            replay.step(&entry);
        }
        if replay.next_seq != last_seq + 1 {
            let ends = replay.next_seq.saturating_sub(1);
            replay
                .problems
                .add(format!("ledger ends at seq {ends}, meta says {last_seq}"));
        }
        // Order matters: holds, then balances (see the module docs).
        let holds = self.open_holds()?;
        let rows = self.balance_rows()?;
        let skipped: HashSet<AccountId> = rows
            .iter()
            .filter(|(_, row)| row.last_seq > last_seq)
            .map(|(id, _)| *id)
            .collect();
        compare_balances(&mut replay, &rows, &skipped);
        compare_postings(&mut replay, &skipped);
        compare_holds(&mut replay, &holds, &skipped);
        self.compare_index(&mut replay, last_seq)?;
        // After balances: see `verify_payments` for why the order matters.
        let mut payment_problems = Vec::new();
        self.verify_payments(&payment_entries, last_seq, &mut payment_problems)?;
        for problem in payment_problems {
            replay.problems.add(problem);
        }
        Ok(VerifyReport {
            entries: replay.entries,
            pruned_through: state.checkpoint.through_seq,
            accounts: replay.accounts.len() as u64,
            open_holds: holds.len() as u64,
            last_seq,
            skipped_accounts: skipped.len() as u64,
            revenue: replay.postings.get(&Book::Revenue).copied().unwrap_or(0),
            external_in: -replay.postings.get(&Book::External).copied().unwrap_or(0),
            problems: replay.problems.kept,
            problems_omitted: replay.problems.omitted,
        })
    }

    /// Writes every ledger entry as one JSON object per line; returns how
    /// many. Entries pruned by retention are not there: the first line's
    /// seq is one past the checkpoint (`ledger_checkpoint`).
    pub fn export_jsonl(&self, out: &mut impl Write) -> Result<u64, StorageError> {
        let failed = |err: &dyn std::fmt::Display| StorageError::Export {
            message: err.to_string(),
        };
        let mut count = 0;
        for entry in self.entries(0) {
            serde_json::to_writer(&mut *out, &entry?).map_err(|err| failed(&err))?;
            out.write_all(b"\n").map_err(|err| failed(&err))?;
            count += 1;
        }
        out.flush().map_err(|err| failed(&err))?;
        Ok(count)
    }

    fn floors(&self) -> Result<HashMap<AccountId, crate::money::Nanos>, StorageError> {
        let mut floors = HashMap::new();
        for item in self.trees.accounts.iter().values() {
            let account: AccountRecord = decode(
                "accounts",
                &item.map_err(StorageError::sled("scan accounts"))?,
            )?;
            floors.insert(account.id, account.floor);
        }
        Ok(floors)
    }

    /// The `account_entries` index must list every entry up to `last_seq`
    /// exactly once, under its account.
    fn compare_index(&self, replay: &mut Replay, last_seq: u64) -> Result<(), StorageError> {
        let mut indexed: HashMap<AccountId, SeqFingerprint> = HashMap::new();
        for item in self.trees.account_entries.iter() {
            let (key, seqs) = item.map_err(StorageError::sled("scan account entries"))?;
            let account = read_u64(&key, 0).map(AccountId::new);
            let short = || StorageError::Decode {
                tree: "account_entries",
                message: "short key".into(),
            };
            let fingerprint = indexed.entry(account.ok_or_else(short)?).or_default();
            unpack_seqs(&seqs)
                .filter(|seq| *seq <= last_seq)
                .for_each(|seq| fingerprint.add(seq));
        }
        let accounts: HashSet<AccountId> = indexed
            .keys()
            .chain(replay.seq_fingerprints.keys())
            .copied()
            .collect();
        for id in accounts {
            let listed = indexed.get(&id).copied().unwrap_or_default();
            if replay
                .seq_fingerprints
                .get(&id)
                .copied()
                .unwrap_or_default()
                != listed
            {
                replay.problems.add(format!(
                    "{id}: the account_entries index does not list its entries"
                ));
            }
        }
        Ok(())
    }

    fn balance_rows(&self) -> Result<BTreeMap<AccountId, BalanceRow>, StorageError> {
        let mut rows = BTreeMap::new();
        for item in self.trees.balances.iter() {
            let (key, value) = item.map_err(StorageError::sled("scan balances"))?;
            let id = read_u64(&key, 0).map(AccountId::new);
            let id = id.ok_or_else(|| StorageError::Decode {
                tree: "balances",
                message: "short key".into(),
            })?;
            rows.insert(id, decode("balances", &value)?);
        }
        Ok(rows)
    }
}

fn compare_balances(
    replay: &mut Replay,
    rows: &BTreeMap<AccountId, BalanceRow>,
    skipped: &HashSet<AccountId>,
) {
    for (id, replayed) in &replay.accounts {
        if skipped.contains(id) {
            continue;
        }
        match rows.get(id) {
            None => replay
                .problems
                .add(format!("{id} has entries but no balance row")),
            Some(row) if row != replayed => {
                replay
                    .problems
                    .add(format!("{id}: stored {row:?}, replay gives {replayed:?}"));
            }
            Some(_) => {}
        }
    }
    for (id, row) in rows {
        if !replay.accounts.contains_key(id) && !skipped.contains(id) {
            replay
                .problems
                .add(format!("{id} has a balance row {row:?} but no entries"));
        }
    }
}

fn compare_postings(replay: &mut Replay, skipped: &HashSet<AccountId>) {
    let total: i128 = replay.postings.values().sum();
    if total != 0 {
        replay
            .problems
            .add(format!("double-entry postings sum to {total}, not 0"));
    }
    for (id, row) in &replay.accounts {
        if skipped.contains(id) {
            continue;
        }
        let posted = |book| replay.postings.get(&book).copied().unwrap_or(0);
        let available = i128::from(row.books.available().get());
        let held = i128::from(row.books.held.get());
        if posted(Book::Available(*id)) != available || posted(Book::Held(*id)) != held {
            replay
                .problems
                .add(format!("{id}: postings disagree with the replayed books"));
        }
    }
}

fn compare_holds(replay: &mut Replay, stored: &[OpenHold], skipped: &HashSet<AccountId>) {
    let stored_by_id: HashMap<_, _> = stored.iter().map(|open| (open.hold, open)).collect();
    let mut open_per_account: HashMap<AccountId, i128> = HashMap::new();
    let mut problems = Vec::new();
    for (hold, life) in &replay.holds {
        if life.closed {
            if life.reserved != life.taken {
                problems.push(format!(
                    "closed {hold}: reserved {} but took {}",
                    life.reserved, life.taken
                ));
            }
            continue;
        }
        *open_per_account.entry(life.account).or_default() += life.remaining();
        if skipped.contains(&life.account) {
            continue;
        }
        match stored_by_id.get(hold) {
            None => problems.push(format!(
                "{hold} is open in the ledger but not in the holds tree"
            )),
            Some(open)
                if open.account != life.account
                    || i128::from(open.amount.get()) != life.remaining() =>
            {
                problems.push(format!(
                    "{hold}: holds tree says {} for {}, ledger {} for {}",
                    open.amount,
                    open.account,
                    life.remaining(),
                    life.account
                ));
            }
            Some(_) => {}
        }
    }
    for open in stored {
        let closed_or_unknown = replay.holds.get(&open.hold).is_none_or(|life| life.closed);
        if closed_or_unknown && !skipped.contains(&open.account) {
            problems.push(format!(
                "{} is in the holds tree but not open in the ledger",
                open.hold
            ));
        }
    }
    for (id, row) in &replay.accounts {
        let open = open_per_account.get(id).copied().unwrap_or(0);
        if !skipped.contains(id) && open != i128::from(row.books.held.get()) {
            problems.push(format!(
                "{id}: open holds add up to {open}, held is {}",
                row.books.held
            ));
        }
    }
    for problem in problems {
        replay.problems.add(problem);
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
