//! The audit log: one record per operator action (a credit, a disabled
//! account, a revoked key, an email corrected, a policy announced), with who
//! did it, when, to what, the state before and after, and why. Records are
//! numbered 1, 2, 3, … in the `audit` tree, never changed or removed.
//!
//! Like the people trees (`people.rs`), the log is written by the edge
//! straight into sled, outside the ledger writer: it holds no money. The
//! action itself (say, a credit) has already gone through the writer when
//! its record is appended; [`Store::record_audit`] flushes at once, so a
//! record the operator was answered with survives a crash.
//!
//! Postgres snapshots copy the records above the highest seq they already
//! hold (`postgres/audit.rs`), and a restore brings them back.

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::Tree;

use crate::codec::{decode, encode, read_u64};
use crate::error::StorageError;
use crate::store::Store;

/// Who acted when the admin token did (the JSON API, scripts).
pub const ACTOR_ADMIN_TOKEN: &str = "admin-token";
/// Who acted when the operator used `tokun` on the store directly.
pub const ACTOR_CLI: &str = "cli";

/// One operator action, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, … in the order the actions were recorded.
    pub seq: u64,
    pub at_ms: u64,
    /// An admin's email, [`ACTOR_ADMIN_TOKEN`] or [`ACTOR_CLI`].
    pub actor: String,
    /// What was done, like `account.credit` or `policy.announce`.
    pub action: String,
    /// What it was done to: `acct_7`, `key_3`, `pol_1`.
    pub target: String,
    /// The state the action changed, before and after (`null` for none).
    pub before: Value,
    pub after: Value,
    /// Why, in the operator's words (empty where none was asked).
    pub reason: String,
}

/// An action to record; the store numbers it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAudit {
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Value,
    pub after: Value,
    pub reason: String,
}

/// Which records a listing wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this target (`acct_7`).
    pub target: Option<String>,
    /// Only actions starting with this (`account.` or `account.credit`).
    pub action: Option<String>,
}

/// The audit tree and the lock that numbers its records.
#[derive(Clone)]
pub(crate) struct AuditTrees {
    /// seq (BE u64) → `AuditRecord`.
    pub(crate) audit: Tree,
    /// Held while a record is numbered and inserted, so two actions
    /// recorded at once never take the same seq.
    numbering: Arc<Mutex<()>>,
}

impl AuditTrees {
    pub(crate) fn open(db: &sled::Db) -> Result<AuditTrees, StorageError> {
        Ok(AuditTrees {
            audit: db
                .open_tree("audit")
                .map_err(StorageError::sled("open a tree"))?,
            numbering: Arc::default(),
        })
    }
}

/// The number after the tree's last big-endian `u64` key (1 when empty).
pub(crate) fn next_number(tree: &Tree, what: &'static str) -> Result<u64, StorageError> {
    let last = tree.last().map_err(StorageError::sled(what))?;
    Ok(last
        .and_then(|(key, _)| read_u64(&key, 0))
        .map_or(1, |last| last.saturating_add(1)))
}

impl Store {
    /// Appends an action to the audit log and makes it durable (one sled
    /// flush, off the async workers).
    pub async fn record_audit(&self, new: NewAudit) -> Result<AuditRecord, StorageError> {
        let record = self.append_audit(new)?;
        self.flush_people().await?;
        Ok(record)
    }

    /// Appends an action to the audit log (not flushed: see
    /// [`Store::record_audit`]).
    pub fn append_audit(&self, new: NewAudit) -> Result<AuditRecord, StorageError> {
        let trees = &self.trees.audit;
        let _numbering = trees
            .numbering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let record = AuditRecord {
            seq: next_number(&trees.audit, "read audit")?,
            at_ms: new.at_ms,
            actor: new.actor,
            action: new.action,
            target: new.target,
            before: new.before,
            after: new.after,
            reason: new.reason,
        };
        self.put_audit_record(&record)?;
        Ok(record)
    }

