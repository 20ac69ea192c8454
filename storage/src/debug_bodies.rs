//! Request debugging's stored bodies (issue 20 item 2): while a key has
//! `debug` on, the request and response body of each of its requests is kept
//! here for 7 days, then purged by the retention sweeper
//! ([`Store::purge_debug_bodies_before`]); revoking the key deletes them at
//! once ([`Store::delete_debug_bodies_of_key`]).
//!
//! Two trees, written straight into sled by the edge, outside the ledger
//! writer's batches like `people.rs` (bodies are not money, and a lost body
//! is a lost debugging aid, never a wrong balance): `debug_bodies` (key id ++
//! at_ms ++ unique → [`DebugBody`] as JSON), so one key's bodies are one
//! range, read a page at a time and deleted together; and `debug_by_time`
//! (at_ms ++ key id ++ unique → nothing), so expiry is a range scan from the
//! start. The index is written before the body and removed after it, so a
//! crash between the two leaves at worst an index row without a body, which
//! the purge removes; never a body the purge cannot find. Bodies are plain
//! JSON (no compression crate is a dependency, and sled's own is off).
//!
//! This module never decides whether a key debugs: the edge does, and it
//! stores a body only while the key is live with `debug` on.

use std::fmt;
use std::ops::Bound;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::account_data::{Batch, BatchCursor};
use crate::codec::{decode, encode, read_u64, usage_key};
use crate::error::StorageError;
use crate::ids::{AccountId, KeyId};
use crate::store::Store;

/// One request and its answer, as the key's owner may read them back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DebugBody {
    pub request_id: String,
    /// When the request began (Unix ms); the 7 days count from here.
    pub at_ms: u64,
    pub account: AccountId,
    pub key: KeyId,
    /// The model as asked (`auto` stays `auto`; the response names the one served).
    pub model: String,
    /// `http` or `ws`.
    pub transport: String,
    /// The HTTP status the request ended with (499: the client left first).
    pub status: u16,
    /// The request body as tokun read it.
    pub request: Value,
    /// The final JSON body, or for a stream the completion assembled from
    /// its deltas (with the number of chunks relayed).
    pub response: Value,
}

/// Where a stored body sits in its key's list: when it was stored and a
/// tie-breaker. Printed `dbg_<at_ms>_<unique>`, and parsed back from that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DebugBodyId {
    at_ms: u64,
    unique: u64,
}

/// A body with its id.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDebugBody {
    pub id: DebugBodyId,
    pub body: DebugBody,
}

/// One page of a key's bodies, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct DebugPage {
    pub rows: Vec<StoredDebugBody>,
    /// Older bodies exist past the last row.
    pub has_more: bool,
}

impl DebugBodyId {
    const PREFIX: &'static str = "dbg_";

    pub fn at_ms(self) -> u64 {
        self.at_ms
    }
}

impl fmt::Display for DebugBodyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}_{}", Self::PREFIX, self.at_ms, self.unique)
    }
}

impl FromStr for DebugBodyId {
    type Err = crate::ids::IdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || crate::ids::IdError {
            prefix: Self::PREFIX,
            input: input.to_owned(),
        };
        let rest = input.strip_prefix(Self::PREFIX).ok_or_else(invalid)?;
        let (at, unique) = rest.split_once('_').ok_or_else(invalid)?;
        let number = |text: &str| {
            let canonical = !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit())
                && (text == "0" || !text.starts_with('0'));
            canonical.then(|| text.parse::<u64>().ok()).flatten()
        };
        match (number(at), number(unique)) {
            (Some(at_ms), Some(unique)) => Ok(DebugBodyId { at_ms, unique }),
            _ => Err(invalid()),
        }
    }
}

impl Store {
    /// Keeps one body; returns its id.
    pub fn put_debug_body(&self, body: &DebugBody) -> Result<DebugBodyId, StorageError> {
        let id = DebugBodyId {
            at_ms: body.at_ms,
            unique: next_unique(),
        };
        let value = encode("a debug body", body)?;
        // The index first: a body is never without the row that expires it.
        self.trees
            .debug_by_time
            .insert(time_key(body.key, id), &[])
            .map_err(StorageError::sled("write debug_by_time"))?;
        self.trees
            .debug_bodies
            .insert(body_key(body.key, id), value)
            .map_err(StorageError::sled("write debug_bodies"))?;
        Ok(id)
    }

    /// Up to `limit` of the key's bodies older than `before` (from the newest
    /// when `None`), newest first.
    pub fn debug_bodies_of_key(
        &self,
        key: KeyId,
        before: Option<DebugBodyId>,
        limit: usize,
    ) -> Result<DebugPage, StorageError> {
        let lower = Bound::Included(key.to_key().to_vec());
        let upper = match before {
            Some(id) => Bound::Excluded(body_key(key, id).to_vec()),
            None => match key.get().checked_add(1) {
                Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
                None => Bound::Unbounded,
            },
        };
        let mut rows = Vec::new();
        for item in self.trees.debug_bodies.range((lower, upper)).rev() {
            let (tree_key, value) = item.map_err(StorageError::sled("scan debug_bodies"))?;
            if rows.len() == limit {
                return Ok(DebugPage {
                    rows,
                    has_more: true,
                });
            }
            rows.push(stored(&tree_key, &value)?);
        }
        Ok(DebugPage {
            rows,
            has_more: false,
        })
    }

