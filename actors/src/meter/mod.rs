//! A request's money, whatever its transport: the one type that sizes and
//! opens its hold, extends and checkpoints it, and settles or releases it.
//!
//! Every transport meters through [`Meter`]: SSE, non-streaming, `/v1/ws`
//! and `/v1/embeddings` through their stream actor, `/v1/realtime` once per
//! response. A meter dropped with its hold still open (a client that left, a
//! task that was cancelled, a panic) gives the hold back with a message to the
//! account actor — never a blocking call — so no hold outlives its request
//! and an account actor can always idle out. The edge never sizes a hold: it
//! says who pays ([`Payer`]), and the meter applies [`HoldPolicy`].

use std::sync::Arc;

use tokun_providers::Usage;
use tokun_storage::{AccountId, KeyId, Nanos, Price, UsageRecord};

use crate::account::supervisor::AccountsHandle;
use crate::account::{AccountError, Billed, KeyLimit, Reservation, ReserveRequest};
use crate::relay::{RequestError, Settlement, UsageSource};

/// How a request reached tokun: a metric label and a request-log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `POST /v1/…` over HTTP (SSE or a JSON body).
    Http,
    /// A completion on a `/v1/ws` socket.
    Ws,
    /// One response of a `/v1/realtime` session.
    Realtime,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Realtime => "realtime",
        }
    }
}

/// How a billed request ended, for the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The upstream finished the answer.
    Completed,
    /// It ended early: cancel, client gone, budget, an upstream failure.
    Interrupted,
}

impl RequestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Completed => "completed",
            RequestOutcome::Interrupted => "interrupted",
        }
    }
}

/// Who pays for a request: an account, through one of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payer {
    pub account: AccountId,
    pub key: KeyId,
    /// The key's spend limit and its period, if it has one.
    pub key_limit: Option<KeyLimit>,
}

/// What a model costs and how much it can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tariff {
    pub price: Price,
    pub context_window: u64,
}

/// The output a request asks for, and how it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// The client's `max_tokens` (or its equivalent), if it set one.
    pub requested: Option<u64>,
    /// Streamed answers hold in increments; whole answers are held at once.
    pub streamed: bool,
    /// Nothing reaches the client before the settlement is durable (a
    /// non-streamed completion, embeddings): a hold that crash recovery finds
    /// open was never delivered, so it is settled at zero, not in full.
    pub withheld: bool,
}

/// The rule that sizes every hold (config `billing.hold_increment_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    pub increment_tokens: u64,
}

impl HoldPolicy {
    /// `(tokens held up front and per extension, most output tokens)`. The most
    /// is what the client asked for, else what the context window leaves; a
    /// stream holds one increment at a time, a whole answer all of it at once
    /// (it cannot be extended while it is generated).
    pub fn size(&self, tariff: Tariff, prompt_tokens: u64, output: Output) -> (u64, u64) {
        let context_left = tariff.context_window.saturating_sub(prompt_tokens).max(1);
        let max_output = output.requested.unwrap_or(context_left);
        let increment = if output.streamed {
            self.increment_tokens.max(1)
        } else {
            max_output
        };
        (increment, max_output)
    }
}

/// The usage of one finished request, as its meter's owner saw it.
#[derive(Debug, Clone)]
pub struct MeterRecord {
    pub request_id: Arc<str>,
    /// The configured model the client asked for (or `auto` resolved to).
    pub model: Arc<str>,
    /// The model the upstream was asked for, once a route answered.
    pub served_model: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    /// The position of the answering route among the model's configured
    /// routes (0 first), once a route answered.
    pub route: Option<u32>,
    pub usage: Usage,
    pub source: UsageSource,
    pub outcome: RequestOutcome,
    pub error_kind: Option<&'static str>,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
}

/// Where one request's usage is billed.
#[derive(Debug)]
pub enum Meter {
    /// Billing off (or nobody pays): usage is logged and nothing is charged.
    Log,
    Account(Box<AccountMeter>),
}

/// A request billed to an account, with its open hold.
pub struct AccountMeter {
    accounts: AccountsHandle,
    payer: Payer,
    reservation: Reservation,
    transport: Transport,
    /// Set once the hold was settled or released: nothing is left for `Drop`.
    closed: bool,
}

impl std::fmt::Debug for AccountMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountMeter")
            .field("account", &self.payer.account)
            .field("hold", &self.reservation.hold)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Drop for AccountMeter {
    fn drop(&mut self) {
        if !self.closed {
            self.accounts
                .release_nowait(self.payer.account, self.reservation.hold);
        }
    }
}

impl Meter {
    /// Places the hold for one request, sized by `policy`; [`Meter::Log`] when
    /// nobody pays. Refused before any upstream call when the account cannot
    /// pay for the prompt and one output token, or the ledger is not writable.
    pub async fn open(
        accounts: &AccountsHandle,
        payer: Option<Payer>,
        request_id: &str,
        policy: HoldPolicy,
        (tariff, prompt_tokens, output): (Tariff, u64, Output),
        transport: Transport,
    ) -> Result<Meter, AccountError> {
        let Some(payer) = payer else {
            return Ok(Meter::Log);
        };
        let (increment_tokens, max_output_tokens) = policy.size(tariff, prompt_tokens, output);
        let request = ReserveRequest {
            request_id: request_id.to_owned(),
            key: Some(payer.key),
            key_limit: payer.key_limit,
            price: tariff.price,
            prompt_tokens,
            increment_tokens,
            max_output_tokens,
            checkpoint: output.withheld.then_some((0, 0)),
        };
        let reservation = accounts.reserve(payer.account, request).await?;
        Ok(Meter::Account(Box::new(AccountMeter {
            accounts: accounts.clone(),
            payer,
            reservation,
            transport,
            closed: false,
        })))
    }

