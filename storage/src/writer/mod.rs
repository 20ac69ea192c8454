//! The group-commit ledger writer: one dedicated thread that owns every
//! write to the store. Callers submit `Vec<WriteOp>` with an `Ack` through a
//! bounded crossbeam channel; the thread blocks for the first submission,
//! drains whatever else is already queued (up to `max_batch` ops, for at
//! most `max_batch_delay`), stages each submission against the store,
//! writes the whole batch in ONE sled transaction over all trees
//! (`commit.rs`), calls `flush()` ONCE, and only then fires the acks.
//!
//! **Atomicity.** A submission is all-or-nothing: if any of its ops breaks
//! a rule (`stage.rs`) it is refused with `Err` and nothing of it is
//! written, while the rest of the batch goes on. A batch is all-or-nothing
//! on disk: sled seals a transaction's log records as one unit. We chose a
//! multi-tree transaction over a single prefixed tree with `apply_batch`
//! because both take the same path in sled (`pin_log` + `seal_batch`) and
//! `benches/ledger.rs` (`atomic_write`) measures them within noise of each
//! other, while separate trees keep reads and scans simple.
//!
//! **Failure.** If a commit or flush fails, every ack of the batch gets
//! the error and the writer is poisoned: it refuses every later submission
//! (`WriterPoisoned`). sled's in-memory state may then be ahead of the disk,
//! so the only safe continuation is a restart, which recovers a consistent
//! store (the failed batch entirely, or not at all).

mod commit;
mod stage;
mod stats;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use self::stage::{Changes, stage};
pub use self::stats::{WriterStats, WriterStatsSnapshot};
use crate::error::StorageError;
use crate::feed::UsageItem;
use crate::ops::{Ack, Durable, WriteOp};
use crate::store::Store;

/// Starts the writer thread.
pub struct LedgerWriter;

#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Stop draining the queue into a batch at this many ops (a submission
    /// is never split, so a batch may exceed it by one submission).
    pub max_batch: usize,
    /// Stop draining after this long, so a steady stream of submissions
    /// cannot postpone the first one's flush. The writer never waits for
    /// more submissions: under load, what queues during one flush is the
    /// next batch. Zero makes every submission its own batch.
    pub max_batch_delay: Duration,
    /// Bound of the submission queue; `submit` blocks when it is full.
    pub queue_capacity: usize,
}

/// Sends submissions to the writer. Cheap to clone; the writer stops when
/// every handle is dropped or `close` is called.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Msg>,
    stats: Arc<WriterStats>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 1024,
            max_batch_delay: Duration::from_micros(500),
            queue_capacity: 16_384,
        }
    }
}

impl LedgerWriter {
    /// Spawns the writer thread over `store`. New entries continue after the
    /// last committed seq. A store has at most one writer at a time.
    pub fn start(
        store: Store,
        config: WriterConfig,
    ) -> Result<(WriterHandle, JoinHandle<()>), StorageError> {
        let (thread, tx) = WriterThread::new(store, config)?;
        start_thread(thread, tx)
    }

    /// `start`, with switches to make commits or flushes fail.
    #[cfg(test)]
    pub(crate) fn start_with_faults(
        store: Store,
        config: WriterConfig,
        faults: Arc<tests::Faults>,
    ) -> Result<(WriterHandle, JoinHandle<()>), StorageError> {
        let (mut thread, tx) = WriterThread::new(store, config)?;
        thread.faults = faults;
        start_thread(thread, tx)
    }
}

fn start_thread(
    thread: WriterThread,
    tx: Sender<Msg>,
) -> Result<(WriterHandle, JoinHandle<()>), StorageError> {
    let stats = Arc::clone(&thread.stats);
    let join = std::thread::Builder::new()
        .name("tokun-ledger-writer".into())
        .spawn(move || thread.run())
        .map_err(|err| StorageError::Spawn {
            message: err.to_string(),
        })?;
    Ok((WriterHandle { tx, stats }, join))
}

impl WriterHandle {
    /// Queues a submission; `ack` fires once it is durable or refused.
    /// Blocks while the queue is full (backpressure).
    pub fn submit(&self, ops: Vec<WriteOp>, ack: Ack) {
        if let Err(crossbeam_channel::SendError(Msg::Submit(submission))) =
            self.tx.send(Msg::Submit(Submission { ops, ack }))
        {
            submission.ack.fire(Err(StorageError::WriterClosed));
        }
    }

