//! A circuit breaker as an explicit state machine: `Closed` counts outcomes,
//! trips to `Open` after N consecutive failures or a high error ratio over a
//! window, and after a cool-down lets exactly one probe through
//! (`HalfOpen`); the probe's outcome closes or re-opens it.
//!
//! Time comes from `tokio::time::Instant`, so tests drive it with a paused clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or when the failure ratio over the last `window` outcomes reaches this.
    pub failure_ratio: f64,
    pub window: usize,
    /// How long to stay open before letting a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            cool_down: Duration::from_secs(10),
        }
    }
}

/// A circuit's state as operators and routing see it (no deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is allowed (and, once taken, in flight).
    HalfOpen {
        probing: bool,
    },
}

impl BreakerState {
    /// 0 closed, 1 half-open, 2 open — for the circuit state gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }

    pub fn circuit(self) -> CircuitState {
        match self {
            BreakerState::Closed => CircuitState::Closed,
            BreakerState::HalfOpen { .. } => CircuitState::HalfOpen,
            BreakerState::Open { .. } => CircuitState::Open,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive: u32,
    /// Recent outcomes, `true` = failure.
    recent: VecDeque<bool>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive: 0,
            recent: VecDeque::with_capacity(config.window),
        }
    }

    pub fn state(&mut self) -> BreakerState {
        self.tick();
        self.state
    }

    /// Whether a request may go now; in half-open, takes the single probe slot.
    pub fn try_pass(&mut self) -> bool {
        self.tick();
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing: true } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
        }
    }

    /// When an open breaker will let a probe through.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn record(&mut self, failed: bool) {
        self.tick();
        match self.state {
            BreakerState::HalfOpen { .. } if failed => self.trip(),
            BreakerState::HalfOpen { .. } => self.reset(),
            BreakerState::Open { .. } => {}
            BreakerState::Closed => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if self.recent.len() == self.config.window {
                    self.recent.pop_front();
                }
                self.recent.push_back(failed);
                let failures = self.recent.iter().filter(|f| **f).count();
                let ratio_tripped = self.recent.len() >= self.config.window
                    && failures as f64 / self.recent.len() as f64 >= self.config.failure_ratio;
                if self.consecutive >= self.config.consecutive_failures || ratio_tripped {
                    self.trip();
                }
            }
        }
    }

    /// A request that took the probe slot was abandoned without an outcome.
    pub fn abandon_probe(&mut self) {
        if self.state == (BreakerState::HalfOpen { probing: true }) {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    fn trip(&mut self) {
        self.state = BreakerState::Open {
            until: Instant::now() + self.config.cool_down,
        };
        self.consecutive = 0;
        self.recent.clear();
    }

    fn reset(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive = 0;
        self.recent.clear();
    }

    fn tick(&mut self) {
        if let BreakerState::Open { until } = self.state {
            if Instant::now() >= until {
                self.state = BreakerState::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            cool_down: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_one_probe() {
        let mut b = breaker();
        for _ in 0..2 {
            assert!(b.try_pass());
            b.record(true);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(true);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(!b.try_pass());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.try_pass(), "still cooling down");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_pass(), "the probe goes through");
        assert!(!b.try_pass(), "only one probe at a time");
        b.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_pass());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_cool_down() {
        let mut b = breaker();
        for _ in 0..3 {
            b.record(true);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_pass());
        b.record(true);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_pass());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.try_pass());
        b.abandon_probe();
        assert!(b.try_pass(), "an abandoned probe frees the slot");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_ratio_without_a_long_failure_run() {
        let mut b = breaker();
        // Alternate: never 3 in a row, but 50 % over a full window of 10.
        for i in 0..9 {
            b.record(i % 2 == 0);
            assert_eq!(b.state(), BreakerState::Closed, "after {i}");
        }
        b.record(true);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_run() {
        let mut b = breaker();
        for _ in 0..20 {
            b.record(true);
            b.record(true);
            b.record(false);
            b.record(false);
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
