//! `WriterStats`: the writer's counters, kept in atomics so metrics can
//! read them from any thread while the writer thread updates them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters for metrics, updated by the writer thread after every batch.
#[derive(Debug, Default)]
pub struct WriterStats {
    batches: AtomicU64,
    flushes: AtomicU64,
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
    /// Flushes of the store (fsyncs): one per batch, plus those `Sync` asked
    /// for.
    pub flushes: u64,
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

impl WriterStats {
    pub fn snapshot(&self) -> WriterStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WriterStatsSnapshot {
            batches: read(&self.batches),
            flushes: read(&self.flushes),
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

    pub(super) fn record_batch(&self, entries: usize, ops: usize, commit: Duration) {
        let commit = micros(commit);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(entries as u64, Ordering::Relaxed);
        self.last_batch_ops.store(ops as u64, Ordering::Relaxed);
        self.last_commit_micros.store(commit, Ordering::Relaxed);
        self.commit_micros_total
            .fetch_add(commit, Ordering::Relaxed);
    }

    pub(super) fn record_flush(&self, time: Duration) {
        let flush = micros(time);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.last_flush_micros.store(flush, Ordering::Relaxed);
        self.flush_micros_total.fetch_add(flush, Ordering::Relaxed);
    }

    pub(super) fn record_acked(&self, submissions: u64) {
        self.submissions.fetch_add(submissions, Ordering::Relaxed);
    }

    pub(super) fn record_refusal(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_failure(&self) {
        self.failed_batches.fetch_add(1, Ordering::Relaxed);
    }
}

fn micros(time: Duration) -> u64 {
    u64::try_from(time.as_micros()).unwrap_or(u64::MAX)
}
