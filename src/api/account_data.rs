//! Everything held about an account, out and gone (issue 20 items 5–6,
//! shared by the console's `/account`): `GET /v1/account/export` streams
//! one JSON document of the profile, sign-ins, sessions, passkeys, keys,
//! every request, every ledger entry, the payments and the request
//! debugging bodies still held; `POST
//! /v1/account/delete` (`{"confirm": "<email>"}`) disables the account,
//! marks it deleted, revokes every key and ends every session at once.
//!
//! The export is built a chunk at a time on a blocking thread from bounded
//! store batches (like `/activity.json`), so a million requests never sit
//! in memory. It never holds a key's secret or hash, a session's id, hash
//! or CSRF token, or a passkey's key material.
//!
//! Deletion writes nothing that purges: the personal data stays, refused
//! everywhere, until the retention sweeper (issue 20 item 4) purges it 30
//! days after `deleted_ms` and pseudonymises the ledger.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokun_storage::{
    AccountId, AccountRecord, BatchCursor, KeyRecord, LedgerEntry, Nanos, PasskeyRecord,
    PaymentRecord, SessionRecord, SignInRecord, StorageError, Store, UsageRecord,
};

use super::{parse_json, read_json_body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Rows per chunk of the export's body.
const CHUNK_ROWS: usize = 1_000;
/// Debug bodies per chunk: each may be up to 2 MiB (a request and its answer).
const DEBUG_BODIES_PER_CHUNK: usize = 16;
/// The delete request's body is one email.
const DELETE_BODY_LIMIT: usize = 4 * 1024;

/// `GET /v1/account/export`.
pub async fn export(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    export_response(&state, caller.account).map_err(|error| {
        tracing::warn!(%error, "an account export failed");
        ApiError::Internal
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    confirm: String,
}

/// `POST /v1/account/delete`.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(&headers, body, DELETE_BODY_LIMIT).await?;
    let request: DeleteRequest = parse_json(&bytes)?;
    let record = state
        .services()
        .store
        .account(caller.account)
        .map_err(|_| ApiError::Internal)?
        .ok_or(ApiError::Internal)?;
    if !email_confirms(&record.email, &request.confirm) {
        return Err(ApiError::BadRequest {
            message: "`confirm` must be the account's email address.".into(),
            param: Some("confirm".into()),
            code: Some("confirmation_mismatch"),
        });
    }
    let deleted = delete_account(&state, caller.account)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "an account deletion failed");
            ApiError::Internal
        })?;
    Ok(axum::Json(json!({
        "object": "account.deleted",
        "id": caller.account.to_string(),
        "deleted": true,
        "deleted_ms": deleted.deleted_ms,
        "keys_revoked": deleted.keys_revoked,
        "sessions_ended": deleted.sessions_ended,
        "purge_after_days": PURGE_AFTER_DAYS,
    }))
    .into_response())
}

/// Days after deletion when the retention sweeper purges personal data.
pub(crate) const PURGE_AFTER_DAYS: u64 = 30;

/// Whether `typed` is the account's email (trimmed, any case).
pub(crate) fn email_confirms(email: &str, typed: &str) -> bool {
    let typed = typed.trim();
    !typed.is_empty() && typed.to_lowercase() == email.trim().to_lowercase()
}

/// What a deletion did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deleted {
    pub deleted_ms: u64,
    pub keys_revoked: usize,
    pub sessions_ended: usize,
}

/// Deletes an account now: keys revoked (store and auth cache, so open
/// `/v1/ws` sockets refuse their next request), disabled and marked
/// `deleted_ms` by its account actor (nothing more is reserved, and the
/// actor keeps the mark), and every session ended. Sign-in refuses a deleted
/// account by every method, and its email stays taken by it, so signing
/// in with the same email never makes a new account.
pub(crate) async fn delete_account(
    state: &AppState,
    account: AccountId,
) -> anyhow::Result<Deleted> {
    let services = state.services();
    let now = tokun_providers::clock::unix_ms();
    let mut keys_revoked = 0;
    for key in services.store.keys_for(account)? {
        if key.is_revoked() {
            continue;
        }
        if super::account::revoke(state, key.id).await.is_err() {
            anyhow::bail!("revoking key {} failed", key.id);
        }
        keys_revoked += 1;
    }
    let record = services
        .accounts
        .mark_deleted(account, now)
        .await
        .map_err(|error| anyhow::anyhow!("deleting the account failed: {error}"))?;
    let deleted_ms = record.deleted_ms.unwrap_or(now);
    let sessions_ended = services.store.delete_sessions_of(account)?;
    services.store.flush_people().await?;
    tracing::info!(%account, keys_revoked, sessions_ended, "account deleted by its owner");
    Ok(Deleted {
        deleted_ms,
        keys_revoked,
        sessions_ended,
    })
}

