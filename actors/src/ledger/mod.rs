//! The ledger actor: the one door to the durable ledger.
//!
//! It receives every money event (from account actors) in one mailbox, so
//! they reach the group-commit writer thread in a single order, and answers
//! "durable" only once the writer flushed the batch holding them. It owns the
//! writer thread: stopping the actor drains and closes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokun_storage::{Ack, Durable, WriteOp};
use tokun_storage::{LedgerWriter, WriterConfig, WriterHandle, WriterStats};
use tokun_storage::{StorageError, Store};

pub struct LedgerActor;

pub struct LedgerArgs {
    pub writer: WriterHandle,
    pub thread: std::thread::JoinHandle<()>,
    pub healthy: Arc<AtomicBool>,
    pub inbox: Arc<Inbox>,
}

/// Appends waiting for the ledger actor, in the order they were made.
///
/// An append someone awaits (a settlement, a transfer, a barrier) sends the
/// actor one `Drain` unless one is already on its way; the actor takes the
/// whole queue per message. On a runtime with thousands of busy stream
/// actors the ledger actor is polled once per pass over the run queue, and
/// one message per append (≈ 13,000/s at 10,000 open completions) left its
/// mailbox 33,000 deep; one message per poll keeps up with any rate.
///
/// Appends nobody awaits (holds, extensions, checkpoints) send nothing: they
/// wait for the next awaited append and go to the writer in its batch, or,
/// left alone, for a `Due` the first of them scheduled `max_wait` later
/// (or until [`MAX_HELD`] wait). A lone request then pays one commit and one
/// fsync (its settlement's batch carries its hold), and nothing — no write,
/// no wake-up of the writer thread — happens between its hold and its first
/// token. A crash loses at most `max_wait` of such appends (holds of streams
/// that had just started), never one that was acknowledged.
pub struct Inbox {
    queue: Mutex<Queue>,
    /// How long appends nobody awaits may wait here for an awaited one.
    max_wait: Duration,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// Set by the actor's `post_stop`: nobody will drain any more.
    closed: bool,
    /// A `Drain` is on its way.
    signaled: bool,
    /// A `Due` is on its way.
    timer: bool,
}

/// What an append asks of the handle.
enum Signal {
    None,
    /// Send a `Drain` now.
    Now,
    /// Send a `Due` after the inbox's `max_wait`.
    Later,
}

/// Appends nobody awaits that may wait in the inbox at most.
const MAX_HELD: usize = 1024;

/// How long an append nobody awaits (a hold, an extension, a checkpoint)
/// waits in the inbox for an awaited one by default.
pub const MAX_UNFLUSHED: Duration = Duration::from_millis(5);

/// One append: its ops, and who hears once they are durable.
type Pending = (Vec<WriteOp>, Option<OnDurable>);

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an append and says which message, if any, the actor needs;
    /// the append back when the inbox is closed.
    fn push(&self, pending: Pending) -> Result<Signal, Pending> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(pending);
        }
        let awaited = pending.1.is_some();
        queue.pending.push(pending);
        if queue.signaled {
            return Ok(Signal::None);
        }
        if awaited || queue.pending.len() >= MAX_HELD || self.max_wait.is_zero() {
            queue.signaled = true;
            return Ok(Signal::Now);
        }
        if queue.timer {
            return Ok(Signal::None);
        }
        queue.timer = true;
        Ok(Signal::Later)
    }

    fn take(&self, due: bool) -> Vec<Pending> {
        let mut queue = self.lock();
        if due {
            queue.timer = false;
        } else {
            queue.signaled = false;
        }
        std::mem::take(&mut queue.pending)
    }

    /// Takes what is left and refuses every later append.
    fn close(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        queue.closed = true;
        std::mem::take(&mut queue.pending)
    }
}

/// Tells the callers of appends nobody will write that the writer is gone.
fn refuse(pending: Vec<Pending>) {
    for (_, done) in pending {
        if let Some(done) = done {
            done(Err(StorageError::WriterClosed));
        }
    }
}

/// Called on the writer thread once a submission is durable (or failed); must be quick.
pub type OnDurable = Box<dyn FnOnce(Result<Durable, StorageError>) + Send>;

pub enum LedgerMsg {
    /// Submit everything queued in the [`Inbox`] to the writer, in order:
    /// each append's ops atomically, its `done` (if any) hearing once they
    /// are durable.
    Drain,
    /// The same, when appends nobody awaits waited long enough.
    Due,
}

