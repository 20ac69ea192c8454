//! Remembered outcomes of requests sent with an `Idempotency-Key`, so that a
//! retry within the window never runs (and never charges) twice — also after
//! a restart. Keyed by account ++ the client's key; a separate tree outside
//! the ledger writer's batches (these are not money, only what to answer).
//! Written straight into sled; the caller makes it durable with the next
//! ledger flush (`LedgerHandle::barrier`), since a flush covers every tree.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::store::Store;

/// What a finished request with an idempotency key answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentOutcome {
    pub at_ms: u64,
    /// The response to replay; `None` for a stream (streams are not replayed,
    /// but a retry must not run them again either).
    pub response: Option<StoredReply>,
    /// SHA-256 (hex) of the request the key was first used with: a retry
    /// with another request under the same key is refused, never answered
    /// with the first one's result. Absent in outcomes stored before it was
    /// kept (those are replayed as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Written when a request claims its key, before anything runs: found
    /// after a restart, it says the first attempt was interrupted (it may
    /// have been charged), so the key is never run a second time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// A non-streaming response, as replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: String,
}

fn key(account: AccountId, client_key: &str) -> Vec<u8> {
    let mut key = account.get().to_be_bytes().to_vec();
    key.extend_from_slice(client_key.as_bytes());
    key
}

impl Store {
    /// The outcome remembered for `client_key`, if it is not older than `since_ms`.
    pub fn idempotent_outcome(
        &self,
        account: AccountId,
        client_key: &str,
        since_ms: u64,
    ) -> Result<Option<IdempotentOutcome>, StorageError> {
        let found = self
            .trees
            .idempotency
            .get(key(account, client_key))
            .map_err(StorageError::sled("read idempotency"))?;
        match found {
            Some(bytes) => {
                let outcome: IdempotentOutcome = decode("idempotency", &bytes)?;
                Ok((outcome.at_ms >= since_ms).then_some(outcome))
            }
            None => Ok(None),
        }
    }

    /// Remembers an outcome (not yet flushed: see the module docs).
    pub fn remember_outcome(
        &self,
        account: AccountId,
        client_key: &str,
        outcome: &IdempotentOutcome,
    ) -> Result<(), StorageError> {
        let value = encode("an idempotent outcome", outcome)?;
        self.trees
            .idempotency
            .insert(key(account, client_key), value)
            .map_err(StorageError::sled("write idempotency"))?;
        Ok(())
    }

    /// Forgets the outcome of `client_key` (its request failed before it was
    /// charged, so a retry may run). Not flushed, like the writes.
    pub fn forget_outcome(&self, account: AccountId, client_key: &str) -> Result<(), StorageError> {
        self.trees
            .idempotency
            .remove(key(account, client_key))
            .map_err(StorageError::sled("forget idempotency"))?;
        Ok(())
    }

    /// Forgets outcomes older than `before_ms`; returns how many.
    pub fn purge_outcomes(&self, before_ms: u64) -> Result<usize, StorageError> {
        let tree = &self.trees.idempotency;
        let mut purged = 0;
        for item in tree.iter() {
            let (key, value) = item.map_err(StorageError::sled("scan idempotency"))?;
            let outcome: IdempotentOutcome = decode("idempotency", &value)?;
            if outcome.at_ms < before_ms {
                tree.remove(key)
                    .map_err(StorageError::sled("purge idempotency"))?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_reopening_and_expire() {
        let dir = std::env::temp_dir().join(format!("tokun-idem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let account = AccountId::new(7);
        let reply = IdempotentOutcome {
            at_ms: 1_000,
            fingerprint: Some("ab".into()),
            pending: false,
            response: Some(StoredReply {
                status: 200,
                headers: vec![("x-tokun-cost".into(), "0.000001".into())],
                body: r#"{"id":"chatcmpl-1"}"#.into(),
            }),
        };
        let streamed = IdempotentOutcome {
            at_ms: 5_000,
            fingerprint: None,
            pending: false,
            response: None,
        };
        {
            let store = Store::open(&dir).unwrap();
            store.remember_outcome(account, "k1", &reply).unwrap();
            store.remember_outcome(account, "k2", &streamed).unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(
            store.idempotent_outcome(account, "k1", 0).unwrap(),
            Some(reply)
        );
        assert_eq!(
            store.idempotent_outcome(account, "k2", 0).unwrap(),
            Some(streamed.clone())
        );
        // Another account's key of the same name is another record.
        assert_eq!(
            store
                .idempotent_outcome(AccountId::new(8), "k1", 0)
                .unwrap(),
            None
        );
        // Older than the window: not answered, then purged.
        assert_eq!(
            store.idempotent_outcome(account, "k1", 2_000).unwrap(),
            None
        );
        assert_eq!(store.purge_outcomes(2_000).unwrap(), 1);
        assert_eq!(store.idempotent_outcome(account, "k1", 0).unwrap(), None);
        assert_eq!(
            store.idempotent_outcome(account, "k2", 0).unwrap(),
            Some(streamed)
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
