//! The one email each account gets about each announced policy change: a
//! background task owned by the server, woken by an announcement and
//! otherwise looking every [`PASS_EVERY`] for mailings not finished.
//!
//! A mailing walks the accounts in id order, [`BATCH`] at a time and at
//! most one batch a second, so 100,000 accounts take about 80 minutes
//! instead of flooding the mail server. For each batch it first claims
//! each account's mail and moves the mailing's progress (both flushed),
//! then sends: a restart never sends a claimed mail again (at most once —
//! a crash in the middle of a send loses that one email rather than
//! sending it twice). A send that fails (the mail server is down or
//! refuses) gives the claim back and stops the mailing at that account
//! until the next pass; an address no mail server could take is skipped.
//!
//! Without `[auth.smtp]` nobody is mailed: one line per announcement goes
//! to the log instead, and the mailing is marked done.
//!
//! Deleted accounts and accounts without an email are skipped; disabled
//! ones are mailed (the change applies to their data too).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokun_storage::{AccountId, AccountRecord, MailProgress, PolicyRecord, StorageError, Store};

use super::name;
use crate::console::mail::{MailError, Mailer};
use crate::state::AppState;

/// How often unfinished mailings are looked at without a wake-up.
pub const PASS_EVERY: Duration = Duration::from_secs(60);
/// Accounts mailed per second at most.
pub const BATCH: usize = 20;

/// Wakes the mail task (the one task that mails, so passes never overlap).
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct PolicyMail {
    /// An announcement was made: look now (a wake while a pass runs is
    /// kept, so the next pass starts right after).
    wake: Arc<Notify>,
}

impl PolicyMail {
    /// Tells the task to look now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// One policy's email, the same for every account.
struct Letter<'a> {
    policy: &'a PolicyRecord,
    subject: String,
    body: String,
}

impl<'a> Letter<'a> {
    /// The email's subject and plain-text body.
    fn new(policy: &'a PolicyRecord) -> Letter<'a> {
        let subject = format!(
            "Changes to tokun's policies, effective {}",
            policy.effective
        );
        let link = policy
            .url
            .as_deref()
            .map(|url| format!("Read the changes: {url}\n\n"))
            .unwrap_or_default();
        let body = format!(
            "{}\n\nThese changes take effect on {}.\n\n{link}\
             You get this email once, because you have a tokun account.\n",
            policy.summary, policy.effective
        );
        Letter {
            policy,
            subject,
            body,
        }
    }
}

/// Mails until aborted (at shutdown).
pub async fn run(state: AppState) {
    let mailer = state.console().mailer().clone();
    let store = state.services().store.clone();
    let control = state.console().policy_mail().clone();
    drop(state);
    loop {
        if let Err(error) = pass(&store, &mailer).await {
            tracing::warn!(%error, "the policy mailing failed; it goes on at the next pass");
        }
        tokio::select! {
            () = control.wake.notified() => {}
            () = tokio::time::sleep(PASS_EVERY) => {}
        }
    }
}

/// One look at every announcement; how many emails it sent.
async fn pass(store: &Store, mailer: &Mailer) -> Result<u64, StorageError> {
    let mut sent = 0;
    for policy in store.policies()? {
        let progress = store.mail_progress(policy.id)?;
        if progress.done_ms.is_some() {
            continue;
        }
        if mailer.logs_codes() {
            tracing::info!(
                policy = %name(policy.id),
                effective = %policy.effective,
                "policy change announced; no [auth.smtp], so no account is emailed about it"
            );
            finish(store, policy.id, progress).await?;
            continue;
        }
        sent += mail(store, mailer, &policy, progress).await?;
    }
    Ok(sent)
}

/// Walks the accounts from where the mailing is; how many it sent.
async fn mail(
    store: &Store,
    mailer: &Mailer,
    policy: &PolicyRecord,
    mut progress: MailProgress,
) -> Result<u64, StorageError> {
    let letter = Letter::new(policy);
    let sent_before = progress.sent;
    loop {
        let started = tokio::time::Instant::now();
        let accounts = store.accounts_from(AccountId::new(progress.next_account), BATCH)?;
        let Some(last) = accounts.last() else {
            finish(store, policy.id, progress).await?;
            return Ok(progress.sent - sent_before);
        };
        let mut claimed = Vec::new();
        for account in &accounts {
            let wanted = account.deleted_ms.is_none() && !account.email.is_empty();
            if wanted && store.claim_policy_mail(policy.id, account.id)? {
                claimed.push(account);
            }
        }
        progress.next_account = last.id.get().saturating_add(1);
        store.put_mail_progress(policy.id, &progress)?;
        // Claims on disk before any send: see the module docs.
        store.flush_people().await?;
        let stopped = send(store, mailer, &letter, &claimed, &mut progress).await?;
        store.put_mail_progress(policy.id, &progress)?;
        if stopped {
            store.flush_people().await?;
            return Ok(progress.sent - sent_before);
        }
        tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    }
}

/// Sends `letter` to the `claimed` accounts; true when the mail server
/// failed and the mailing stopped (its progress moved back to the account
/// it stopped at, the unsent claims given back).
async fn send(
    store: &Store,
    mailer: &Mailer,
    letter: &Letter<'_>,
    claimed: &[&AccountRecord],
    progress: &mut MailProgress,
) -> Result<bool, StorageError> {
    let policy = letter.policy.id;
    for (i, account) in claimed.iter().enumerate() {
        match mailer
            .send(&account.email, &letter.subject, &letter.body)
            .await
        {
            Ok(()) => {
                store.mark_policy_mail_sent(policy, account.id)?;
                progress.sent += 1;
            }
            // An address no mail server takes: skipped for good (the claim
            // stays), or it would hold up everyone after it.
            Err(error @ MailError::Address(_)) => {
                tracing::warn!(%error, policy = %name(policy), account = %account.id,
                    "a policy email cannot be sent to this account's address");
            }
            Err(error) => {
                tracing::warn!(%error, policy = %name(policy), account = %account.id,
                    "a policy email was not sent; trying again at the next pass");
                give_back(store, policy, &claimed[i..])?;
                progress.next_account = account.id.get();
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Drops the claims of mails not sent, so a later pass sends them.
fn give_back(store: &Store, policy: u64, accounts: &[&AccountRecord]) -> Result<(), StorageError> {
    for account in accounts {
        store.release_policy_mail(policy, account.id)?;
    }
    Ok(())
}

async fn finish(
    store: &Store,
    policy: u64,
    mut progress: MailProgress,
) -> Result<(), StorageError> {
    progress.done_ms = Some(tokun_providers::clock::unix_ms());
    store.put_mail_progress(policy, &progress)?;
    store.flush_people().await
}
