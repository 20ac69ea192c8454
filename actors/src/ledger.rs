//! The ledger actor: the one door to the durable ledger.
//!
//! It receives every money event (from account actors) in one mailbox, so
//! they reach the group-commit writer thread in a single order, and answers
//! "durable" only once the writer flushed the batch holding them. It owns the
//! writer thread: stopping the actor drains and closes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

/// Called on the writer thread once a submission is durable (or failed); must be quick.
pub type OnDurable = Box<dyn FnOnce(Result<Durable, StorageError>) + Send>;

pub enum LedgerMsg {
    /// Write `ops` atomically; `done` (if any) hears once they are durable.
    Append {
        ops: Vec<WriteOp>,
        done: Option<OnDurable>,
    },
}

impl crate::instrument::ActorKind for LedgerActor {
    const KIND: &'static str = "ledger";
}

impl crate::instrument::MessageKind for LedgerMsg {
    fn kind(&self) -> &'static str {
        "append"
    }
}

pub struct LedgerState {
    writer: Option<WriterHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    healthy: Arc<AtomicBool>,
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
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LedgerMsg>,
        message: LedgerMsg,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        let LedgerMsg::Append { ops, done } = message;
        let healthy = state.healthy.clone();
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
        match &state.writer {
            Some(writer) => writer.submit(ops, ack),
            None => drop(ack),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LedgerMsg>,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        // The writer drains what is queued, flushes, and exits.
        if let Some(writer) = state.writer.take() {
            writer.close();
        }
        if let Some(thread) = state.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Ok(())
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
    actor_stats: Arc<crate::instrument::ActorStats>,
    store: Store,
    healthy: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
}

impl LedgerHandle {
    pub async fn start(
        store: Store,
        config: WriterConfig,
    ) -> Result<LedgerHandle, LedgerStartError> {
        let (writer, thread) = LedgerWriter::start(store.clone(), config)?;
        let stats = writer.stats().clone();
        let healthy = Arc::new(AtomicBool::new(false));
        let args = LedgerArgs {
            writer,
            thread,
            healthy: healthy.clone(),
        };
        let (actor, actor_stats) =
            crate::instrument::Metered::spawn(LedgerActor, args, None).await?;
        Ok(LedgerHandle {
            actor,
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
        let message = LedgerMsg::Append {
            ops,
            done: Some(Box::new(done)),
        };
        self.actor_stats.note_sent();
        if let Err(ractor::MessagingErr::SendErr(LedgerMsg::Append {
            done: Some(done), ..
        })) = self.actor.send_message(message)
        {
            done(Err(StorageError::WriterClosed));
        }
    }

    /// Writes `ops` without anyone waiting (holds, checkpoints, usage records).
    pub fn append_nowait(&self, ops: Vec<WriteOp>) {
        self.actor_stats.note_sent();
        let _ = self
            .actor
            .send_message(LedgerMsg::Append { ops, done: None });
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

    /// Drains the writer and stops the actor.
    pub async fn stop(&self) {
        let _ = self
            .actor
            .stop_and_wait(Some("shutdown".into()), None)
            .await;
    }
}
