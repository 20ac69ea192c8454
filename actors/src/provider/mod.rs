//! The provider actor: one per configured upstream. It owns the route's rate
//! limits (requests and tokens per minute, a concurrency cap, pauses learned
//! from `retry-after`, headroom learned from `x-ratelimit-*` headers) and its
//! health (a circuit breaker). Stream actors ask
//! it for a permit before calling the upstream and report the outcome after;
//! the bytes never pass through its mailbox. Waiting for a permit is bounded:
//! past `max_wait` the request is refused with how long to wait.

pub mod breaker;
pub mod bucket;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tokun_providers::RateLimits;

pub use self::breaker::CircuitState;
use self::breaker::{Breaker, BreakerConfig, BreakerState};
use self::bucket::TokenBucket;
use crate::instrument::{ActorKind, ActorStats, MessageKind, Metered};
use crate::metric;

/// Limits of one provider, from config.
#[derive(Debug, Clone, Copy)]
pub struct ProviderLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrency: Option<u32>,
    /// Longest a request waits for a permit before it is refused.
    pub max_wait: Duration,
    pub breaker: BreakerConfig,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            rpm: None,
            tpm: None,
            max_concurrency: None,
            max_wait: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Why no permit was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The circuit is open: the upstream is failing.
    Open { retry_after: Duration },
    /// Limits leave no room within the wait bound.
    RateLimited { retry_after: Duration },
}

/// What happened to a request that held a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A failure that counts against the upstream's health.
    Failed,
    /// The upstream said 429; wait `retry_after` (if given) before sending more.
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// The request ended without a verdict on the upstream (client left, rejected by it).
    Neutral,
}

/// A provider's health and headroom, for `/admin/providers`.
#[derive(Debug, Clone)]
pub struct ProviderHealth {
    pub circuit: CircuitState,
    pub in_flight: u32,
    pub waiting: usize,
    /// Requests that may start now (`None`: no request limit, configured or learned).
    pub requests_available: Option<u32>,
    /// Tokens that may be asked for now (`None`: no token limit).
    pub tokens_available: Option<u32>,
    /// How long new requests are held back by an upstream's `retry-after` or
    /// an exhausted `x-ratelimit-*` window.
    pub paused_for: Duration,
}

pub enum ProviderMsg {
    Acquire {
        tokens: u32,
        reply: RpcReplyPort<Result<(), Refusal>>,
    },
    Done {
        outcome: Outcome,
    },
    Health(RpcReplyPort<ProviderHealth>),
    /// An upstream response reported its rate limits.
    Learn(RateLimits),
    /// Retry waiting requests (a timer fired).
    Wake,
}

impl MessageKind for ProviderMsg {
    fn kind(&self) -> &'static str {
        match self {
            ProviderMsg::Acquire { .. } => "acquire",
            ProviderMsg::Done { .. } => "done",
            ProviderMsg::Health(_) => "health",
            ProviderMsg::Learn(_) => "learn",
            ProviderMsg::Wake => "wake",
        }
    }
}

pub struct ProviderActor;

impl ActorKind for ProviderActor {
    const KIND: &'static str = "provider";
}

pub struct ProviderArgs {
    pub name: Arc<str>,
    pub limits: ProviderLimits,
}

struct Waiter {
    tokens: u32,
    deadline: Instant,
    reply: RpcReplyPort<Result<(), Refusal>>,
}

pub struct ProviderState {
    name: Arc<str>,
    limits: ProviderLimits,
    breaker: Breaker,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    in_flight: u32,
    waiting: VecDeque<Waiter>,
    wake_scheduled: Option<Instant>,
}

