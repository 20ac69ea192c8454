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
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use self::stage::{Changes, stage};
use crate::error::StorageError;
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

/// Counters for metrics, updated by the writer thread after every batch.
#[derive(Debug, Default)]
pub struct WriterStats {
    batches: AtomicU64,
    submissions: AtomicU64,
    entries: AtomicU64,
    rejected: AtomicU64,
    failed_batches: AtomicU64,
    last_batch_ops: AtomicU64,
    last_flush_micros: AtomicU64,
    flush_micros_total: AtomicU64,
    last_commit_micros: AtomicU64,
    commit_micros_total: AtomicU64,
}

/// A copy of `WriterStats` at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStatsSnapshot {
    /// Batches committed and flushed.
    pub batches: u64,
    /// Submissions acked `Ok`.
    pub submissions: u64,
    /// Ledger entries committed.
    pub entries: u64,
    /// Submissions refused by a ledger or record rule.
    pub rejected: u64,
    /// Batches whose commit or flush failed (each poisons the writer).
    pub failed_batches: u64,
    pub last_batch_ops: u64,
    pub last_flush_micros: u64,
    pub flush_micros_total: u64,
    /// Time applying the last batch in memory. sled blocks every read in
    /// the process (its global concurrency-control lock) for this long.
    pub last_commit_micros: u64,
    pub commit_micros_total: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 1024,
            max_batch_delay: Duration::from_micros(500),
            queue_capacity: 65_536,
        }
    }
}

impl LedgerWriter {
    /// Spawns the writer thread over `store`. New entries continue after the
    /// last committed seq.
    pub fn start(
        store: Store,
        config: WriterConfig,
    ) -> Result<(WriterHandle, JoinHandle<()>), StorageError> {
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let thread = WriterThread {
            next_seq: store.last_seq()? + 1,
            store,
            rx,
            config,
            stats: Arc::clone(&stats),
            poisoned: None,
            #[cfg(test)]
            faults: Arc::default(),
        };
        start_thread(thread, tx, stats)
    }

    /// `start`, with switches to make commits or flushes fail.
    #[cfg(test)]
    pub(crate) fn start_with_faults(
        store: Store,
        config: WriterConfig,
        faults: Arc<tests::Faults>,
    ) -> Result<(WriterHandle, JoinHandle<()>), StorageError> {
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let next_seq = store.last_seq()? + 1;
        let thread = WriterThread {
            next_seq,
            store,
            rx,
            config,
            stats: Arc::clone(&stats),
            poisoned: None,
            faults,
        };
        start_thread(thread, tx, stats)
    }
}

fn start_thread(
    thread: WriterThread,
    tx: Sender<Msg>,
    stats: Arc<WriterStats>,
) -> Result<(WriterHandle, JoinHandle<()>), StorageError> {
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

    /// Submissions waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

impl WriterStats {
    pub fn snapshot(&self) -> WriterStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WriterStatsSnapshot {
            batches: read(&self.batches),
            submissions: read(&self.submissions),
            entries: read(&self.entries),
            rejected: read(&self.rejected),
            failed_batches: read(&self.failed_batches),
            last_batch_ops: read(&self.last_batch_ops),
            last_flush_micros: read(&self.last_flush_micros),
            flush_micros_total: read(&self.flush_micros_total),
            last_commit_micros: read(&self.last_commit_micros),
            commit_micros_total: read(&self.commit_micros_total),
        }
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
    #[cfg(test)]
    faults: Arc<tests::Faults>,
}

impl WriterThread {
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

    fn write_batch(&mut self, batch: Vec<Submission>) {
        if let Some(cause) = &self.poisoned {
            for submission in batch {
                submission.ack.fire(Err(StorageError::WriterPoisoned {
                    cause: cause.clone(),
                }));
            }
            return;
        }
        let (changes, accepted, ops) = self.stage_batch(batch);
        if changes.is_empty() {
            // Nothing to write (say, only checkpoints of closed holds): all
            // earlier batches are already flushed, so this is durable too.
            return self.acknowledge(accepted, None);
        }
        match self.commit(&changes) {
            Ok(timings) => {
                self.record_batch(&changes, ops, timings);
                self.acknowledge(accepted, Some(&changes));
            }
            Err(err) => {
                tracing::error!(error = %err, "ledger batch failed; refusing all further writes");
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
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
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    ack.fire(Err(err));
                }
            }
        }
        (changes, accepted, ops)
    }

    /// Commits and flushes; returns how long each took.
    fn commit(&self, changes: &Changes) -> Result<Timings, StorageError> {
        let started = Instant::now();
        self.inject(Fault::Commit)?;
        commit::write(&self.store, changes)?;
        let committed = Instant::now();
        self.inject(Fault::Flush)?;
        let flushed = self.store.db.flush();
        flushed.map_err(StorageError::sled("flush the ledger"))?;
        Ok(Timings {
            commit: committed - started,
            flush: committed.elapsed(),
        })
    }

    fn record_batch(&self, changes: &Changes, ops: usize, timings: Timings) {
        let stats = &self.stats;
        let micros = |time: Duration| u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
        let (commit, flush) = (micros(timings.commit), micros(timings.flush));
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .entries
            .fetch_add(changes.entries.len() as u64, Ordering::Relaxed);
        stats.last_batch_ops.store(ops as u64, Ordering::Relaxed);
        stats.last_flush_micros.store(flush, Ordering::Relaxed);
        stats.flush_micros_total.fetch_add(flush, Ordering::Relaxed);
        stats.last_commit_micros.store(commit, Ordering::Relaxed);
        stats
            .commit_micros_total
            .fetch_add(commit, Ordering::Relaxed);
    }

    /// Fires the acks of a durable batch (`None`: nothing was written).
    fn acknowledge(&mut self, accepted: Vec<(Ack, Range<u64>)>, written: Option<&Changes>) {
        self.next_seq += written.map_or(0, |changes| changes.entries.len() as u64);
        let submissions = accepted.len() as u64;
        self.stats
            .submissions
            .fetch_add(submissions, Ordering::Relaxed);
        let last_seq = self.next_seq - 1;
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

/// How long a batch took to apply in memory and to flush.
#[derive(Clone, Copy)]
struct Timings {
    commit: Duration,
    flush: Duration,
}

/// Points where tests can make the writer fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Commit,
    Flush,
}
