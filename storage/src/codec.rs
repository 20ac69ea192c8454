//! How values and keys look on disk: values are JSON (simple, debuggable,
//! and not the bottleneck — see `benches/ledger.rs`); keys are big-endian
//! integers so that sled's byte order is numeric order.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StorageError;

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|err| StorageError::Encode {
        what,
        message: err.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|err| StorageError::Decode {
        tree,
        message: err.to_string(),
    })
}

/// Two big-endian integers: `(group, item)` keys that list a group in order.
pub(crate) fn pair_key(group: u64, item: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&item.to_be_bytes());
    key
}

/// `account ++ at_ms ++ unique`: usage listed per account in time order.
pub(crate) fn usage_key(account: u64, at_ms: u64, unique: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&account.to_be_bytes());
    key[8..16].copy_from_slice(&at_ms.to_be_bytes());
    key[16..].copy_from_slice(&unique.to_be_bytes());
    key
}

/// A big-endian `u64` at `offset`, if the key is long enough.
pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let slice = bytes.get(offset..offset + 8)?;
    let array: [u8; 8] = slice.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

/// Email addresses are looked up case-insensitively.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}