impl Actor for ProviderActor {
    type Msg = ProviderMsg;
    type State = ProviderState;
    type Arguments = ProviderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ProviderMsg>,
        args: ProviderArgs,
    ) -> Result<ProviderState, ActorProcessingErr> {
        let limits = args.limits;
        Ok(ProviderState {
            name: args.name,
            breaker: Breaker::new(limits.breaker),
            rpm: limits.rpm.map(TokenBucket::new),
            tpm: limits.tpm.map(TokenBucket::new),
            limits,
            in_flight: 0,
            waiting: VecDeque::new(),
            wake_scheduled: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ProviderMsg>,
        message: ProviderMsg,
        state: &mut ProviderState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProviderMsg::Acquire { tokens, reply } => {
                if let BreakerState::Open { until } = state.breaker.state() {
                    let _ = reply.send(Err(Refusal::Open {
                        retry_after: until.saturating_duration_since(Instant::now()),
                    }));
                } else {
                    let deadline = Instant::now() + state.limits.max_wait;
                    state.waiting.push_back(Waiter {
                        tokens,
                        deadline,
                        reply,
                    });
                }
            }
            ProviderMsg::Done { outcome } => state.done(outcome),
            ProviderMsg::Health(reply) => {
                let _ = reply.send(state.health());
            }
            ProviderMsg::Learn(limits) => state.learn(limits),
            ProviderMsg::Wake => state.wake_scheduled = None,
        }
        state.serve_waiting(&myself);
        let provider = [("provider", &*state.name)];
        metric::gauge_set(
            "tokun_provider_circuit_state",
            &provider,
            state.breaker.state().as_gauge(),
        );
        metric::gauge_set(
            "tokun_provider_permits_waiting",
            &provider,
            state.waiting.len() as f64,
        );
        Ok(())
    }
}

impl ProviderState {
    fn done(&mut self, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Success => self.breaker.record(false),
            Outcome::Failed => self.breaker.record(true),
            Outcome::RateLimited { retry_after } => {
                metric::counter_add(
                    "tokun_provider_rate_limited_total",
                    &[("provider", &self.name)],
                    1,
                );
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                for bucket in [&mut self.rpm, &mut self.tpm].into_iter().flatten() {
                    bucket.pause(wait);
                }
                if self.rpm.is_none() {
                    // No configured limit to pause: learn one that honours the upstream's wait.
                    let mut bucket = TokenBucket::new(600);
                    bucket.pause(wait);
                    self.rpm = Some(bucket);
                }
            }
            Outcome::Neutral => self.breaker.abandon_probe(),
        }
    }

    /// Tightens the buckets to what the upstream says is left: an exhausted
    /// window pauses until its reset; otherwise at most `remaining` may go
    /// before the bucket refills. A window the config does not limit gets a
    /// bucket of the upstream's own size (unbounded when it did not say).
    fn learn(&mut self, limits: RateLimits) {
        for (bucket, window) in [
            (&mut self.rpm, limits.requests),
            (&mut self.tpm, limits.tokens),
        ] {
            let Some(window) = window else { continue };
            let bucket =
                bucket.get_or_insert_with(|| TokenBucket::new(window.limit.unwrap_or(u32::MAX)));
            if window.remaining == 0 {
                bucket.pause(window.reset.unwrap_or(Duration::from_secs(1)));
            }
            bucket.clamp(window.remaining);
        }
    }

    /// Grants permits in arrival order while limits allow; refuses the expired.
    fn serve_waiting(&mut self, myself: &ActorRef<ProviderMsg>) {
        let now = Instant::now();
        while let Some((tokens, deadline)) = self.waiting.front().map(|w| (w.tokens, w.deadline)) {
            match self.try_grant(tokens) {
                Ok(()) => {
                    if let Some(waiter) = self.waiting.pop_front() {
                        if waiter.reply.send(Ok(())).is_err() {
                            // The requester gave up while waiting: hand the permit back.
                            self.in_flight = self.in_flight.saturating_sub(1);
                            self.breaker.abandon_probe();
                        }
                    }
                }
                Err(wait) if now + wait > deadline || (wait.is_zero() && now >= deadline) => {
                    if let Some(waiter) = self.waiting.pop_front() {
                        let refusal = match self.breaker.state() {
                            BreakerState::Open { until } => Refusal::Open {
                                retry_after: until.saturating_duration_since(now),
                            },
                            _ => Refusal::RateLimited { retry_after: wait },
                        };
                        let _ = waiter.reply.send(Err(refusal));
                    }
                }
                Err(wait) => {
                    self.schedule_wake(myself, wait);
                    break;
                }
            }
        }
    }

    /// A permit if every limit has room now; otherwise how long until one may.
    fn try_grant(&mut self, tokens: u32) -> Result<(), Duration> {
        if let BreakerState::Open { until } = self.breaker.state() {
            return Err(until.saturating_duration_since(Instant::now()));
        }
        if self
            .limits
            .max_concurrency
            .is_some_and(|max| self.in_flight >= max)
        {
            // Full: the next `Done` wakes the queue; zero means "until a slot frees".
            return Err(Duration::ZERO);
        }
        if let Some(rpm) = &mut self.rpm {
            rpm.try_take(1)?;
        }
        if let Some(tpm) = &mut self.tpm {
            if let Err(wait) = tpm.try_take(tokens) {
                if let Some(rpm) = &mut self.rpm {
                    rpm.give_back(1);
                }
                return Err(wait);
            }
        }
        if !self.breaker.try_pass() {
            // Half-open with its probe in flight: hand back what was taken.
            if let Some(rpm) = &mut self.rpm {
                rpm.give_back(1);
            }
            if let Some(tpm) = &mut self.tpm {
                tpm.give_back(tokens);
            }
            return Err(Duration::from_millis(100));
        }
        self.in_flight += 1;
        Ok(())
    }

    fn schedule_wake(&mut self, myself: &ActorRef<ProviderMsg>, wait: Duration) {
        let deadline = self.waiting.front().map_or(wait, |w| {
            w.deadline.saturating_duration_since(Instant::now())
        });
        // Zero = waiting for a slot: only the deadline needs a timer.
        let wait = if wait.is_zero() {
            deadline
        } else {
            wait.min(deadline)
        };
        let wait = wait.max(Duration::from_millis(1));
        let at = Instant::now() + wait;
        if self.wake_scheduled.is_none_or(|scheduled| at < scheduled) {
            self.wake_scheduled = Some(at);
            // The timer task ends after one send; if the actor is gone, the send fails harmlessly.
            myself.send_after(wait, || ProviderMsg::Wake);
        }
    }

    fn health(&mut self) -> ProviderHealth {
        let buckets = [&mut self.rpm, &mut self.tpm];
        let paused_for = buckets
            .into_iter()
            .flatten()
            .map(|bucket| bucket.paused_for())
            .max()
            .unwrap_or_default();
        ProviderHealth {
            circuit: self.breaker.state().circuit(),
            in_flight: self.in_flight,
            waiting: self.waiting.len(),
            requests_available: self.rpm.as_mut().map(TokenBucket::available),
            tokens_available: self.tpm.as_mut().map(TokenBucket::available),
            paused_for,
        }
    }
}

