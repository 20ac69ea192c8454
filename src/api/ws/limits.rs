//! Per-socket message rate: a token bucket refilled continuously at the
//! configured rate, holding at most one second's worth (the burst).

use std::num::NonZeroU32;

use tokio::time::Instant;

pub(super) struct RateBucket {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl RateBucket {
    pub fn new(per_sec: NonZeroU32) -> Self {
        let per_sec = f64::from(per_sec.get());
        Self {
            per_sec,
            tokens: per_sec,
            last: Instant::now(),
        }
    }

    /// Takes one message's token; false when the socket is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.per_sec);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_the_rate() {
        let mut bucket = RateBucket::new(NonZeroU32::new(10).unwrap());
        assert_eq!(
            (0..20).filter(|_| bucket.take()).count(),
            10,
            "burst of one second"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.take(), "one token back after 1/10 s");
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..20).filter(|_| bucket.take()).count(),
            10,
            "never more than the burst"
        );
    }
}
