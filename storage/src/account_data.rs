//! Reads for an account's data export (issue 20 item 5): the request log
//! and the sign-in history in bounded batches, oldest first, each resuming
//! after the last key read, so an export of a million requests reads a
//! batch at a time; and the account's sessions without their hashes.

use std::ops::Bound;

use serde::de::DeserializeOwned;

use crate::codec::decode;
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::people::{SessionRecord, SignInRecord};
use crate::records::UsageRecord;
use crate::store::Store;

/// Where the next batch of one account's rows starts (exclusive): the tree
/// key of the last row read. Opaque to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchCursor(pub(crate) Vec<u8>);

/// One batch, oldest first; `next` is `None` once the rows are read to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<T> {
    pub rows: Vec<T>,
    pub next: Option<BatchCursor>,
}

impl Store {
    /// Up to `limit` of the account's request log records after `after`
    /// (from the start when `None`), oldest first.
    pub fn usage_batch(
        &self,
        account: AccountId,
        after: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Batch<UsageRecord>, StorageError> {
        batch(&self.trees.usage, "usage", account, after, limit)
    }

    /// Up to `limit` of the account's sign-ins after `after`, oldest first.
    pub fn signins_batch(
        &self,
        account: AccountId,
        after: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Batch<SignInRecord>, StorageError> {
        batch(&self.trees.signins, "signins", account, after, limit)
    }

    /// Every live or expired session of the account, without the hashes
    /// they are stored under (those are what a cookie proves).
    pub fn sessions_of(&self, account: AccountId) -> Result<Vec<SessionRecord>, StorageError> {
        let mut found = Vec::new();
        for item in self.trees.account_sessions.scan_prefix(account.to_key()) {
            let (key, _) = item.map_err(StorageError::sled("scan account_sessions"))?;
            let Some(hash) = key.get(8..) else { continue };
            let stored = self.trees.sessions.get(hash);
            if let Some(bytes) = stored.map_err(StorageError::sled("read sessions"))? {
                found.push(decode::<SessionRecord>("sessions", &bytes)?);
            }
        }
        found.sort_by_key(|session| session.created_ms);
        Ok(found)
    }
}

/// Rows of a tree keyed `account ++ …`, after `after`, oldest first.
fn batch<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    account: AccountId,
    after: Option<&BatchCursor>,
    limit: usize,
) -> Result<Batch<T>, StorageError> {
    let prefix = account.to_key();
    let start = match after {
        // A cursor of another account reads nothing.
        Some(cursor) if !cursor.0.starts_with(&prefix) => {
            return Ok(Batch {
                rows: Vec::new(),
                next: None,
            });
        }
        Some(cursor) => Bound::Excluded(cursor.0.clone()),
        None => Bound::Included(prefix.to_vec()),
    };
    let mut rows = Vec::new();
    let mut last = None;
    for item in tree.range((start, Bound::Unbounded)) {
        let (key, value) = item.map_err(StorageError::sled("scan for an export"))?;
        if !key.starts_with(&prefix) {
            break;
        }
        if rows.len() == limit {
            // One more row exists: the next batch starts after the last one.
            return Ok(Batch {
                rows,
                next: last.map(BatchCursor),
            });
        }
        rows.push(decode(name, &value)?);
        last = Some(key.to_vec());
    }
    Ok(Batch { rows, next: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Nanos;

    fn usage(account: AccountId, at_ms: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{at_ms}"),
            at_ms,
            account,
            key: None,
            model: "m".into(),
            served_model: "m".into(),
            provider: "p".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cost: Nanos::ZERO,
            estimated: false,
            status: 200,
            transport: "http".into(),
            latency_ms: 1,
            ttft_ms: None,
            error_kind: None,
            cached_tokens: 0,
            route: None,
        }
    }

    #[test]
    fn batches_read_every_row_once_oldest_first_and_only_the_accounts()
    -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::temporary()?;
        let (a, b) = (AccountId::new(7), AccountId::new(8));
        for at in 1..=25u64 {
            for account in [a, b] {
                let key = crate::codec::usage_key(account.get(), at, 0);
                let value = crate::codec::encode("usage", &usage(account, at))?;
                store.trees.usage.insert(key, value)?;
            }
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let batch = store.usage_batch(a, cursor.as_ref(), 10)?;
            assert!(batch.rows.len() <= 10);
            assert!(batch.rows.iter().all(|r| r.account == a));
            seen.extend(batch.rows.iter().map(|r| r.at_ms));
            match batch.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (1..=25).collect::<Vec<_>>());
        let other = store.usage_batch(b, cursor.as_ref(), 10)?;
        assert!(other.rows.is_empty());
        Ok(())
    }
}