/// Cheap-clone handle to a provider actor.
#[derive(Clone)]
pub struct ProviderHandle {
    actor: ActorRef<ProviderMsg>,
    stats: Arc<ActorStats>,
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("actor", &self.actor.get_id())
            .finish()
    }
}

/// The right to call the upstream once. Report the outcome with
/// [`Permit::finish`]; dropped unreported, it counts as neutral.
#[derive(Debug)]
pub struct Permit {
    provider: Option<ProviderHandle>,
}

impl Permit {
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(provider) = self.provider.take() {
            provider.send(ProviderMsg::Done { outcome });
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            provider.send(ProviderMsg::Done {
                outcome: Outcome::Neutral,
            });
        }
    }
}

impl ProviderHandle {
    pub async fn start(name: Arc<str>, limits: ProviderLimits) -> Result<Self, ractor::SpawnErr> {
        let (actor, stats) = Metered::spawn(
            ProviderActor,
            ProviderArgs {
                name: name.clone(),
                limits,
            },
            None,
        )
        .await?;
        stats.set_label(name.to_string());
        Ok(Self { actor, stats })
    }

    fn send(&self, message: ProviderMsg) {
        self.stats.note_sent();
        let _ = self.actor.send_message(message);
    }

    /// Waits (bounded by the provider's `max_wait`) for a permit to call the upstream.
    pub async fn acquire(&self, tokens: u32) -> Result<Permit, Refusal> {
        self.stats.note_sent();
        let bound = Duration::from_secs(30);
        match self
            .actor
            .call(|reply| ProviderMsg::Acquire { tokens, reply }, Some(bound))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(Ok(()))) => Ok(Permit {
                provider: Some(self.clone()),
            }),
            Ok(ractor::rpc::CallResult::Success(Err(refusal))) => Err(refusal),
            _ => Err(Refusal::RateLimited {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Passes on the limits an upstream response reported (nothing to do when it reported none).
    pub fn learn(&self, limits: RateLimits) {
        if !limits.is_empty() {
            self.send(ProviderMsg::Learn(limits));
        }
    }

    pub async fn health(&self) -> Option<ProviderHealth> {
        self.stats.note_sent();
        match self
            .actor
            .call(ProviderMsg::Health, Some(Duration::from_secs(2)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(health)) => Some(health),
            _ => None,
        }
    }

    pub fn stop(&self) {
        self.actor.stop(None);
    }
}

#[cfg(test)]
mod tests;