    /// Queues a submission if the queue has room; when it is full, gives
    /// the submission back untouched, for the caller to wait for room
    /// without blocking an async worker (`submit` on a blocking thread).
    pub fn try_submit(&self, ops: Vec<WriteOp>, ack: Ack) -> Option<(Vec<WriteOp>, Ack)> {
        match self.tx.try_send(Msg::Submit(Submission { ops, ack })) {
            Ok(()) => None,
            Err(TrySendError::Full(Msg::Submit(submission))) => {
                Some((submission.ops, submission.ack))
            }
            Err(TrySendError::Disconnected(Msg::Submit(submission))) => {
                submission.ack.fire(Err(StorageError::WriterClosed));
                None
            }
            // Only a `Submit` was sent, so only a `Submit` comes back.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }

    /// Submits and blocks until durable: for the CLI and tests. Never call
    /// it from an ack (that runs on the writer thread).
    pub fn submit_wait(&self, ops: Vec<WriteOp>) -> Result<Durable, StorageError> {
        let (ack, done) = Ack::channel();
        self.submit(ops, ack);
        done.recv().map_err(|_| StorageError::WriterClosed)?
    }

    /// Asks the writer to finish what was submitted before this call and
    /// stop. Later submissions get `WriterClosed`. Join the thread's handle
    /// to wait for it.
    pub fn close(&self) {
        // An error means the writer already stopped.
        let _ = self.tx.send(Msg::Close);
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

enum Msg {
    Submit(Submission),
    Close,
}

struct Submission {
    ops: Vec<WriteOp>,
    ack: Ack,
}

struct WriterThread {
    store: Store,
    rx: Receiver<Msg>,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    /// The seq the next committed entry gets.
    next_seq: u64,
    /// Set by a failed commit or flush; see the module docs.
    poisoned: Option<String>,
    /// Marks the store as having a writer until this thread ends.
    _claim: WriterClaim,
    #[cfg(test)]
    faults: Arc<tests::Faults>,
}

/// Held by the one writer of a store; released on drop, even by a panic.
struct WriterClaim(Arc<AtomicBool>);

impl WriterClaim {
    fn take(store: &Store) -> Result<WriterClaim, StorageError> {
        let flag = Arc::clone(&store.writer_claimed);
        match flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(WriterClaim(flag)),
            Err(_) => Err(StorageError::WriterRunning),
        }
    }
}

impl Drop for WriterClaim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl WriterThread {
    fn new(
        store: Store,
        config: WriterConfig,
    ) -> Result<(WriterThread, Sender<Msg>), StorageError> {
        let claim = WriterClaim::take(&store)?;
        let next_seq = store.last_seq()? + 1;
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let thread = WriterThread {
            store,
            rx,
            config,
            stats: Arc::default(),
            next_seq,
            poisoned: None,
            _claim: claim,
            #[cfg(test)]
            faults: Arc::default(),
        };
        Ok((thread, tx))
    }

    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let (batch, closing) = self.collect(first);
            self.write_batch(batch);
            if closing {
                break;
            }
        }
        // Refuse what was queued behind the close. (A submission racing
        // this drain stays queued until the last handle is dropped; its ack
        // then fires `WriterClosed` from `Ack::drop`.)
        for msg in self.rx.try_iter() {
            if let Msg::Submit(submission) = msg {
                submission.ack.fire(Err(StorageError::WriterClosed));
            }
        }
    }

    /// The batch starting with `first`, and whether a close was seen.
    fn collect(&self, first: Msg) -> (Vec<Submission>, bool) {
        let Msg::Submit(first) = first else {
            return (Vec::new(), true);
        };
        let deadline = Instant::now() + self.config.max_batch_delay;
        let mut ops = first.ops.len();
        let mut batch = vec![first];
        while ops < self.config.max_batch && Instant::now() < deadline {
            match self.rx.try_recv() {
                Ok(Msg::Submit(submission)) => {
                    ops += submission.ops.len();
                    batch.push(submission);
                }
                Ok(Msg::Close) => return (batch, true),
                Err(_) => break,
            }
        }
        (batch, false)
    }

    /// Flushes the store and counts it.
    fn flush(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        self.inject(Fault::Flush)?;
        let flushed = self.store.db.flush();
        flushed.map_err(StorageError::sled("flush the ledger"))?;
        self.stats.record_flush(started.elapsed());
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<Submission>) {
        if let Some(cause) = &self.poisoned {
            for submission in batch {
                submission.ack.fire(Err(StorageError::WriterPoisoned {
                    cause: cause.clone(),
                }));
            }
            return;
        }
        let sync = batch
            .iter()
            .any(|s| s.ops.iter().any(|op| matches!(op, WriteOp::Sync)));
        let (changes, accepted, ops) = self.stage_batch(batch);
        if changes.is_empty() {
            // Nothing to write (say, only checkpoints of closed holds): all
            // earlier batches are already flushed, so this is durable too —
            // unless a `Sync` asks to flush what was written beside the writer.
            if sync {
                if let Err(err) = self.flush() {
                    tracing::error!(error = %err, "sync flush failed");
                    for (ack, _) in accepted {
                        ack.fire(Err(err.clone()));
                    }
                    return;
                }
            }
            return self.acknowledge(accepted, None);
        }
        match self.commit(&changes) {
            Ok(commit) => {
                self.stats.record_batch(changes.entries.len(), ops, commit);
                self.acknowledge(accepted, Some(&changes));
            }
            Err(err) => {
                tracing::error!(error = %err, "ledger batch failed; refusing all further writes");
                self.stats.record_failure();
                self.poisoned = Some(err.to_string());
                for (ack, _) in accepted {
                    ack.fire(Err(err.clone()));
                }
            }
        }
    }

    /// Stages every submission, acking refused ones at once. Returns the
    /// batch's changes, the accepted acks with their seqs, and the op count.
    fn stage_batch(&self, batch: Vec<Submission>) -> (Changes, Vec<(Ack, Range<u64>)>, usize) {
        let mut changes = Changes::default();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut ops = 0;
        for Submission {
            ops: submission,
            ack,
        } in batch
        {
            ops += submission.len();
            let first_seq = self.next_seq + changes.entries.len() as u64;
            match stage(&self.store, &changes, first_seq, &submission) {
                Ok(staged) => {
                    let seqs = first_seq..first_seq + staged.entries.len() as u64;
                    changes.absorb(staged);
                    accepted.push((ack, seqs));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "ledger writer refused a submission");
                    self.stats.record_refusal();
                    ack.fire(Err(err));
                }
            }
        }
        (changes, accepted, ops)
    }

