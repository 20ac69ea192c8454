//! The snapshot actor: copies the ledger to Postgres every `interval`, on
//! demand (`Now`), and once more at graceful shutdown. What a snapshot
//! writes, and why it is idempotent, is `tokun_storage::postgres`'s
//! business; this actor decides when, keeps one connection, retries with
//! backoff when Postgres is away, and publishes its status (read by the
//! admin API and the metrics scrape without a mailbox hop).
//!
//! sled stays the source of truth: a failing snapshot never touches the
//! request path or readiness; it only makes the lag grow and shows its error.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokun_storage::Store;
use tokun_storage::postgres::{PgConn, PgError, PgTarget, SnapshotReport, snapshot, watermark};

use crate::instrument::{ActorKind, MessageKind};

pub mod supervisor;
use tokun_providers::clock::unix_ms as now_ms;

/// `application_name` of tokun's Postgres sessions (`pg_stat_activity`).
pub const APPLICATION_NAME: &str = "tokun-snapshot";
/// How long one snapshot may run before it is abandoned (its transaction
/// rolls back with the dropped connection) and retried.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The first retry after a failure; it doubles up to the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

pub struct SnapshotActor;

/// Everything the actor needs; cloned by its supervisor for a restart.
#[derive(Clone)]
pub struct SnapshotArgs {
    pub store: Store,
    pub target: PgTarget,
    pub interval: Duration,
    pub status: Arc<SnapshotStatus>,
}

pub enum SnapshotMsg {
    /// The timer: snapshot, then schedule the next tick (interval or backoff).
    Tick,
    /// Snapshot now and reply with the report (admin API, CLI, shutdown).
    Now(RpcReplyPort<Result<SnapshotReport, SnapshotError>>),
}

pub struct SnapshotState {
    args: SnapshotArgs,
    /// Kept between snapshots; dropped after any failure and reopened.
    conn: Option<PgConn>,
    failures: u32,
    /// The pending `Tick`: at most one; aborted when replaced or stopped.
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<SnapshotMsg>>>>,
}

/// Why a snapshot did not happen. Never holds the URL's password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("the snapshot did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("the snapshot actor is not running")]
    Unavailable,
}

/// The actor's published state, shared with its handle.
#[derive(Default)]
pub struct SnapshotStatus {
    view: Mutex<SnapshotView>,
}

/// What `GET /admin/snapshots` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotView {
    /// `user@host:port/db (schema s)`; never the password.
    pub target: String,
    pub interval_secs: u64,
    /// Every entry up to this seq is in Postgres (`None`: not known yet).
    pub watermark: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub last_report: Option<SnapshotReport>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub running: bool,
}

impl ActorKind for SnapshotActor {
    const KIND: &'static str = "snapshot";
}

impl MessageKind for SnapshotMsg {
    fn kind(&self) -> &'static str {
        match self {
            SnapshotMsg::Tick => "tick",
            SnapshotMsg::Now(_) => "now",
        }
    }
}

impl Actor for SnapshotActor {
    type Msg = SnapshotMsg;
    type State = SnapshotState;
    type Arguments = SnapshotArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SnapshotMsg>,
        args: SnapshotArgs,
    ) -> Result<SnapshotState, ActorProcessingErr> {
        args.status.update(|view| {
            view.target = args.target.to_string();
            view.interval_secs = args.interval.as_secs();
            view.running = false;
        });
        // Catch up right away: after a restart the lag may be large.
        let timer = myself.send_after(Duration::ZERO, || SnapshotMsg::Tick);
        Ok(SnapshotState {
            args,
            conn: None,
            failures: 0,
            timer: Some(timer),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SnapshotMsg>,
        message: SnapshotMsg,
        state: &mut SnapshotState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SnapshotMsg::Tick => {
                let next = match state.run().await {
                    Ok(_) => state.args.interval,
                    Err(_) => state.backoff(),
                };
                if let Some(timer) = state
                    .timer
                    .replace(myself.send_after(next, || SnapshotMsg::Tick))
                {
                    timer.abort();
                }
            }
            SnapshotMsg::Now(reply) => {
                let _ = reply.send(state.run().await);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SnapshotMsg>,
        state: &mut SnapshotState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        state.args.status.update(|view| view.running = false);
        Ok(())
    }
}

impl SnapshotState {
    /// One snapshot, with its outcome published and counted.
    async fn run(&mut self) -> Result<SnapshotReport, SnapshotError> {
        self.args.status.update(|view| view.running = true);
        let conn = self.conn.take().filter(|conn| !conn.is_closed());
        let (store, target) = (self.args.store.clone(), self.args.target.clone());
        let status = self.args.status.clone();
        let attempt = async move {
            let mut conn = match conn {
                Some(conn) => conn,
                None => {
                    let conn = target.connect(APPLICATION_NAME).await?;
                    let known = watermark(&conn).await?;
                    status.update(|view| view.watermark = Some(known));
                    conn
                }
            };
            let report = snapshot(&store, &mut conn).await?;
            Ok::<_, SnapshotError>((report, conn))
        };
        // A timed-out attempt is dropped with its connection: Postgres rolls
        // the transaction back.
        let outcome = tokio::time::timeout(SNAPSHOT_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(SnapshotError::TimedOut(SNAPSHOT_TIMEOUT)));
        match outcome {
            Ok((report, conn)) => {
                self.conn = Some(conn);
                self.failures = 0;
                self.succeeded(&report);
                Ok(report)
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                self.failed(&error);
                Err(error)
            }
        }
    }

    fn succeeded(&self, report: &SnapshotReport) {
        let now = now_ms();
        self.args.status.update(|view| {
            view.watermark = Some(report.last_seq);
            view.last_success_ms = Some(now);
            view.last_report = Some(report.clone());
            view.consecutive_failures = 0;
            view.running = false;
        });
        metrics::gauge!("tokun_snapshot_last_success_timestamp_seconds").set(now as f64 / 1000.0);
        metrics::histogram!("tokun_snapshot_duration_seconds")
            .record(report.duration.as_secs_f64());
        for (table, rows) in [
            ("ledger_entries", report.entries),
            ("balances", report.balances),
            ("accounts", report.accounts),
            ("api_keys", report.api_keys),
            ("open_holds", report.open_holds),
            ("requests", report.requests),
            ("payments", report.payments),
            ("stripe_events", report.stripe_events),
        ] {
            metrics::counter!("tokun_snapshot_rows_total", "table" => table).increment(rows);
        }
        tracing::debug!(
            entries = report.entries,
            last_seq = report.last_seq,
            ms = report.duration.as_millis() as u64,
            "postgres snapshot written"
        );
    }

    fn failed(&self, error: &SnapshotError) {
        let message = error.to_string();
        let failures = self.failures;
        self.args.status.update(|view| {
            view.last_error = Some(message.clone());
            view.last_error_ms = Some(now_ms());
            view.consecutive_failures = failures;
            view.running = false;
        });
        metrics::counter!("tokun_snapshot_failures_total").increment(1);
        let retry_in = self.backoff();
        tracing::warn!(error = %message, failures, retry_in_ms = retry_in.as_millis() as u64, "postgres snapshot failed; sled keeps serving, will retry");
    }

    /// 1 s, 2 s, 4 s, … capped at the interval.
    fn backoff(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(self.args.interval.max(FIRST_BACKOFF))
    }
}

impl SnapshotStatus {
    pub fn view(&self) -> SnapshotView {
        self.lock().clone()
    }

    fn update(&self, change: impl FnOnce(&mut SnapshotView)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, SnapshotView> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
