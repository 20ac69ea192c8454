//! The stream actor: one per in-flight completion (HTTP or WebSocket).
//!
//! It owns the upstream call, tries the model's routes in order until the first
//! chunk (the commit point), relays chunks to the edge through a bounded channel
//! (so a slow client slows the upstream read instead of growing a buffer),
//! counts what it relayed, watches for client disconnect, cancel and stalls,
//! and settles the request through its [`Meter`] before it sends the final
//! event. It owns the request's money from start to end: it opens the hold
//! (sized by the [`HoldPolicy`], capping the upstream `max_tokens` to what the
//! funds allow), extends it and settles it; a hold it never closed is given
//! back when its meter drops. Embeddings run here too (`embed.rs`), with the
//! same permits, failover and meter. It does not know about HTTP, SSE framing
//! or accounts' balances.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout};
use tokun_providers::types::{ChunkChoice, Delta};
use tokun_providers::{
    ChatCompletionChunk, ChatRequest, ChunkStream, EmbeddingRequest, ProviderError, RateLimits,
    TimeoutPhase, Usage, tokens,
};

use crate::account::supervisor::AccountsHandle;
use crate::meter::{HoldPolicy, Meter, MeterRecord, Payer, RequestOutcome, Tariff, Transport};
use crate::metric;
use crate::provider::{Outcome, Permit};

mod attempts;
mod embed;
mod reject;
mod start;
pub mod supervisor;
mod unary;

use self::attempts::{Attempts, attempt, outcome_of, request_for};
use crate::relay::{RelayEvent, RequestError, Route, StreamFailure, Timeouts, UsageSource};
use crate::stats::StreamStats;

/// What one request asks of its upstream.
pub enum Work {
    Chat(ChatRequest),
    Embeddings(EmbeddingRequest),
}

/// Everything a stream actor needs beside its [`Work`], handed over by the
/// edge: who pays, which model, and where the answer goes. Nothing about money
/// beyond the payer: the actor sizes, opens and closes the hold itself.
pub struct StreamArgs {
    pub request_id: Arc<str>,
    /// The configured model id the client asked for (or `auto` resolved to).
    pub model: Arc<str>,
    pub tariff: Tariff,
    pub routes: Arc<[Route]>,
    /// Counted once by the edge (it also picks `auto` by it).
    pub prompt_tokens_estimate: u64,
    /// `None` when billing is off and no key was sent.
    pub payer: Option<Payer>,
    /// Towards the client; bounded, so sending waits while the client is slow.
    pub out: mpsc::Sender<RelayEvent>,
    /// Fired by `POST /v1/requests/{id}/cancel`: stop upstream, finish cleanly.
    pub cancel: Arc<Notify>,
    pub transport: Transport,
}

/// What the supervisor adds to the edge's [`StreamArgs`].
pub struct StreamStart {
    pub args: StreamArgs,
    pub work: Work,
    pub accounts: AccountsHandle,
    pub policy: HoldPolicy,
    pub stats: Arc<StreamStats>,
}

pub enum StreamMsg {
    /// Open the upstream (trying routes in order) and relay the first chunk.
    Start,
    /// Relay the next upstream chunk; sent by the actor to itself so that a
    /// stop signal can interleave between chunks.
    Pump,
}

pub struct StreamActor;

impl crate::instrument::ActorKind for StreamActor {
    const KIND: &'static str = "stream";
}

impl crate::instrument::MessageKind for StreamMsg {
    fn kind(&self) -> &'static str {
        match self {
            StreamMsg::Start => "start",
            StreamMsg::Pump => "pump",
        }
    }
}

pub struct StreamState {
    args: StreamArgs,
    accounts: AccountsHandle,
    policy: HoldPolicy,
    stats: Arc<StreamStats>,
    /// Taken by `Start`: the request is only needed until a route answers.
    work: Option<Work>,
    /// `Log` until `Start` opens the hold.
    meter: Meter,
    /// What the request counts against a provider's tokens-per-minute limit.
    tpm_tokens: u32,
    created: u64,
    chunk_id: String,
    deadline: Instant,
    route: Option<Route>,
    upstream: Option<ChunkStream>,
    /// The provider's permit, held while the stream runs (concurrency cap).
    permit: Option<Permit>,
    /// Text relayed so far, for tokun's own count when the upstream gives no usage.
    relayed_text: String,
    upstream_usage: Option<Usage>,
    finish_reason_sent: bool,
    /// Set once the request was billed (or rejected), so `post_stop` never bills twice.
    settled: bool,
    started: Instant,
    first_token_at: Option<Instant>,
    /// Content chunks relayed: the running token count that drives hold extensions.
    relayed_tokens: u64,
    last_checkpoint: Instant,
    last_chunk_at: Option<Instant>,
}

