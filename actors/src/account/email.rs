//! An operator's email correction in the account actor. The actor keeps the
//! account's record in memory and writes it whole (a later `SetDisabled`
//! writes it again), so a new email must go through here, or the next
//! write would put the old one back.
//!
//! Handled to completion, like a payment: the record is submitted and the
//! actor waits for it to be durable before taking the new email as its
//! own, because the writer may refuse it (the email belongs to another
//! account by then) and the actor's copy must never say what the store
//! does not.

use tokun_storage::{AccountRecord, WriteOp};

use super::{AccountError, AccountState};

impl AccountState {
    /// Writes the account with `email` (already normalized by the caller);
    /// the record as stored once durable. A refusal by the writer (the
    /// email is taken) and a failed write are both `LedgerUnavailable`:
    /// the caller, which checked the email first, tells them apart.
    pub(super) async fn set_email(&mut self, email: String) -> Result<AccountRecord, AccountError> {
        let mut record = self.record.clone();
        record.email = email;
        match self
            .ledger
            .append(vec![WriteOp::PutAccount(record.clone())])
            .await
        {
            Ok(_) => {
                self.record = record.clone();
                Ok(record)
            }
            Err(error) => {
                tracing::warn!(account = %self.record.id, %error, "email change not written");
                Err(AccountError::LedgerUnavailable)
            }
        }
    }
}
