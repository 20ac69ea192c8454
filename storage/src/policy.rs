//! Policy change notices: what an operator announced (`policies`), which
//! accounts dismissed its dashboard banner (`policy_dismissals`), and the one
//! email each account gets about it (`policy_mails`, with the mailing's
//! progress in `policy_progress`). The rules — an effective date at least
//! 14 days ahead, who is mailed and how fast — are the edge's
//! (`src/policy/`); this file only keeps the records.
//!
//! Written straight into sled outside the ledger writer, like the people
//! trees: no money here. An announcement is flushed at once by whoever
//! records it (its audit record flushes it); a mail's mark is flushed
//! before the mail is sent, so a restart never sends it again.

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sled::Tree;

use crate::audit::next_number;
use crate::codec::{decode, encode, pair_key};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::store::Store;

/// An announced policy change. Never changed once announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// 1, 2, 3, … (`pol_1` to people).
    pub id: u64,
    pub announced_ms: u64,
    /// The day it takes effect, `YYYY-MM-DD`.
    pub effective: String,
    pub summary: String,
    /// Where the full text is (https).
    pub url: Option<String>,
    /// The audit actor who announced it.
    pub announced_by: String,
}

/// What is announced; the store numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPolicy {
    pub announced_ms: u64,
    pub effective: String,
    pub summary: String,
    pub url: Option<String>,
    pub announced_by: String,
}

/// How far the emails about one announcement have got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailProgress {
    /// Every account with a lower id has been dealt with.
    pub next_account: u64,
    /// Emails handed to the mail server.
    pub sent: u64,
    /// When every account had been dealt with (or, without SMTP, when the
    /// one log line was written).
    pub done_ms: Option<u64>,
}

/// The policy trees and the lock that numbers announcements.
#[derive(Clone)]
pub(crate) struct PolicyTrees {
    /// id (BE u64) → `PolicyRecord`.
    policies: Tree,
    /// account ++ policy id → when it was dismissed (BE u64 ms).
    dismissals: Tree,
    /// policy id ++ account → `CLAIMED` or `SENT`.
    mails: Tree,
    /// policy id → `MailProgress`.
    progress: Tree,
    /// Held while an announcement is numbered and inserted.
    numbering: Arc<Mutex<()>>,
}

/// A mail about to be sent: never sent again, even if the send dies.
const CLAIMED: &[u8] = b"c";
/// A mail the mail server took.
const SENT: &[u8] = b"s";

impl PolicyTrees {
    pub(crate) fn open(db: &sled::Db) -> Result<PolicyTrees, StorageError> {
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(StorageError::sled("open a tree"))
        };
        Ok(PolicyTrees {
            policies: open("policies")?,
            dismissals: open("policy_dismissals")?,
            mails: open("policy_mails")?,
            progress: open("policy_progress")?,
            numbering: Arc::default(),
        })
    }
}

impl Store {
    /// Records an announcement (not flushed: the caller's audit record is).
    pub fn put_policy(&self, new: NewPolicy) -> Result<PolicyRecord, StorageError> {
        let trees = &self.trees.policy;
        let _numbering = trees
            .numbering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let record = PolicyRecord {
            id: next_number(&trees.policies, "read policies")?,
            announced_ms: new.announced_ms,
            effective: new.effective,
            summary: new.summary,
            url: new.url,
            announced_by: new.announced_by,
        };
        trees
            .policies
            .insert(record.id.to_be_bytes(), encode("a policy", &record)?)
            .map_err(StorageError::sled("write policies"))?;
        Ok(record)
    }

    /// Every announcement, oldest first.
    pub fn policies(&self) -> Result<Vec<PolicyRecord>, StorageError> {
        self.trees
            .policy
            .policies
            .iter()
            .values()
            .map(|item| {
                decode(
                    "policies",
                    &item.map_err(StorageError::sled("scan policies"))?,
                )
            })
            .collect()
    }

    /// The announcements `account` has not dismissed, oldest first.
    pub fn undismissed_policies(
        &self,
        account: AccountId,
    ) -> Result<Vec<PolicyRecord>, StorageError> {
        let dismissals = &self.trees.policy.dismissals;
        let mut shown = Vec::new();
        for policy in self.policies()? {
            let key = pair_key(account.get(), policy.id);
            let dismissed = dismissals.contains_key(key);
            if !dismissed.map_err(StorageError::sled("read policy_dismissals"))? {
                shown.push(policy);
            }
        }
        Ok(shown)
    }

    /// Hides an announcement's banner from `account` for good; false when
    /// there is no such announcement. Flushed at once.
    pub async fn dismiss_policy(
        &self,
        account: AccountId,
        policy: u64,
        at_ms: u64,
    ) -> Result<bool, StorageError> {
        let trees = &self.trees.policy;
        let exists = trees.policies.contains_key(policy.to_be_bytes());
        if !exists.map_err(StorageError::sled("read policies"))? {
            return Ok(false);
        }
        trees
            .dismissals
            .insert(pair_key(account.get(), policy), &at_ms.to_be_bytes())
            .map_err(StorageError::sled("write policy_dismissals"))?;
        self.flush_people().await?;
        Ok(true)
    }