/// Most chunks one `Pump` relays beyond the first when the upstream already
/// delivered them (see [`StreamState::accept_burst`]).
const PUMP_BURST: usize = 15;

/// How often a long stream records its usage for crash recovery.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why relaying stopped.
enum End {
    Completed,
    Cancelled,
    ClientGone,
    /// The hold could not be extended: end cleanly with `finish_reason: "length"`.
    Budget,
    Failed(StreamFailure),
}

impl Actor for StreamActor {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamStart;

    async fn pre_start(
        &self,
        myself: ActorRef<StreamMsg>,
        start: StreamStart,
    ) -> Result<StreamState, ActorProcessingErr> {
        let StreamStart {
            args,
            work,
            accounts,
            policy,
            stats,
        } = start;
        stats.started();
        metric::gauge_add(
            "tokun_streams_active",
            &[("transport", args.transport.as_str())],
            1.0,
        );

        // A model with no routes is refused at `Start`; its deadline is moot.
        let total = args
            .routes
            .first()
            .map_or(Timeouts::default().total, |r| r.timeouts.total);
        myself.send_message(StreamMsg::Start)?;
        Ok(StreamState {
            created: tokun_providers::clock::unix_seconds(),
            chunk_id: format!("chatcmpl-{}", args.request_id),
            deadline: Instant::now() + total,
            args,
            accounts,
            policy,
            stats,
            work: Some(work),
            meter: Meter::Log,
            tpm_tokens: 0,
            route: None,
            upstream: None,
            permit: None,
            relayed_text: String::new(),
            upstream_usage: None,
            finish_reason_sent: false,
            settled: false,
            started: Instant::now(),
            first_token_at: None,
            relayed_tokens: 0,
            last_checkpoint: Instant::now(),
            last_chunk_at: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StreamMsg>,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped from outside (shutdown) mid-stream: still bill what was relayed.
        if !state.settled {
            state.finish(End::Cancelled).await;
        }
        state.stats.stopped();
        metric::gauge_add(
            "tokun_streams_active",
            &[("transport", state.args.transport.as_str())],
            -1.0,
        );
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        message: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        // The once-per-stream paths are boxed: their futures are large, and
        // inline they would make every `Pump` (one per chunk) build and move
        // a future sized for them.
        let next = match message {
            StreamMsg::Start => Box::pin(state.start()).await,
            StreamMsg::Pump => state.pump().await,
        };
        match next {
            None => myself.stop(None),
            Some(Ok(())) => myself.send_message(StreamMsg::Pump)?,
            Some(Err(end)) => {
                Box::pin(state.finish(end)).await;
                myself.stop(None);
            }
        }
        Ok(())
    }
}

impl StreamState {
    /// Tries each route until one yields a first chunk; relays it.
    /// `None` means the request ended before streaming (already reported).
    async fn open_stream(&mut self, request: &ChatRequest) -> Option<Result<(), End>> {
        let routes = self.args.routes.clone();
        let mut plan = Attempts::new(routes.len());
        while let Some(index) = plan.next() {
            let route = &routes[index];
            let request = request_for(request, route);
            let attempt_started = Instant::now();
            let attempt = attempt(
                route,
                self.tpm_tokens,
                route.timeouts.first_byte,
                TimeoutPhase::FirstByte,
                first_chunk(route, &request),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = self.args.out.closed() => return Some(Err(End::ClientGone)),
            };
            match outcome {
                Ok((permit, Ok((stream, first)))) => {
                    self.route = Some(route.clone());
                    self.upstream = Some(stream);
                    self.permit = permit;
                    let routed = RelayEvent::Routed {
                        provider: route.provider.clone(),
                        upstream: attempt_started.elapsed(),
                    };
                    if self.send(routed).await.is_err() {
                        return Some(Err(End::ClientGone));
                    }
                    return Some(self.accept(first).await);
                }
                Ok((permit, Err(error))) => plan.failed(route, permit, error),
                Err(refused) => plan.failed(route, None, refused),
            }
        }
        let error = plan.into_error();
        self.reject(RequestError::Upstream(error)).await;
        None
    }

    /// Relays the next chunk, or says why the stream ended.
    async fn pump(&mut self) -> Option<Result<(), End>> {
        let stream = self.upstream.as_mut()?;
        // `upstream` is only set together with `route`.
        let idle = self
            .route
            .as_ref()
            .map_or(Timeouts::default().idle, |r| r.timeouts.idle);
        let wait = idle.min(self.deadline.saturating_duration_since(Instant::now()));
        let next = tokio::select! {
            biased;
            () = self.args.cancel.notified() => return Some(Err(End::Cancelled)),
            () = self.args.out.closed() => return Some(Err(End::ClientGone)),
            next = timeout(wait, stream.next()) => next,
        };
        let result = match next {
            Err(_) => {
                let phase = if Instant::now() >= self.deadline {
                    TimeoutPhase::Total
                } else {
                    TimeoutPhase::Idle
                };
                Err(End::Failed(StreamFailure::Upstream(
                    ProviderError::Timeout { phase },
                )))
            }
            Ok(None) => Err(End::Completed),
            Ok(Some(Err(error))) => Err(End::Failed(StreamFailure::Upstream(error))),
            Ok(Some(Ok(chunk))) => self.accept_burst(chunk).await,
        };
        Some(result)
    }

    /// Relays `chunk`, then whatever the upstream already delivered (up to
    /// [`PUMP_BURST`] more) in the same turn: the edge then finds them queued
    /// together and writes them in one syscall, instead of one write and one
    /// wake-up of the client per chunk. Cancellation and a client gone are
    /// still noticed between bursts.
    async fn accept_burst(&mut self, chunk: ChatCompletionChunk) -> Result<(), End> {
        self.accept(chunk).await?;
        for _ in 0..PUMP_BURST {
            let Some(stream) = self.upstream.as_mut() else {
                break;
            };
            // Polled once without waiting: `Pending` leaves it to the next `Pump`.
            match stream.next().now_or_never() {
                None => break,
                Some(None) => return Err(End::Completed),
                Some(Some(Err(error))) => {
                    return Err(End::Failed(StreamFailure::Upstream(error)));
                }
                Some(Some(Ok(chunk))) => self.accept(chunk).await?,
            }
        }
        Ok(())
    }

    /// Takes usage out of a chunk and relays the rest, if anything is left.
    async fn accept(&mut self, mut chunk: ChatCompletionChunk) -> Result<(), End> {
        if let Some(usage) = chunk.usage.take() {
            self.upstream_usage = Some(usage);
            if chunk.choices.is_empty() {
                return Ok(());
            }
        }
        let mut tokens = 0;
        for choice in &chunk.choices {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.relayed_text.push_str(text);
                tokens += 1;
            }
            self.finish_reason_sent |= choice.finish_reason.is_some();
        }
        chunk.id.clone_from(&self.chunk_id);
        chunk.model = self.args.model.to_string();
        chunk.created = self.created;
        self.send(RelayEvent::Chunk(Box::new(chunk)))
            .await
            .map_err(|()| End::ClientGone)?;
        if tokens > 0 {
            let now = Instant::now();
            if let Some(last) = self.last_chunk_at.replace(now) {
                metric::histogram_record(
                    "tokun_inter_token_seconds",
                    &[],
                    now.duration_since(last).as_secs_f64(),
                );
            }
            self.first_token_at.get_or_insert(now);
            self.relayed_tokens += tokens;
            self.keep_budget().await?;
        }
        Ok(())
    }

    /// Extends the hold once the relayed tokens reach it; checkpoints usage.
    async fn keep_budget(&mut self) -> Result<(), End> {
        // Boxed for the same reason as in `handle`: rare, and large.
        if self.relayed_tokens >= self.meter.allowance()
            && Box::pin(self.meter.extend()).await.is_err()
        {
            return Err(End::Budget);
        }
        if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.last_checkpoint = Instant::now();
            self.meter
                .checkpoint(self.args.prompt_tokens_estimate, self.relayed_tokens);
        }
        Ok(())
    }