    /// Writes a record under its own seq: for a restore, which brings back
    /// the numbering it had.
    pub(crate) fn put_audit_record(&self, record: &AuditRecord) -> Result<(), StorageError> {
        self.trees
            .audit
            .audit
            .insert(record.seq.to_be_bytes(), encode("an audit record", record)?)
            .map_err(StorageError::sled("write audit"))?;
        Ok(())
    }

    /// Records with a seq above `after` that pass `filter`, oldest first, at
    /// most `limit`.
    pub fn audit_after(
        &self,
        after: u64,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        let from = after.saturating_add(1).to_be_bytes();
        let records = self.trees.audit.audit.range(from..).values();
        collect(records, filter, limit)
    }

    /// Records with a seq below `before` (all without it) that pass
    /// `filter`, newest first, at most `limit`: the console's view.
    pub fn audit_before(
        &self,
        before: Option<u64>,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        let records = self.trees.audit.audit.range(..end).values().rev();
        collect(records, filter, limit)
    }
}

impl AuditFilter {
    fn admits(&self, record: &AuditRecord) -> bool {
        self.target.as_ref().is_none_or(|t| *t == record.target)
            && self
                .action
                .as_ref()
                .is_none_or(|a| record.action.starts_with(a.as_str()))
    }
}

fn collect(
    records: impl Iterator<Item = sled::Result<sled::IVec>>,
    filter: &AuditFilter,
    limit: usize,
) -> Result<Vec<AuditRecord>, StorageError> {
    let mut found = Vec::new();
    for item in records {
        if found.len() >= limit {
            break;
        }
        let record: AuditRecord =
            decode("audit", &item.map_err(StorageError::sled("scan audit"))?)?;
        if filter.admits(&record) {
            found.push(record);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn action(target: &str, action: &str) -> NewAudit {
        NewAudit {
            at_ms: 1,
            actor: ACTOR_ADMIN_TOKEN.into(),
            action: action.into(),
            target: target.into(),
            before: json!({"balance": "1"}),
            after: json!({"balance": "2"}),
            reason: "why".into(),
        }
    }

    #[test]
    fn records_are_numbered_in_order_and_listed_both_ways() {
        let store = Store::temporary().unwrap();
        let first = store
            .append_audit(action("acct_1", "account.credit"))
            .unwrap();
        let second = store
            .append_audit(action("acct_2", "account.email"))
            .unwrap();
        let third = store
            .append_audit(action("acct_1", "account.debit"))
            .unwrap();
        assert_eq!((first.seq, second.seq, third.seq), (1, 2, 3));
        let all = AuditFilter::default();
        let seqs = |records: Vec<AuditRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.audit_after(0, &all, 10).unwrap()), [1, 2, 3]);
        assert_eq!(seqs(store.audit_after(1, &all, 1).unwrap()), [2]);
        assert_eq!(seqs(store.audit_before(None, &all, 2).unwrap()), [3, 2]);
        assert_eq!(seqs(store.audit_before(Some(3), &all, 10).unwrap()), [2, 1]);
        let acct_1 = AuditFilter {
            target: Some("acct_1".into()),
            action: None,
        };
        assert_eq!(seqs(store.audit_after(0, &acct_1, 10).unwrap()), [1, 3]);
        let emails = AuditFilter {
            target: None,
            action: Some("account.email".into()),
        };
        assert_eq!(seqs(store.audit_before(None, &emails, 10).unwrap()), [2]);
        assert_eq!(store.audit_after(0, &all, 1).unwrap()[0], first);
    }

    #[test]
    fn numbering_continues_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("tokun-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir).unwrap();
            store
                .append_audit(action("acct_1", "account.credit"))
                .unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let next = store
            .append_audit(action("acct_1", "account.debit"))
            .unwrap();
        assert_eq!(next.seq, 2);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