    /// How far the emails about `policy` have got.
    pub fn mail_progress(&self, policy: u64) -> Result<MailProgress, StorageError> {
        let found = self.trees.policy.progress.get(policy.to_be_bytes());
        match found.map_err(StorageError::sled("read policy_progress"))? {
            Some(bytes) => decode("policy_progress", &bytes),
            None => Ok(MailProgress::default()),
        }
    }

    /// Moves the mailing on (not flushed: the next claim's flush covers it).
    pub fn put_mail_progress(
        &self,
        policy: u64,
        progress: &MailProgress,
    ) -> Result<(), StorageError> {
        self.trees
            .policy
            .progress
            .insert(policy.to_be_bytes(), encode("mail progress", progress)?)
            .map_err(StorageError::sled("write policy_progress"))?;
        Ok(())
    }

    /// Claims the one email `account` gets about `policy`: true for the
    /// first claim ever, false once claimed (sent or not). Not flushed:
    /// the caller flushes its claims before sending.
    pub fn claim_policy_mail(&self, policy: u64, account: AccountId) -> Result<bool, StorageError> {
        let key = pair_key(policy, account.get());
        let swapped = self
            .trees
            .policy
            .mails
            .compare_and_swap(key, None::<&[u8]>, Some(CLAIMED))
            .map_err(StorageError::sled("write policy_mails"))?;
        Ok(swapped.is_ok())
    }

    /// The claimed email was sent.
    pub fn mark_policy_mail_sent(
        &self,
        policy: u64,
        account: AccountId,
    ) -> Result<(), StorageError> {
        self.trees
            .policy
            .mails
            .insert(pair_key(policy, account.get()), SENT)
            .map_err(StorageError::sled("write policy_mails"))?;
        Ok(())
    }

    /// The claimed email could not be sent: the claim is dropped so a
    /// later pass tries again.
    pub fn release_policy_mail(&self, policy: u64, account: AccountId) -> Result<(), StorageError> {
        self.trees
            .policy
            .mails
            .compare_and_swap(
                pair_key(policy, account.get()),
                Some(CLAIMED),
                None::<&[u8]>,
            )
            .map_err(StorageError::sled("write policy_mails"))?
            .ok();
        Ok(())
    }

    /// Whether `account`'s email about `policy` was sent (true), claimed
    /// but not known sent (false), or never claimed (`None`).
    pub fn policy_mail_sent(
        &self,
        policy: u64,
        account: AccountId,
    ) -> Result<Option<bool>, StorageError> {
        let found = self
            .trees
            .policy
            .mails
            .get(pair_key(policy, account.get()))
            .map_err(StorageError::sled("read policy_mails"))?;
        Ok(found.map(|mark| mark.as_ref() == SENT))
    }

    /// Accounts with an id of at least `from`, in id order, at most `limit`.
    pub fn accounts_from(
        &self,
        from: AccountId,
        limit: usize,
    ) -> Result<Vec<crate::records::AccountRecord>, StorageError> {
        self.trees
            .accounts
            .range(from.to_key()..)
            .values()
            .take(limit)
            .map(|item| {
                decode(
                    "accounts",
                    &item.map_err(StorageError::sled("scan accounts"))?,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(store: &Store, summary: &str) -> PolicyRecord {
        store
            .put_policy(NewPolicy {
                announced_ms: 1,
                effective: "2030-01-01".into(),
                summary: summary.into(),
                url: None,
                announced_by: "admin-token".into(),
            })
            .unwrap()
    }

    #[tokio::test]
    async fn a_dismissed_policy_is_hidden_from_that_account_only() {
        let store = Store::temporary().unwrap();
        let first = announce(&store, "first");
        let second = announce(&store, "second");
        assert_eq!((first.id, second.id), (1, 2));
        let (ada, bob) = (AccountId::new(1), AccountId::new(2));
        assert!(store.dismiss_policy(ada, first.id, 5).await.unwrap());
        assert!(!store.dismiss_policy(ada, 99, 5).await.unwrap());
        assert_eq!(
            store.undismissed_policies(ada).unwrap(),
            std::slice::from_ref(&second)
        );
        assert_eq!(store.undismissed_policies(bob).unwrap(), [first, second]);
    }

    #[test]
    fn a_mail_is_claimed_once_and_a_failed_one_can_be_claimed_again() {
        let store = Store::temporary().unwrap();
        let ada = AccountId::new(1);
        assert_eq!(store.policy_mail_sent(1, ada).unwrap(), None);
        assert!(store.claim_policy_mail(1, ada).unwrap());
        assert!(!store.claim_policy_mail(1, ada).unwrap());
        store.release_policy_mail(1, ada).unwrap();
        assert!(store.claim_policy_mail(1, ada).unwrap());
        store.mark_policy_mail_sent(1, ada).unwrap();
        assert_eq!(store.policy_mail_sent(1, ada).unwrap(), Some(true));
        // A sent mail's mark is not a claim a failure could drop.
        store.release_policy_mail(1, ada).unwrap();
        assert!(!store.claim_policy_mail(1, ada).unwrap());
        assert!(store.claim_policy_mail(2, ada).unwrap(), "per policy");
    }
}