    /// Commits and flushes; returns how long the commit took.
    fn commit(&self, changes: &Changes) -> Result<Duration, StorageError> {
        let started = Instant::now();
        self.inject(Fault::Commit)?;
        commit::write(&self.store, changes)?;
        let committed = started.elapsed();
        self.flush()?;
        Ok(committed)
    }

    /// Fires the acks of a durable batch (`None`: nothing was written).
    fn acknowledge(&mut self, accepted: Vec<(Ack, Range<u64>)>, written: Option<&Changes>) {
        self.next_seq += written.map_or(0, |changes| changes.entries.len() as u64);
        let submissions = accepted.len() as u64;
        self.stats.record_acked(submissions);
        let last_seq = self.next_seq - 1;
        if let Some(changes) = written {
            feed(&self.store, changes);
        }
        for (ack, seqs) in accepted {
            ack.fire(Ok(Durable { last_seq, seqs }));
        }
    }

    #[cfg(test)]
    fn inject(&self, fault: Fault) -> Result<(), StorageError> {
        self.faults.check(fault)
    }

    #[cfg(not(test))]
    fn inject(&self, _fault: Fault) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Hands a durable batch to the store's feeds, before its acks fire: a
/// caller that saw its write acknowledged finds it in the feed.
fn feed(store: &Store, changes: &Changes) {
    let feeds = store.feeds();
    if !feeds.usage.is_followed() && !feeds.entries.is_followed() {
        return;
    }
    feeds.usage.push(changes.usage.iter().map(|(key, usage)| {
        let item = UsageItem {
            key: *key,
            at_ms: usage.at_ms,
            model: usage.model.clone(),
            cost: usage.cost,
        };
        (usage.account, item)
    }));
    feeds.entries.push(
        changes
            .entries
            .iter()
            .map(|entry| (entry.account, entry.clone())),
    );
}

/// Points where tests can make the writer fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Commit,
    Flush,
}