    /// Ends a stream that was committed: error event, closing chunk, settlement.
    async fn finish(&mut self, end: End) {
        self.upstream = None;
        if let Some(permit) = self.permit.take() {
            permit.finish(match &end {
                End::Completed => Outcome::Success,
                End::Failed(StreamFailure::Upstream(error)) => outcome_of(error),
                End::Cancelled | End::ClientGone | End::Budget => Outcome::Neutral,
            });
        }
        let closing_reason = match &end {
            End::Completed | End::ClientGone => None,
            End::Cancelled => Some("stop"),
            End::Budget => Some("length"),
            End::Failed(StreamFailure::Upstream(_)) => None,
        };
        let error_kind = match &end {
            End::Failed(StreamFailure::Upstream(error)) => Some(error.kind()),
            End::Budget => Some("budget"),
            End::ClientGone => Some("client_gone"),
            End::Cancelled => Some("cancelled"),
            End::Completed => None,
        };
        if let End::Failed(failure) = &end {
            let _ = self
                .send(RelayEvent::Failed(Box::new(failure.clone())))
                .await;
        }
        if let Some(reason) = closing_reason.filter(|_| !self.finish_reason_sent) {
            let chunk = self.closing_chunk(reason);
            let _ = self.send(RelayEvent::Chunk(Box::new(chunk))).await;
        }
        self.count_outcome(&end, error_kind);
        let outcome = match end {
            End::Completed => RequestOutcome::Completed,
            _ => RequestOutcome::Interrupted,
        };
        match self.settle(outcome, error_kind).await {
            Ok(settlement) => {
                let _ = self.send(RelayEvent::Finished(Box::new(settlement))).await;
            }
            Err(error) => tracing::error!(%error, "settlement failed after streaming"),
        }
    }