impl crate::instrument::ActorKind for LedgerActor {
    const KIND: &'static str = "ledger";
}

impl crate::instrument::MessageKind for LedgerMsg {
    fn kind(&self) -> &'static str {
        match self {
            LedgerMsg::Drain => "drain",
            LedgerMsg::Due => "due",
        }
    }
}

pub struct LedgerState {
    writer: Option<WriterHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    healthy: Arc<AtomicBool>,
    inbox: Arc<Inbox>,
}

impl Actor for LedgerActor {
    type Msg = LedgerMsg;
    type State = LedgerState;
    type Arguments = LedgerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LedgerMsg>,
        args: LedgerArgs,
    ) -> Result<LedgerState, ActorProcessingErr> {
        args.healthy.store(true, Ordering::Relaxed);
        Ok(LedgerState {
            writer: Some(args.writer),
            thread: Some(args.thread),
            healthy: args.healthy,
            inbox: args.inbox,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LedgerMsg>,
        message: LedgerMsg,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        state.drain(matches!(message, LedgerMsg::Due)).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LedgerMsg>,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        // What was queued before the stop still goes to the writer, which
        // drains its own queue, flushes, and exits; later appends are refused.
        let rest = state.inbox.close();
        state.submit(rest).await;
        if let Some(writer) = state.writer.take() {
            // `close` waits for room in a full queue: off the async worker.
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        if let Some(thread) = state.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Ok(())
    }
}

impl LedgerState {
    /// Submits everything in the inbox to the writer, in order.
    async fn drain(&self, due: bool) {
        self.submit(self.inbox.take(due)).await;
    }

    /// Submits in order. When the writer's queue is full, waits for room on
    /// a blocking thread: the actor waits (backpressure: appends pile up in
    /// the inbox meanwhile), but the async worker it runs on goes on serving
    /// everything else.
    async fn submit(&self, pending: Vec<Pending>) {
        for (ops, done) in pending {
            let healthy = self.healthy.clone();
            let ack = Ack::new(move |result: Result<Durable, StorageError>| {
                match &result {
                    // A refused submission broke a ledger rule; the ledger itself is fine.
                    Err(error) if error.is_refusal() => {
                        tracing::error!(%error, "ledger refused a submission")
                    }
                    Err(error) => {
                        // A failed commit or flush poisons the writer until restart.
                        healthy.store(false, Ordering::Relaxed);
                        tracing::error!(%error, "ledger write failed; the ledger is not writable until restart");
                    }
                    Ok(_) => {}
                }
                if let Some(done) = done {
                    done(result);
                }
            });
            let Some(writer) = &self.writer else {
                drop(ack);
                continue;
            };
            if let Some((ops, ack)) = writer.try_submit(ops, ack) {
                let writer = writer.clone();
                // If the blocking pool is gone (runtime shutdown), the
                // dropped ack answers `WriterClosed`.
                let _ = tokio::task::spawn_blocking(move || writer.submit(ops, ack)).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerStartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Spawn(#[from] ractor::SpawnErr),
}

/// Cheap-clone handle to the ledger actor.
#[derive(Clone)]
pub struct LedgerHandle {
    actor: ActorRef<LedgerMsg>,
    inbox: Arc<Inbox>,
    actor_stats: Arc<crate::instrument::ActorStats>,
    store: Store,
    healthy: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
}

impl LedgerHandle {
    /// Starts the ledger actor and its writer; appends nobody awaits wait
    /// at most [`MAX_UNFLUSHED`] in the inbox.
    pub async fn start(
        store: Store,
        config: WriterConfig,
    ) -> Result<LedgerHandle, LedgerStartError> {
        Self::start_with(store, config, MAX_UNFLUSHED).await
    }

    /// The same; appends nobody awaits wait at most `max_unflushed` in the
    /// inbox (zero: they go to the writer at once).
    pub async fn start_with(
        store: Store,
        config: WriterConfig,
        max_unflushed: Duration,
    ) -> Result<LedgerHandle, LedgerStartError> {
        let (writer, thread) = LedgerWriter::start(store.clone(), config)?;
        let stats = writer.stats().clone();
        let healthy = Arc::new(AtomicBool::new(false));
        let inbox = Arc::new(Inbox {
            queue: Mutex::default(),
            max_wait: max_unflushed,
        });
        let args = LedgerArgs {
            writer,
            thread,
            healthy: healthy.clone(),
            inbox: inbox.clone(),
        };
        let (actor, actor_stats) =
            crate::instrument::Metered::spawn(LedgerActor, args, None).await?;
        Ok(LedgerHandle {
            actor,
            inbox,
            actor_stats,
            store,
            healthy,
            stats,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// False after a failed write: the readiness probe reports it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Writes `ops` and waits until they are on disk.
    pub async fn append(&self, ops: Vec<WriteOp>) -> Result<Durable, StorageError> {
        let (reply, durable) = oneshot::channel();
        self.append_then(ops, move |result| {
            let _ = reply.send(result);
        });
        durable.await.unwrap_or(Err(StorageError::WriterClosed))
    }

    /// Writes `ops`; `done` runs on the writer thread once they are durable
    /// (or failed). The caller does not wait, and no task is spawned.
    pub fn append_then(
        &self,
        ops: Vec<WriteOp>,
        done: impl FnOnce(Result<Durable, StorageError>) + Send + 'static,
    ) {
        self.queue(ops, Some(Box::new(done)));
    }

    /// Writes `ops` without anyone waiting (holds, checkpoints): they wait in
    /// the inbox for the next awaited append, at most `max_unflushed`.
    pub fn append_nowait(&self, ops: Vec<WriteOp>) {
        self.queue(ops, None);
    }

    /// Queues an append and sends the actor what the inbox asks for (see
    /// [`Inbox`]). If the actor is gone, whatever is queued hears `WriterClosed`.
    fn queue(&self, ops: Vec<WriteOp>, done: Option<OnDurable>) {
        match self.inbox.push((ops, done)) {
            Ok(Signal::None) => {}
            Ok(Signal::Now) => {
                self.actor_stats.note_sent();
                if self.actor.send_message(LedgerMsg::Drain).is_err() {
                    // Stopped without running `post_stop` (killed).
                    refuse(self.inbox.close());
                }
            }
            Ok(Signal::Later) => {
                self.actor_stats.note_sent();
                // Without a runtime here to time it, the `Due` goes now.
                if tokio::runtime::Handle::try_current().is_ok() {
                    self.actor
                        .send_after(self.inbox.max_wait, || LedgerMsg::Due);
                } else if self.actor.send_message(LedgerMsg::Due).is_err() {
                    refuse(self.inbox.close());
                }
            }
            Err(pending) => refuse(vec![pending]),
        }
    }

    /// Waits until everything sent before is durable.
    /// Flushes the whole store after everything submitted so far: makes
    /// durable what was written to sled beside the writer (idempotent
    /// outcomes). Shares the flush of whatever batch it lands in.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.append(vec![WriteOp::Sync]).await.map(|_| ())
    }

    pub async fn barrier(&self) -> Result<(), StorageError> {
        self.append(Vec::new()).await.map(|_| ())
    }

    /// Retention: prunes one bounded batch (at most `PRUNE_BATCH` entries)
    /// of the entries written before `cutoff_ms` into the ledger checkpoint,
    /// through the writer like every write. Returns how many went: 0 when
    /// none is old enough, or an open hold stops the prune there. The
    /// sweeper calls it until it returns 0.
    pub async fn prune_older_than(&self, cutoff_ms: u64) -> Result<u64, StorageError> {
        let store = self.store.clone();
        // Reads up to a batch of entries: not on an async worker.
        let read = tokio::task::spawn_blocking(move || {
            let before = store.ledger_checkpoint()?.map_or(0, |c| c.through_seq);
            Ok::<_, StorageError>((before, store.prune_target(cutoff_ms)?))
        });
        let joined = read.await.map_err(|err| StorageError::Spawn {
            message: format!("the prune's read of the ledger failed: {err}"),
        })?;
        let (before, target) = joined?;
        let Some(through_seq) = target else {
            return Ok(0);
        };
        self.append(vec![WriteOp::PruneLedger { through_seq }])
            .await?;
        let after = self.store.ledger_checkpoint()?.map_or(0, |c| c.through_seq);
        Ok(after.saturating_sub(before))
    }

    /// Drains the writer and stops the actor.
    pub async fn stop(&self) {
        let _ = self
            .actor
            .stop_and_wait(Some("shutdown".into()), None)
            .await;
    }
}

#[cfg(test)]
mod tests;
