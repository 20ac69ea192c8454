//! The low-balance alert: every 30 seconds, a look at each account that set
//! a threshold on `/billing`. A balance below it sends one email (through
//! the console's mailer) and marks the profile alerted; nothing more is sent
//! until the balance is back at or above the threshold, which clears the
//! mark. The balance is the stored, settled one (holds of running requests
//! are not counted), so a large request in flight does not set it off.
//!
//! Why a periodic check and not a hook on settlement: settlements are the
//! money path (account actor, ledger), which knows no mail and should not
//! wait for one; reading a few stored balances every 30 s costs nothing,
//! and an alert 30 s late is on time.

use std::time::Duration;

use tokun_storage::{AlertWatch, StorageError, Store};

use super::super::format::usd;
use super::super::mail::Mailer;
use crate::state::AppState;

/// How often the balances are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Checks every [`CHECK_EVERY`] until aborted (at shutdown).
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mailer = state.console().mailer().clone();
    let store = state.services().store.clone();
    drop(state);
    loop {
        tick.tick().await;
        if let Err(error) = check(&store, &mailer).await {
            tracing::warn!(%error, "the low-balance check failed");
        }
    }
}

/// One pass over the accounts with a threshold; how many alerts it sent.
pub async fn check(store: &Store, mailer: &Mailer) -> Result<usize, StorageError> {
    let scan = store.clone();
    let watches = tokio::task::spawn_blocking(move || scan.low_balance_watches())
        .await
        .map_err(|error| StorageError::Decode {
            tree: "profiles",
            message: format!("the scan stopped: {error}"),
        })??;
    let mut sent = 0;
    for watch in watches {
        let balance = store.books(watch.account)?.balance;
        if balance >= watch.threshold {
            if watch.alerted {
                store.set_low_balance_alerted(watch.account, false)?;
            }
            continue;
        }
        // Only the check that flips the mark sends: two never both do.
        if watch.alerted || !store.set_low_balance_alerted(watch.account, true)? {
            continue;
        }
        if send(store, mailer, &watch, balance).await? {
            sent += 1;
        } else {
            // Not sent: try again at the next check.
            store.set_low_balance_alerted(watch.account, false)?;
        }
    }
    Ok(sent)
}

/// Sends one alert; `false` when it could not be sent (or the account is
/// gone or disabled).
async fn send(
    store: &Store,
    mailer: &Mailer,
    watch: &AlertWatch,
    balance: tokun_storage::Nanos,
) -> Result<bool, StorageError> {
    let Some(account) = store.account(watch.account)? else {
        return Ok(false);
    };
    if account.disabled || account.deleted_ms.is_some() {
        return Ok(false);
    }
    let subject = format!("Your tokun balance is below {}", usd(watch.threshold));
    let body = format!(
        "Your tokun balance is {}, below the {} alert you set.\n\n\
         Top up on the billing page of the console to keep your requests running.\n\
         We will not write again about this until your balance is back above {}.\n",
        usd(balance),
        usd(watch.threshold),
        usd(watch.threshold),
    );
    match mailer.send(&account.email, &subject, &body).await {
        Ok(()) => Ok(true),
        Err(error) => {
            tracing::warn!(account = %watch.account, %error, "could not send a low-balance alert");
            Ok(false)
        }
    }
}
