//! How each record becomes a row of the snapshot schema (`schema.rs`) and
//! back: the column lists, the COPY encoders the snapshot uses and the row
//! decoders the restore uses. The two directions sit side by side so they
//! cannot drift apart.

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::PgError;
use super::copy::CopyRows;
use crate::ids::{AccountId, HoldId, KeyId};
use crate::ledger::{EntryKind, LedgerEntry};
use crate::money::Nanos;
use crate::price::Price;
use crate::records::{AccountRecord, KeyRecord, LimitReset, OpenHold, UsageRecord};

pub(super) const ENTRY_COLUMNS: &str = "seq, at_ms, account_id, kind, amount_nanos, hold_id, \
     request_id, reference, estimated, balance_after_nanos, held_after_nanos";
pub(super) const ACCOUNT_COLUMNS: &str = "id, email, created_ms, disabled, floor_nanos, deleted_ms";
pub(super) const KEY_COLUMNS: &str = "id, account_id, key_hash, prefix, name, created_ms, \
     last_used_ms, revoked_ms, spend_limit_nanos, rpm_limit, allowed_models, debug, limit_reset, \
     expires_ms";
pub(super) const BALANCE_COLUMNS: &str = "account_id, balance_nanos, held_nanos, last_seq";
pub(super) const HOLD_COLUMNS: &str = "hold_id, account_id, amount_nanos, request_id, opened_ms, \
     checkpoint_prompt_tokens, checkpoint_completion_tokens, price_input_nanos, \
     price_output_nanos, price_cached_input_nanos";
pub(super) const REQUEST_COLUMNS: &str = "account_id, at_ms, unique_id, request_id, key_id, \
     model, served_model, provider, prompt_tokens, completion_tokens, cost_nanos, estimated, \
     status, transport, latency_ms, ttft_ms, error_kind, cached_tokens, route";

/// A hold open at a snapshot's cut: its amount comes from the ledger, the
/// rest (for crash recovery after a restore) from the `holds` tree when the
/// snapshot could still see it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HoldRow {
    pub(super) hold: HoldId,
    pub(super) account: AccountId,
    pub(super) amount: Nanos,
    pub(super) request_id: Option<String>,
    pub(super) opened_ms: u64,
    pub(super) checkpoint: Option<(u64, u64)>,
    /// `None` when the hold had already left the `holds` tree.
    pub(super) price: Option<Price>,
}

pub(super) fn put_entry(rows: &mut CopyRows, entry: &LedgerEntry) -> Result<(), PgError> {
    rows.row(11).uint8("a seq", entry.seq)?;
    rows.uint8("a time", entry.at_ms)?;
    rows.uint8("an account id", entry.account.get())?;
    rows.text(entry.kind.as_str())?;
    rows.int8(entry.amount.get());
    rows.opt_uint8("a hold id", entry.hold.map(HoldId::get))?;
    rows.opt_text(entry.request_id.as_deref())?;
    rows.opt_text(entry.reference.as_deref())?;
    rows.boolean(entry.estimated)
        .int8(entry.balance_after.get())
        .int8(entry.held_after.get());
    Ok(())
}

pub(super) fn entry_from(row: &Row) -> Result<LedgerEntry, PgError> {
    let kind: String = get(row, 3)?;
    Ok(LedgerEntry {
        seq: unsigned(row, 0)?,
        at_ms: unsigned(row, 1)?,
        account: AccountId::new(unsigned(row, 2)?),
        kind: EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| inconsistent(format!("unknown entry kind {kind:?}")))?,
        amount: Nanos::new(get(row, 4)?),
        hold: opt_unsigned(row, 5)?.map(HoldId::new),
        request_id: get(row, 6)?,
        reference: get(row, 7)?,
        estimated: get(row, 8)?,
        balance_after: Nanos::new(get(row, 9)?),
        held_after: Nanos::new(get(row, 10)?),
    })
}

pub(super) fn put_account(rows: &mut CopyRows, account: &AccountRecord) -> Result<(), PgError> {
    rows.row(6).uint8("an account id", account.id.get())?;
    rows.text(&account.email)?;
    rows.uint8("a time", account.created_ms)?;
    rows.boolean(account.disabled).int8(account.floor.get());
    rows.opt_uint8("a time", account.deleted_ms)?;
    Ok(())
}

