//! Where a request's usage is billed.
//!
//! `Meter::Log` only logs usage (billing off). `Meter::Account` carries the
//! hold the edge reserved before the upstream call: the stream actor extends
//! it as tokens arrive, checkpoints usage for crash recovery, and settles it
//! at the end — the answer comes back only once the settlement is durable.

use std::sync::Arc;

use tokun_providers::Usage;
use tokun_storage::UsageRecord;
use tokun_storage::{AccountId, KeyId};

use crate::account::registry::AccountsHandle;
use crate::account::{AccountError, Billed, Reservation};
use crate::relay::{RequestError, Settlement, UsageSource};

/// The usage of one finished request, as the stream actor saw it.
#[derive(Debug, Clone)]
pub struct MeterRecord {
    pub request_id: Arc<str>,
    pub model: Arc<str>,
    pub provider: Option<Arc<str>>,
    pub usage: Usage,
    pub source: UsageSource,
    /// `completed` or `interrupted`, for the log.
    pub outcome: &'static str,
    pub status: u16,
    pub error_kind: Option<&'static str>,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum Meter {
    /// Billing off: usage is logged and nothing is charged.
    Log,
    Account(Box<AccountMeter>),
}

/// A request billed to an account, with its open hold.
#[derive(Clone)]
pub struct AccountMeter {
    pub accounts: AccountsHandle,
    pub account: AccountId,
    pub key: Option<KeyId>,
    pub reservation: Reservation,
    /// `http` or `ws`, recorded with the usage.
    pub transport: &'static str,
}

impl std::fmt::Debug for AccountMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountMeter")
            .field("account", &self.account)
            .field("hold", &self.reservation.hold)
            .finish()
    }
}

impl Meter {
    /// Output tokens the hold covers so far (`u64::MAX` when billing is off).
    pub fn allowance(&self) -> u64 {
        match self {
            Meter::Log => u64::MAX,
            Meter::Account(meter) => meter.reservation.allowance_tokens,
        }
    }

    /// Holds another increment; `Err` when the account cannot pay for more.
    pub async fn extend(&mut self) -> Result<u64, AccountError> {
        match self {
            Meter::Log => Ok(u64::MAX),
            Meter::Account(meter) => {
                let allowance = meter
                    .accounts
                    .extend(meter.account, meter.reservation.hold)
                    .await?;
                meter.reservation.allowance_tokens = allowance;
                Ok(allowance)
            }
        }
    }

    /// Records usage reached so far, for settlement after a crash.
    pub async fn checkpoint(&self, prompt_tokens: u64, completion_tokens: u64) {
        if let Meter::Account(meter) = self {
            meter
                .accounts
                .checkpoint(
                    meter.account,
                    meter.reservation.hold,
                    prompt_tokens,
                    completion_tokens,
                )
                .await;
        }
    }

    /// Gives the whole hold back: nothing was generated.
    pub async fn release(&self) {
        if let Meter::Account(meter) = self {
            meter
                .accounts
                .release(meter.account, meter.reservation.hold)
                .await;
        }
    }

    /// Settles the request; returns once the settlement is durable.
    pub async fn settle(&self, record: MeterRecord) -> Result<Settlement, RequestError> {
        let estimated = record.source == UsageSource::Estimated;
        match self {
            Meter::Log => {
                tracing::debug!(
                    request_id = %record.request_id,
                    model = %record.model,
                    prompt_tokens = record.usage.prompt_tokens,
                    completion_tokens = record.usage.completion_tokens,
                    estimated,
                    outcome = record.outcome,
                    "metered"
                );
                Ok(Settlement {
                    usage: record.usage,
                    source: record.source,
                    cost_nanos: 0,
                    balance_nanos: None,
                })
            }
            Meter::Account(meter) => {
                let billed = Billed {
                    prompt_tokens: record.usage.prompt_tokens,
                    cached_tokens: record.usage.cached_tokens(),
                    completion_tokens: record.usage.completion_tokens,
                    estimated,
                };
                let usage = meter.usage_record(&record);
                let settled = meter
                    .accounts
                    .settle(meter.account, meter.reservation.hold, billed, Some(usage))
                    .await
                    .map_err(|_| RequestError::LedgerUnavailable)?;
                Ok(Settlement {
                    usage: record.usage,
                    source: record.source,
                    cost_nanos: settled.cost.get(),
                    balance_nanos: Some(settled.balance_after.get()),
                })
            }
        }
    }
}

impl AccountMeter {
    fn usage_record(&self, record: &MeterRecord) -> UsageRecord {
        UsageRecord {
            request_id: record.request_id.to_string(),
            at_ms: crate::account::now_ms(),
            account: self.account,
            key: self.key,
            model: record.model.to_string(),
            served_model: record.model.to_string(),
            provider: record.provider.as_deref().unwrap_or_default().to_string(),
            prompt_tokens: record.usage.prompt_tokens,
            completion_tokens: record.usage.completion_tokens,
            cost: tokun_storage::Nanos::ZERO,
            estimated: record.source == UsageSource::Estimated,
            status: record.status,
            transport: self.transport.to_string(),
            latency_ms: record.latency_ms,
            ttft_ms: record.ttft_ms,
            error_kind: record.error_kind.map(str::to_owned),
        }
    }
}