    fn count_outcome(&self, end: &End, error_kind: Option<&'static str>) {
        let provider = self
            .route
            .as_ref()
            .map_or_else(String::new, |r| r.provider.to_string());
        if let End::Failed(StreamFailure::Upstream(error)) = end {
            metric::counter_add(
                "tokun_upstream_errors_total",
                &[("provider", &provider), ("kind", error.kind())],
                1,
            );
        }
        let outcome = error_kind.unwrap_or("completed");
        metric::counter_add(
            "tokun_stream_outcomes_total",
            &[
                ("model", &self.args.model),
                ("provider", &provider),
                ("outcome", outcome),
            ],
            1,
        );
    }

    /// Bills the request and waits until the settlement is durable.
    async fn settle(
        &mut self,
        outcome: RequestOutcome,
        error_kind: Option<&'static str>,
    ) -> Result<crate::relay::Settlement, RequestError> {
        let (usage, source) = match self.upstream_usage {
            Some(usage) => (usage, UsageSource::Exact),
            None => {
                // tokun's own count: the relayed text, never fewer than the chunks relayed.
                let completion = tokens::count_text(&self.relayed_text).max(self.relayed_tokens);
                (
                    Usage::new(self.args.prompt_tokens_estimate, completion),
                    UsageSource::Estimated,
                )
            }
        };
        self.settled = true;
        let record = MeterRecord {
            request_id: self.args.request_id.clone(),
            model: self.args.model.clone(),
            served_model: self.route.as_ref().map(|r| r.upstream_model.clone()),
            provider: self.route.as_ref().map(|r| r.provider.clone()),
            route: self.route.as_ref().map(|r| r.position),
            usage,
            source,
            outcome,
            error_kind,
            latency_ms: self.started.elapsed().as_millis() as u64,
            ttft_ms: self
                .first_token_at
                .map(|t| t.duration_since(self.started).as_millis() as u64),
        };
        let settlement = self.meter.settle(record).await?;
        let model = &*self.args.model;
        let usage = &settlement.usage;
        let tokens = "tokun_tokens_total";
        metric::counter_add(
            tokens,
            &[("model", model), ("direction", "prompt")],
            usage.prompt_tokens,
        );
        metric::counter_add(
            tokens,
            &[("model", model), ("direction", "completion")],
            usage.completion_tokens,
        );
        metric::counter_add(
            "tokun_cost_nanos_total",
            &[("model", model)],
            u64::try_from(settlement.cost.get()).unwrap_or(0),
        );
        Ok(settlement)
    }

    fn closing_chunk(&self, reason: &str) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.chunk_id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.args.model.to_string(),
            system_fingerprint: None,
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(reason.into()),
            }],
            usage: None,
        }
    }

    /// Sends towards the client, waiting while its buffer is full.
    async fn send(&mut self, event: RelayEvent) -> Result<(), ()> {
        self.args.out.send(event).await.map_err(|_| ())
    }
}

/// Opens the upstream stream and waits for its first chunk.
async fn first_chunk(
    route: &Route,
    request: &ChatRequest,
) -> Result<(ChunkStream, ChatCompletionChunk), ProviderError> {
    let reply = route.adapter.stream(request).await?;
    learn(route, reply.limits);
    let mut stream = reply.body;
    match stream.next().await {
        Some(Ok(chunk)) => Ok((stream, chunk)),
        Some(Err(error)) => Err(error),
        None => Err(ProviderError::Truncated),
    }
}

/// Hands the limits an upstream reported to its provider actor.
fn learn(route: &Route, limits: RateLimits) {
    if let Some(limiter) = &route.limiter {
        limiter.learn(limits);
    }
}
