//! Corrections an operator makes to an account's personal data — today its
//! email — each with a required reason and an audit record of the value
//! before and after. Shared by the admin API (`POST
//! /admin/accounts/{id}/email`) and the command line (`tokun accounts
//! set-email`).
//!
//! The new email goes through the account's actor (which writes the whole
//! record, see `actors/src/account/email.rs`); the writer keeps the
//! email → account index (`emails`) and refuses an email that belongs to
//! another account, which is checked here first so the operator is told why.

use serde_json::json;
use tokun_storage::{AccountId, AccountRecord};

use crate::audit::{self, Change};
use crate::services::Services;

/// Why a correction was refused.
#[derive(Debug, thiserror::Error)]
pub enum CorrectionError {
    #[error("`email` is not an email address.")]
    InvalidEmail,
    #[error("{0}")]
    Reason(&'static str),
    #[error("No account `{0}`.")]
    NoAccount(AccountId),
    #[error("`{0}` was deleted by its owner; it can be viewed, not changed.")]
    Deleted(AccountId),
    #[error("The email `{email}` belongs to another account.")]
    Taken { email: String },
    #[error("the store failed: {0}")]
    Failed(String),
}

/// Gives account `id` the email `email` (trimmed, lowercased), for `reason`,
/// recorded as done by `actor`. Unchanged (the same email) is not a change:
/// nothing is written or recorded.
pub async fn change_email(
    services: &Services,
    id: AccountId,
    email: &str,
    reason: Option<&str>,
    actor: &str,
) -> Result<AccountRecord, CorrectionError> {
    let reason = audit::reason(reason, true).map_err(CorrectionError::Reason)?;
    let email = email.trim().to_lowercase();
    if !crate::console::is_email(&email) {
        return Err(CorrectionError::InvalidEmail);
    }
    let failed = |error: tokun_storage::StorageError| CorrectionError::Failed(error.to_string());
    let store = &services.store;
    let account = store
        .account(id)
        .map_err(failed)?
        .ok_or(CorrectionError::NoAccount(id))?;
    if account.deleted_ms.is_some() {
        return Err(CorrectionError::Deleted(id));
    }
    if account.email == email {
        return Ok(account);
    }
    let taken = |owner: Option<AccountRecord>| owner.is_some_and(|owner| owner.id != id);
    if taken(store.account_by_email(&email).map_err(failed)?) {
        return Err(CorrectionError::Taken { email });
    }
    let changed = match services.accounts.set_email(id, &email).await {
        Ok(record) => record,
        // The writer refuses an email taken since the check above.
        Err(_) if taken(store.account_by_email(&email).map_err(failed)?) => {
            return Err(CorrectionError::Taken { email });
        }
        Err(error) => return Err(CorrectionError::Failed(error.to_string())),
    };
    let change = Change::new(
        json!({"email": account.email}),
        json!({"email": changed.email}),
    );
    audit::record(store, actor, "account.email", id, change, &reason).await;
    Ok(changed)
}
