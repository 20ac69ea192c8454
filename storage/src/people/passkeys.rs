//! The console's passkeys: one record per WebAuthn credential, under
//! account ++ credential id in `passkeys` (an account's list), and the
//! credential id → account index in `passkey_ids` (a discoverable sign-in
//! names only its credential). The credential itself (public key, counter)
//! is the serialized webauthn-rs `Passkey`, opaque here: `storage` knows no
//! WebAuthn. A public key is no secret; nothing here is.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::store::Store;

/// One registered passkey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyRecord {
    pub account: AccountId,
    /// The WebAuthn credential id, as the authenticator made it.
    pub credential_id: Vec<u8>,
    /// The serialized webauthn-rs `Passkey` (public key, signature counter).
    pub passkey: String,
    /// What the person called it ("Laptop"), shown on `/account`.
    pub name: String,
    pub created_ms: u64,
    pub last_used_ms: Option<u64>,
}

fn passkey_key(account: AccountId, credential_id: &[u8]) -> Vec<u8> {
    let mut key = account.to_key().to_vec();
    key.extend_from_slice(credential_id);
    key
}

impl Store {
    /// Stores a passkey, or replaces it (a sign-in moves its counter and
    /// last use). Not flushed: see [`Store::flush_people`].
    pub fn put_passkey(&self, record: &PasskeyRecord) -> Result<(), StorageError> {
        let value = encode("a passkey", record)?;
        self.trees
            .passkeys
            .insert(passkey_key(record.account, &record.credential_id), value)
            .map_err(StorageError::sled("write passkeys"))?;
        self.trees
            .passkey_ids
            .insert(&record.credential_id[..], &record.account.to_key()[..])
            .map_err(StorageError::sled("write passkey_ids"))?;
        Ok(())
    }

    /// An account's passkeys, oldest first.
    pub fn passkeys_of(&self, account: AccountId) -> Result<Vec<PasskeyRecord>, StorageError> {
        let mut found: Vec<PasskeyRecord> = self
            .trees
            .passkeys
            .scan_prefix(account.to_key())
            .values()
            .map(|item| {
                decode(
                    "passkeys",
                    &item.map_err(StorageError::sled("scan passkeys"))?,
                )
            })
            .collect::<Result<_, _>>()?;
        found.sort_by_key(|record| record.created_ms);
        Ok(found)
    }

    /// The passkey with this credential id, whoever holds it.
    pub fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRecord>, StorageError> {
        let owner = self.trees.passkey_ids.get(credential_id);
        let Some(owner) = owner.map_err(StorageError::sled("read passkey_ids"))? else {
            return Ok(None);
        };
        let Ok(owner) = <[u8; 8]>::try_from(owner.as_ref()) else {
            return Ok(None);
        };
        let account = AccountId::new(u64::from_be_bytes(owner));
        let found = self.trees.passkeys.get(passkey_key(account, credential_id));
        match found.map_err(StorageError::sled("read passkeys"))? {
            Some(bytes) => decode("passkeys", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Removes one of `account`'s passkeys; `false` if it has none by that
    /// id (another account's passkey is never touched).
    pub fn delete_passkey(
        &self,
        account: AccountId,
        credential_id: &[u8],
    ) -> Result<bool, StorageError> {
        let removed = self
            .trees
            .passkeys
            .remove(passkey_key(account, credential_id))
            .map_err(StorageError::sled("delete a passkey"))?;
        if removed.is_none() {
            return Ok(false);
        }
        self.trees
            .passkey_ids
            .remove(credential_id)
            .map_err(StorageError::sled("delete a passkey"))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(account: u64, id: &[u8], created_ms: u64) -> PasskeyRecord {
        PasskeyRecord {
            account: AccountId::new(account),
            credential_id: id.to_vec(),
            passkey: "{}".into(),
            name: "Laptop".into(),
            created_ms,
            last_used_ms: None,
        }
    }

    #[test]
    fn passkeys_are_listed_per_account_and_found_by_credential() {
        let store = Store::temporary().unwrap();
        store.put_passkey(&record(7, b"second", 20)).unwrap();
        store.put_passkey(&record(7, b"first", 10)).unwrap();
        store.put_passkey(&record(8, b"other", 5)).unwrap();
        let mine = store.passkeys_of(AccountId::new(7)).unwrap();
        let ids: Vec<&[u8]> = mine.iter().map(|r| r.credential_id.as_slice()).collect();
        assert_eq!(ids, [&b"first"[..], &b"second"[..]], "oldest first");
        let found = store.passkey_by_credential(b"other").unwrap().unwrap();
        assert_eq!(found.account, AccountId::new(8));
        assert_eq!(store.passkey_by_credential(b"nobody").unwrap(), None);

        let mut used = record(7, b"first", 10);
        used.last_used_ms = Some(99);
        store.put_passkey(&used).unwrap();
        assert_eq!(store.passkey_by_credential(b"first").unwrap(), Some(used));
        assert_eq!(store.passkeys_of(AccountId::new(7)).unwrap().len(), 2);
    }

    #[test]
    fn only_the_owner_removes_a_passkey() {
        let store = Store::temporary().unwrap();
        store.put_passkey(&record(7, b"key", 1)).unwrap();
        assert!(!store.delete_passkey(AccountId::new(8), b"key").unwrap());
        assert!(store.passkey_by_credential(b"key").unwrap().is_some());
        assert!(store.delete_passkey(AccountId::new(7), b"key").unwrap());
        assert_eq!(store.passkey_by_credential(b"key").unwrap(), None);
        assert!(store.passkeys_of(AccountId::new(7)).unwrap().is_empty());
        assert!(!store.delete_passkey(AccountId::new(7), b"key").unwrap());
    }
}