    /// Whether the key has any body stored.
    pub fn has_debug_bodies(&self, key: KeyId) -> Result<bool, StorageError> {
        match self.trees.debug_bodies.scan_prefix(key.to_key()).next() {
            Some(item) => item
                .map(|_| true)
                .map_err(StorageError::sled("scan debug_bodies")),
            None => Ok(false),
        }
    }

    /// Deletes every body of the key (its revocation); returns how many.
    pub fn delete_debug_bodies_of_key(&self, key: KeyId) -> Result<usize, StorageError> {
        let mut deleted = 0;
        for item in self.trees.debug_bodies.scan_prefix(key.to_key()).keys() {
            let tree_key = item.map_err(StorageError::sled("scan debug_bodies"))?;
            let Some(id) = id_of(&tree_key) else { continue };
            self.delete_debug_body(key, id)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Deletes up to `limit` bodies stored before `cutoff_ms`, oldest first;
    /// returns how many index rows it removed (a body each, or a row a crash
    /// left without one). Fewer than `limit`: nothing older is left. Small
    /// batches keep each call short; the retention sweeper loops.
    pub fn purge_debug_bodies_before(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize, StorageError> {
        let end = Bound::Excluded(cutoff_ms.to_be_bytes().to_vec());
        let mut purged = 0;
        for item in self
            .trees
            .debug_by_time
            .range((Bound::Unbounded, end))
            .keys()
            .take(limit)
        {
            let time_row = item.map_err(StorageError::sled("scan debug_by_time"))?;
            let (Some(at_ms), Some(key), Some(unique)) = (
                read_u64(&time_row, 0),
                read_u64(&time_row, 8),
                read_u64(&time_row, 16),
            ) else {
                // Not a row this module wrote: drop it so the scan moves on.
                self.trees
                    .debug_by_time
                    .remove(&time_row)
                    .map_err(StorageError::sled("purge debug_by_time"))?;
                purged += 1;
                continue;
            };
            self.delete_debug_body(KeyId::new(key), DebugBodyId { at_ms, unique })?;
            purged += 1;
        }
        Ok(purged)
    }

    /// Up to `limit` of the account's bodies after `after`, for its export:
    /// key by key in id order, oldest first within a key.
    pub fn debug_bodies_of_account(
        &self,
        account: AccountId,
        after: Option<&BatchCursor>,
        limit: usize,
    ) -> Result<Batch<StoredDebugBody>, StorageError> {
        let keys: Vec<KeyId> = self.keys_for(account)?.iter().map(|k| k.id).collect();
        let resume = match after {
            Some(cursor) => {
                let key = read_u64(&cursor.0, 0).map(KeyId::new);
                match key.filter(|key| keys.contains(key)) {
                    Some(key) => Some((key, cursor.0.clone())),
                    // A cursor of another account reads nothing.
                    None => {
                        return Ok(Batch {
                            rows: Vec::new(),
                            next: None,
                        });
                    }
                }
            }
            None => None,
        };
        let mut rows = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        for key in keys {
            let start = match &resume {
                Some((from, _)) if key < *from => continue,
                Some((from, cursor)) if key == *from => Bound::Excluded(cursor.clone()),
                _ => Bound::Included(key.to_key().to_vec()),
            };
            for item in self.trees.debug_bodies.range((start, Bound::Unbounded)) {
                let (tree_key, value) = item.map_err(StorageError::sled("scan debug_bodies"))?;
                if !tree_key.starts_with(&key.to_key()) {
                    break;
                }
                if rows.len() == limit {
                    return Ok(Batch {
                        rows,
                        next: last.map(BatchCursor),
                    });
                }
                rows.push(stored(&tree_key, &value)?);
                last = Some(tree_key.to_vec());
            }
        }
        Ok(Batch { rows, next: None })
    }

    /// Deletes one body (then its index row); deleting it twice is fine.
    pub fn delete_debug_body(&self, key: KeyId, id: DebugBodyId) -> Result<(), StorageError> {
        self.trees
            .debug_bodies
            .remove(body_key(key, id))
            .map_err(StorageError::sled("delete debug_bodies"))?;
        self.trees
            .debug_by_time
            .remove(time_key(key, id))
            .map_err(StorageError::sled("delete debug_by_time"))?;
        Ok(())
    }
}

/// `key id ++ at_ms ++ unique`: a key's bodies in time order.
fn body_key(key: KeyId, id: DebugBodyId) -> [u8; 24] {
    usage_key(key.get(), id.at_ms, id.unique)
}

/// `at_ms ++ key id ++ unique`: every body in time order, for expiry.
fn time_key(key: KeyId, id: DebugBodyId) -> [u8; 24] {
    usage_key(id.at_ms, key.get(), id.unique)
}

/// The id within a `debug_bodies` tree key.
fn id_of(tree_key: &[u8]) -> Option<DebugBodyId> {
    Some(DebugBodyId {
        at_ms: read_u64(tree_key, 8)?,
        unique: read_u64(tree_key, 16)?,
    })
}

fn stored(tree_key: &[u8], value: &[u8]) -> Result<StoredDebugBody, StorageError> {
    let id = id_of(tree_key).ok_or_else(|| StorageError::Decode {
        tree: "debug_bodies",
        message: "a key shorter than 24 bytes".into(),
    })?;
    Ok(StoredDebugBody {
        id,
        body: decode("debug_bodies", value)?,
    })
}

/// A tie-breaker for two bodies of a key in the same millisecond. Only
/// unique within a process; across a restart the milliseconds differ.
fn next_unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