    /// The `max_tokens` the upstream must be sent when the funds cap the
    /// answer below `requested` (or the client set one): `None` leaves the
    /// request as it is.
    pub fn output_cap(&self, output: Output, tariff: Tariff, prompt_tokens: u64) -> Option<u64> {
        let Meter::Account(meter) = self else {
            return None;
        };
        let affordable = meter.reservation.max_tokens;
        let wanted = output
            .requested
            .unwrap_or_else(|| tariff.context_window.saturating_sub(prompt_tokens).max(1));
        (affordable < wanted || output.requested.is_some()).then_some(affordable)
    }

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
                    .extend(meter.payer.account, meter.reservation.hold)
                    .await?;
                meter.reservation.allowance_tokens = allowance;
                Ok(allowance)
            }
        }
    }

    /// Records usage reached so far, for settlement after a crash. Sent, not awaited.
    pub fn checkpoint(&self, prompt_tokens: u64, completion_tokens: u64) {
        if let Meter::Account(meter) = self {
            meter.accounts.checkpoint_nowait(
                meter.payer.account,
                meter.reservation.hold,
                prompt_tokens,
                completion_tokens,
            );
        }
    }

    /// Gives the whole hold back: nothing was generated. Sent, not awaited.
    pub fn release(&mut self) {
        if let Meter::Account(meter) = self {
            if !meter.closed {
                meter.closed = true;
                meter
                    .accounts
                    .release_nowait(meter.payer.account, meter.reservation.hold);
            }
        }
    }

    /// Gives the whole hold back and logs the request as failed with the
    /// `status` its client is answered: no route answered, so nothing was
    /// generated and nothing is charged (`record`'s usage is not billed).
    /// The log record goes with the `Release` entry. Sent, not awaited.
    pub fn release_failed(&mut self, record: &MeterRecord, status: u16) {
        match self {
            Meter::Log => tracing::debug!(
                request_id = %record.request_id,
                model = %record.model,
                status,
                error_kind = record.error_kind,
                "failed before any output"
            ),
            Meter::Account(meter) if !meter.closed => {
                meter.closed = true;
                let usage = meter.usage_record(record, status);
                meter.accounts.release_logged_nowait(
                    meter.payer.account,
                    meter.reservation.hold,
                    usage,
                );
            }
            Meter::Account(_) => {}
        }
    }

    /// Settles the request; returns once the settlement is durable.
    pub async fn settle(&mut self, record: MeterRecord) -> Result<Settlement, RequestError> {
        let estimated = record.source == UsageSource::Estimated;
        match self {
            Meter::Log => {
                tracing::debug!(
                    request_id = %record.request_id,
                    model = %record.model,
                    prompt_tokens = record.usage.prompt_tokens,
                    completion_tokens = record.usage.completion_tokens,
                    estimated,
                    outcome = record.outcome.as_str(),
                    "metered"
                );
                Ok(Settlement {
                    usage: record.usage,
                    source: record.source,
                    cost: Nanos::ZERO,
                    balance: None,
                })
            }
            Meter::Account(meter) => {
                let billed = Billed {
                    prompt_tokens: record.usage.prompt_tokens,
                    cached_tokens: record.usage.cached_tokens(),
                    completion_tokens: record.usage.completion_tokens,
                    estimated,
                };
                // A settled request was answered (its stream or body began).
                let usage = meter.usage_record(&record, 200);
                // Whatever the answer, the account actor has the settle message
                // (or the ledger is gone): a release now would be a second close.
                meter.closed = true;
                let settled = meter
                    .accounts
                    .settle(
                        meter.payer.account,
                        meter.reservation.hold,
                        billed,
                        Some(usage),
                    )
                    .await?;
                Ok(Settlement {
                    usage: record.usage,
                    source: record.source,
                    cost: settled.cost,
                    balance: Some(settled.balance_after),
                })
            }
        }
    }
}

impl AccountMeter {
    fn usage_record(&self, record: &MeterRecord, status: u16) -> UsageRecord {
        UsageRecord {
            request_id: record.request_id.to_string(),
            at_ms: tokun_providers::clock::unix_ms(),
            account: self.payer.account,
            key: Some(self.payer.key),
            model: record.model.to_string(),
            served_model: record
                .served_model
                .as_deref()
                .unwrap_or(&record.model)
                .to_owned(),
            // A request settled before any route answered has no provider.
            provider: record
                .provider
                .as_deref()
                .map_or_else(String::new, str::to_owned),
            prompt_tokens: record.usage.prompt_tokens,
            cached_tokens: record.usage.cached_tokens(),
            completion_tokens: record.usage.completion_tokens,
            // The account actor writes the cost it decided.
            cost: Nanos::ZERO,
            estimated: record.source == UsageSource::Estimated,
            status,
            transport: self.transport.as_str().to_owned(),
            latency_ms: record.latency_ms,
            ttft_ms: record.ttft_ms,
            error_kind: record.error_kind.map(str::to_owned),
            route: record.route,
        }
    }
}

#[cfg(test)]
mod tests;