/// The export of `account` as a streamed download, or why the account
/// could not be read.
pub(crate) fn export_response(
    state: &AppState,
    account: AccountId,
) -> Result<Response, StorageError> {
    let store = state.services().store.clone();
    let Some(record) = store.account(account)? else {
        return Err(StorageError::Decode {
            tree: "accounts",
            message: format!("account {account} is gone"),
        });
    };
    let now = tokun_providers::clock::unix_ms();
    let export = Export {
        store,
        record,
        generated_ms: now,
        phase: Phase::Head,
        written: 0,
    };
    let chunks = stream::unfold(Some(export), |export| async move {
        let mut export = export?;
        if matches!(export.phase, Phase::Done) {
            return None;
        }
        let joined = tokio::task::spawn_blocking(move || {
            let chunk = export.chunk();
            (export, chunk)
        })
        .await;
        match joined {
            Ok((export, Ok(bytes))) => Some((Ok::<Bytes, std::io::Error>(bytes), Some(export))),
            Ok((_, Err(error))) => {
                tracing::warn!(%error, "an account export failed part way");
                Some((Err(std::io::Error::other("the export failed")), None))
            }
            Err(error) => {
                tracing::warn!(%error, "an account export chunk panicked");
                Some((Err(std::io::Error::other("the export failed")), None))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let name = format!("tokun-export-{account}-{}.json", date(now));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Where the export is: the small sections go out at once in the head,
/// the long ones a batch at a time.
enum Phase {
    Head,
    SignIns(Option<BatchCursor>),
    Requests(Option<BatchCursor>),
    /// The next ledger seq to read.
    Ledger(u64),
    /// Request debugging's bodies still held (7 days at most).
    DebugBodies(Option<BatchCursor>),
    Done,
}

struct Export {
    store: Store,
    record: AccountRecord,
    generated_ms: u64,
    phase: Phase,
    /// Rows written in the current array (its commas).
    written: usize,
}

impl Export {
    /// The next piece of the document.
    fn chunk(&mut self) -> Result<Bytes, StorageError> {
        let account = self.record.id;
        let mut out = String::new();
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Head => {
                out = self.head()?;
                out.push_str(",\"sign_ins\":[");
                self.start(Phase::SignIns(None));
            }
            Phase::SignIns(after) => {
                let batch = self
                    .store
                    .signins_batch(account, after.as_ref(), CHUNK_ROWS)?;
                for signin in &batch.rows {
                    self.row(&mut out, &signin_json(signin));
                }
                match batch.next {
                    Some(next) => self.phase = Phase::SignIns(Some(next)),
                    None => {
                        out.push_str("\n],\"requests\":[");
                        self.start(Phase::Requests(None));
                    }
                }
            }
            Phase::Requests(after) => {
                let batch = self
                    .store
                    .usage_batch(account, after.as_ref(), CHUNK_ROWS)?;
                for request in &batch.rows {
                    self.row(&mut out, &request_json(request));
                }
                match batch.next {
                    Some(next) => self.phase = Phase::Requests(Some(next)),
                    None => {
                        out.push_str("\n],\"ledger\":[");
                        self.start(Phase::Ledger(0));
                    }
                }
            }
            Phase::Ledger(from_seq) => {
                let (mut last, mut read) = (None, 0);
                for entry in self.store.entries_for(account, from_seq).take(CHUNK_ROWS) {
                    let entry = entry?;
                    last = Some(entry.seq);
                    read += 1;
                    self.row(&mut out, &entry_json(&entry));
                }
                match last {
                    // A full batch: there may be more.
                    Some(seq) if read == CHUNK_ROWS => {
                        self.phase = Phase::Ledger(seq.saturating_add(1));
                    }
                    _ => {
                        out.push_str("\n],\"debug_bodies\":[");
                        self.start(Phase::DebugBodies(None));
                    }
                }
            }
            Phase::DebugBodies(after) => {
                let batch = self.store.debug_bodies_of_account(
                    account,
                    after.as_ref(),
                    DEBUG_BODIES_PER_CHUNK,
                )?;
                for body in &batch.rows {
                    self.row(&mut out, &super::debug::body_json(body));
                }
                match batch.next {
                    Some(next) => self.phase = Phase::DebugBodies(Some(next)),
                    None => {
                        out.push_str("\n]}\n");
                        self.phase = Phase::Done;
                    }
                }
            }
            Phase::Done => {}
        }
        Ok(Bytes::from(out))
    }

    fn start(&mut self, phase: Phase) {
        self.phase = phase;
        self.written = 0;
    }

    fn row(&mut self, out: &mut String, value: &Value) {
        out.push_str(if self.written == 0 { "\n" } else { ",\n" });
        out.push_str(&value.to_string());
        self.written += 1;
    }

    /// The document's start: who, and the sections that are small.
    fn head(&self) -> Result<String, StorageError> {
        let account = self.record.id;
        let profile = self.store.profile(account)?;
        let keys = self.store.keys_for(account)?;
        let passkeys = self.store.passkeys_of(account)?;
        let sessions = self.store.sessions_of(account)?;
        let payments = self.store.payments_for(account)?;
        let r = &self.record;
        let head = json!({
            "object": "account_export",
            "account_id": account.to_string(),
            "generated_ms": self.generated_ms,
            "generated_at": iso(self.generated_ms),
            "note": "Times are UTC (RFC 3339) beside Unix milliseconds; amounts are exact decimal USD beside integer nano-USD.",
            "profile": {
                "email": r.email,
                "display_name": profile.display_name,
                "time_zone": profile.time_zone,
                "created_ms": r.created_ms,
                "created_at": iso(r.created_ms),
                "first_signin_ms": profile.first_signin_ms,
                "first_signin_at": profile.first_signin_ms.map(iso),
                "last_signin_ms": profile.last_signin_ms,
                "last_signin_at": profile.last_signin_ms.map(iso),
                "low_balance_alert": profile.low_balance.map(money),
                "disabled": r.disabled,
                "deleted_ms": r.deleted_ms,
            },
            "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
            "passkeys": passkeys.iter().map(passkey_json).collect::<Vec<_>>(),
            "keys": keys.iter().map(key_json).collect::<Vec<_>>(),
            "payments": payments.iter().map(payment_json).collect::<Vec<_>>(),
        });
        // The head without its closing brace: the long arrays follow.
        let mut text = head.to_string();
        text.pop();
        Ok(text)
    }
}

fn iso(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn date(ms: u64) -> String {
    let text = iso(ms);
    text.get(..10).unwrap_or("today").to_owned()
}

fn money(amount: Nanos) -> Value {
    json!({ "usd": amount.to_string(), "nanos": amount.get() })
}

fn signin_json(s: &SignInRecord) -> Value {
    json!({
        "at_ms": s.at_ms,
        "at": iso(s.at_ms),
        "method": s.method,
        "ip": s.ip,
        "user_agent": s.user_agent,
    })
}

/// A session without its hash or CSRF token.
fn session_json(s: &SessionRecord) -> Value {
    json!({
        "created_ms": s.created_ms,
        "created_at": iso(s.created_ms),
        "expires_ms": s.expires_ms,
        "expires_at": iso(s.expires_ms),
        "ip": s.ip,
        "user_agent": s.user_agent,
        "method": s.method,
    })
}

/// A passkey's name and times; no credential.
fn passkey_json(p: &PasskeyRecord) -> Value {
    json!({
        "name": p.name,
        "created_ms": p.created_ms,
        "created_at": iso(p.created_ms),
        "last_used_ms": p.last_used_ms,
        "last_used_at": p.last_used_ms.map(iso),
    })
}

/// A key's metadata; the secret is never stored, its hash never leaves.
fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id.to_string(),
        "name": k.name,
        "prefix": k.prefix,
        "created_ms": k.created_ms,
        "created_at": iso(k.created_ms),
        "last_used_ms": k.last_used_ms,
        "last_used_at": k.last_used_ms.map(iso),
        "revoked_ms": k.revoked_ms,
        "revoked_at": k.revoked_ms.map(iso),
        "spend_limit": k.spend_limit.map(money),
        "limit_reset": k.limit_reset.as_str(),
        "rpm_limit": k.rpm_limit,
        "allowed_models": k.allowed_models,
        "expires_ms": k.expires_ms,
        "expires_at": k.expires_ms.map(iso),
        "debug": k.debug,
    })
}

fn payment_json(p: &PaymentRecord) -> Value {
    json!({
        "checkout_session": p.session_id,
        "amount": money(p.amount),
        "currency": p.currency,
        "status": p.status.as_str(),
        "created_ms": p.created_ms,
        "created_at": iso(p.created_ms),
        "updated_ms": p.updated_ms,
        "updated_at": iso(p.updated_ms),
        "paid": money(p.paid_amount),
        "refunded": money(p.refunded_amount),
        "debited": money(p.debited_amount),
        "payment_intent": p.payment_intent,
        "note": p.note,
    })
}

fn request_json(r: &UsageRecord) -> Value {
    json!({
        "request_id": r.request_id,
        "at_ms": r.at_ms,
        "at": iso(r.at_ms),
        "key": r.key.map(|k| k.to_string()),
        "model": r.model,
        "served_model": r.served_model,
        "provider": r.provider,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "completion_tokens": r.completion_tokens,
        "cost": money(r.cost),
        "usage": if r.estimated { "estimated" } else { "exact" },
        "status": r.status,
        "transport": r.transport,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "error_kind": r.error_kind,
        "route": r.route,
    })
}

fn entry_json(e: &LedgerEntry) -> Value {
    json!({
        "seq": e.seq,
        "at_ms": e.at_ms,
        "at": iso(e.at_ms),
        "kind": e.kind,
        "amount": money(e.amount),
        "hold": e.hold.map(|h| h.to_string()),
        "request_id": e.request_id,
        "reference": e.reference,
        "estimated": e.estimated,
        "balance_after": money(e.balance_after),
        "held_after": money(e.held_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmation_is_the_email_in_any_case() {
        assert!(email_confirms("ann@example.com", "ann@example.com"));
        assert!(email_confirms("ann@example.com", " Ann@Example.COM "));
        assert!(!email_confirms("ann@example.com", ""));
        assert!(!email_confirms("ann@example.com", "ann@example.co"));
        assert!(!email_confirms("ann@example.com", "bob@example.com"));
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(iso(1_000), "1970-01-01T00:00:01Z");
    }
}