pub(super) fn account_from(row: &Row) -> Result<AccountRecord, PgError> {
    Ok(AccountRecord {
        id: AccountId::new(unsigned(row, 0)?),
        email: get(row, 1)?,
        created_ms: unsigned(row, 2)?,
        disabled: get(row, 3)?,
        floor: Nanos::new(get(row, 4)?),
        deleted_ms: opt_unsigned(row, 5)?,
    })
}

pub(super) fn put_key(rows: &mut CopyRows, hash: &[u8], key: &KeyRecord) -> Result<(), PgError> {
    rows.row(14).uint8("a key id", key.id.get())?;
    rows.uint8("an account id", key.account.get())?;
    rows.bytes(hash)?.text(&key.prefix)?.text(&key.name)?;
    rows.uint8("a time", key.created_ms)?;
    rows.opt_uint8("a time", key.last_used_ms)?;
    rows.opt_uint8("a time", key.revoked_ms)?;
    match key.spend_limit {
        Some(limit) => rows.int8(limit.get()),
        None => rows.null(),
    };
    rows.opt_uint8("an rpm limit", key.rpm_limit.map(u64::from))?;
    rows.text_array(&key.allowed_models)?.boolean(key.debug);
    rows.text(key.limit_reset.as_str())?;
    rows.opt_uint8("a time", key.expires_ms)?;
    Ok(())
}

pub(super) fn key_from(row: &Row) -> Result<([u8; 32], KeyRecord), PgError> {
    let hash: Vec<u8> = get(row, 2)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| inconsistent("an api_keys.key_hash is not 32 bytes".into()))?;
    let rpm_limit = opt_unsigned(row, 9)?
        .map(|rpm| u32::try_from(rpm).map_err(|_| inconsistent(format!("rpm limit {rpm}"))))
        .transpose()?;
    let reset: String = get(row, 12)?;
    let limit_reset =
        LimitReset::parse(&reset).ok_or_else(|| inconsistent(format!("limit_reset {reset:?}")))?;
    let key = KeyRecord {
        id: KeyId::new(unsigned(row, 0)?),
        account: AccountId::new(unsigned(row, 1)?),
        prefix: get(row, 3)?,
        name: get(row, 4)?,
        created_ms: unsigned(row, 5)?,
        last_used_ms: opt_unsigned(row, 6)?,
        revoked_ms: opt_unsigned(row, 7)?,
        spend_limit: get::<Option<i64>>(row, 8)?.map(Nanos::new),
        rpm_limit,
        allowed_models: get(row, 10)?,
        debug: get(row, 11)?,
        limit_reset,
        expires_ms: opt_unsigned(row, 13)?,
    };
    Ok((hash, key))
}

pub(super) fn put_balance(
    rows: &mut CopyRows,
    account: AccountId,
    books: crate::ledger::Books,
    last_seq: u64,
) -> Result<(), PgError> {
    rows.row(4).uint8("an account id", account.get())?;
    rows.int8(books.balance.get()).int8(books.held.get());
    rows.uint8("a seq", last_seq)?;
    Ok(())
}

pub(super) fn put_hold(rows: &mut CopyRows, hold: &HoldRow) -> Result<(), PgError> {
    rows.row(10).uint8("a hold id", hold.hold.get())?;
    rows.uint8("an account id", hold.account.get())?;
    rows.int8(hold.amount.get());
    rows.opt_text(hold.request_id.as_deref())?;
    rows.uint8("a time", hold.opened_ms)?;
    rows.opt_uint8("a token count", hold.checkpoint.map(|(prompt, _)| prompt))?;
    rows.opt_uint8(
        "a token count",
        hold.checkpoint.map(|(_, completion)| completion),
    )?;
    match hold.price {
        Some(price) => rows
            .int8(price.input().get())
            .int8(price.output().get())
            .int8(price.cached_input().get()),
        None => rows.null().null().null(),
    };
    Ok(())
}

