//! Live counts of actors, readable without a mailbox round trip.
//!
//! The admin API and metrics poll these often; going through an actor's
//! mailbox for a number would put that polling in the request path's queue.

use std::sync::atomic::{AtomicU64, Ordering};

/// Started/stopped counters for stream actors; `live = started - stopped`.
#[derive(Debug, Default)]
pub struct StreamStats {
    started: AtomicU64,
    stopped: AtomicU64,
}

impl StreamStats {
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stopped(&self) {
        self.stopped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn live(&self) -> u64 {
        let stopped = self.stopped.load(Ordering::Relaxed);
        self.started.load(Ordering::Relaxed).saturating_sub(stopped)
    }

    pub fn total_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}
