//! The edge's side of the audit log (`tokun_storage::AuditRecord`): every
//! operator action — through the admin API, the admin console or the
//! command line — ends in one [`record`] call once the action succeeded,
//! naming who, what, to what, the state before and after, and why.
//!
//! A record that cannot be written is logged as an error, and the action's
//! answer still goes out: the action is already durable, and answering an
//! error would invite a retry that, for a credit, credits twice.

use std::fmt::Display;

use serde_json::{Value, json};
use tokun_storage::{KeyRecord, Nanos, NewAudit, Store};

/// What changed: the state before and after the action (`Value::Null` for
/// "none", like the `before` of a creation).
pub struct Change {
    pub before: Value,
    pub after: Value,
}

impl Change {
    pub fn new(before: Value, after: Value) -> Change {
        Change { before, after }
    }
}

/// Appends `action` on `target` by `actor` to the audit log, flushed at once.
pub async fn record(
    store: &Store,
    actor: &str,
    action: &str,
    target: impl Display,
    change: Change,
    reason: &str,
) {
    let entry = NewAudit {
        at_ms: tokun_providers::clock::unix_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_string(),
        before: change.before,
        after: change.after,
        reason: reason.to_owned(),
    };
    if let Err(error) = store.record_audit(entry).await {
        tracing::error!(%error, action, "an operator action was done but not audited");
    }
}

/// A credit or debit (`signed`, negative for a debit) that left the
/// balance at `balance`: its action and the balance before and after.
pub fn adjustment(balance: Nanos, signed: Nanos) -> (&'static str, Change) {
    let action = if signed.is_negative() {
        "account.debit"
    } else {
        "account.credit"
    };
    let before = Nanos::new(balance.get().saturating_sub(signed.get()));
    let change = Change::new(
        json!({"balance_usd": before.to_string()}),
        json!({"balance_usd": balance.to_string(), "amount_usd": signed.to_string()}),
    );
    (action, change)
}

/// An account disabled (`disabled`) or enabled again.
pub fn disabling(disabled: bool) -> (&'static str, Change) {
    let action = if disabled {
        "account.disable"
    } else {
        "account.enable"
    };
    let change = Change::new(
        json!({"disabled": !disabled}),
        json!({"disabled": disabled}),
    );
    (action, change)
}

/// A key's revocation, if `before` was not revoked already.
pub fn revocation(before: &KeyRecord, after: &KeyRecord) -> Option<Change> {
    if before.revoked_ms.is_some() || after.revoked_ms.is_none() {
        return None;
    }
    let key = |record: &KeyRecord| {
        json!({"account": record.account.to_string(), "name": record.name,
               "revoked_ms": record.revoked_ms})
    };
    Some(Change::new(key(before), key(after)))
}

/// A reason as the audit log keeps it: trimmed, and 1 to 500 characters
/// without control characters when `required`, at most 500 otherwise.
pub fn reason(text: Option<&str>, required: bool) -> Result<String, &'static str> {
    let text = text.unwrap_or_default().trim();
    let length = text.chars().count();
    if (required && length == 0) || length > 500 || text.chars().any(char::is_control) {
        return Err(if required {
            "`reason` is required: 1 to 500 characters, on one line."
        } else {
            "`reason` must be at most 500 characters, on one line."
        });
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::reason;

    #[test]
    fn a_reason_is_trimmed_bounded_and_on_one_line() {
        assert_eq!(reason(Some("  typo  "), true).unwrap(), "typo");
        assert!(reason(None, true).is_err());
        assert!(reason(Some("   "), true).is_err());
        assert_eq!(reason(None, false).unwrap(), "");
        assert!(reason(Some("a\nb"), false).is_err());
        assert!(reason(Some(&"x".repeat(501)), true).is_err());
        assert!(reason(Some(&"é".repeat(500)), true).is_ok());
    }
}