pub(super) fn hold_from(row: &Row) -> Result<HoldRow, PgError> {
    let checkpoint = match (opt_unsigned(row, 5)?, opt_unsigned(row, 6)?) {
        (Some(prompt), Some(completion)) => Some((prompt, completion)),
        _ => None,
    };
    let price = match (
        get::<Option<i64>>(row, 7)?,
        get::<Option<i64>>(row, 8)?,
        get::<Option<i64>>(row, 9)?,
    ) {
        (Some(input), Some(output), Some(cached)) => Some(
            Price::per_million(Nanos::new(input), Nanos::new(output), Nanos::new(cached))
                .map_err(|err| inconsistent(format!("an open hold's price: {err}")))?,
        ),
        _ => None,
    };
    Ok(HoldRow {
        hold: HoldId::new(unsigned(row, 0)?),
        account: AccountId::new(unsigned(row, 1)?),
        amount: Nanos::new(get(row, 2)?),
        request_id: get(row, 3)?,
        opened_ms: unsigned(row, 4)?,
        checkpoint,
        price,
    })
}

pub(super) fn put_request(
    rows: &mut CopyRows,
    unique: u64,
    usage: &UsageRecord,
) -> Result<(), PgError> {
    rows.row(19).uint8("an account id", usage.account.get())?;
    rows.uint8("a time", usage.at_ms)?;
    rows.uint8("a usage id", unique)?;
    rows.text(&usage.request_id)?;
    rows.opt_uint8("a key id", usage.key.map(KeyId::get))?;
    rows.text(&usage.model)?.text(&usage.served_model)?;
    rows.text(&usage.provider)?;
    rows.uint8("a token count", usage.prompt_tokens)?;
    rows.uint8("a token count", usage.completion_tokens)?;
    rows.int8(usage.cost.get())
        .boolean(usage.estimated)
        .int4(i32::from(usage.status));
    rows.text(&usage.transport)?;
    rows.uint8("a latency", usage.latency_ms)?;
    rows.opt_uint8("a latency", usage.ttft_ms)?;
    rows.opt_text(usage.error_kind.as_deref())?;
    rows.uint8("a token count", usage.cached_tokens)?;
    match usage.route {
        Some(route) => rows.int4(i32::try_from(route).unwrap_or(i32::MAX)),
        None => rows.null(),
    };
    Ok(())
}

pub(super) fn request_from(row: &Row) -> Result<(u64, UsageRecord), PgError> {
    let status: i32 = get(row, 12)?;
    let usage = UsageRecord {
        account: AccountId::new(unsigned(row, 0)?),
        at_ms: unsigned(row, 1)?,
        request_id: get(row, 3)?,
        key: opt_unsigned(row, 4)?.map(KeyId::new),
        model: get(row, 5)?,
        served_model: get(row, 6)?,
        provider: get(row, 7)?,
        prompt_tokens: unsigned(row, 8)?,
        completion_tokens: unsigned(row, 9)?,
        cost: Nanos::new(get(row, 10)?),
        estimated: get(row, 11)?,
        status: u16::try_from(status).map_err(|_| inconsistent(format!("status {status}")))?,
        transport: get(row, 13)?,
        latency_ms: unsigned(row, 14)?,
        ttft_ms: opt_unsigned(row, 15)?,
        error_kind: get(row, 16)?,
        cached_tokens: unsigned(row, 17)?,
        route: get::<Option<i32>>(row, 18)?
            .map(|route| u32::try_from(route).map_err(|_| inconsistent(format!("route {route}"))))
            .transpose()?,
    };
    Ok((unsigned(row, 2)?, usage))
}

impl HoldRow {
    /// The `holds` tree record a restore recreates. A hold whose price the
    /// snapshot no longer saw gets a zero price and no checkpoint, so
    /// recovery charges the whole hold (what it does for any hold without a
    /// checkpoint).
    pub(super) fn to_open_hold(&self) -> OpenHold {
        OpenHold {
            hold: self.hold,
            account: self.account,
            amount: self.amount,
            request_id: self.request_id.clone(),
            opened_ms: self.opened_ms,
            checkpoint_tokens: self.price.and(self.checkpoint),
            price: self.price.unwrap_or_default(),
        }
    }
}

fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, PgError> {
    row.try_get(index)
        .map_err(|err| inconsistent(format!("column {index}: {err}")))
}

fn unsigned(row: &Row, index: usize) -> Result<u64, PgError> {
    let value: i64 = get(row, index)?;
    u64::try_from(value).map_err(|_| inconsistent(format!("column {index} is negative: {value}")))
}

fn opt_unsigned(row: &Row, index: usize) -> Result<Option<u64>, PgError> {
    let value: Option<i64> = get(row, index)?;
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| inconsistent(format!("column {index} is negative: {v}")))
        })
        .transpose()
}

fn inconsistent(message: String) -> PgError {
    PgError::Inconsistent { message }
}
