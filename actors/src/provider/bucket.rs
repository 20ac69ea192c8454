//! A token bucket: `rate` units per minute, at most `rate` banked, refilled
//! continuously. Used for requests per minute and tokens per minute. An
//! upstream's `retry-after` pauses it; its `x-ratelimit-remaining-*` headers
//! can lower what is left.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_minute: f64,
    available: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate_per_minute: u32) -> Self {
        let rate = f64::from(rate_per_minute.max(1));
        Self {
            rate_per_minute: rate,
            available: rate,
            refilled_at: Instant::now(),
            paused_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.available =
            (self.available + elapsed * self.rate_per_minute / 60.0).min(self.rate_per_minute);
        self.refilled_at = now;
    }

    /// Takes `amount` if it is there now; otherwise says how long until it will be.
    pub fn try_take(&mut self, amount: u32) -> Result<(), Duration> {
        let now = Instant::now();
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(until - now);
            }
            self.paused_until = None;
        }
        self.refill(now);
        // A request bigger than the whole bucket may go when the bucket is full.
        let amount = f64::from(amount).min(self.rate_per_minute);
        if self.available >= amount {
            self.available -= amount;
            Ok(())
        } else {
            let missing = amount - self.available;
            Err(Duration::from_secs_f64(
                missing * 60.0 / self.rate_per_minute,
            ))
        }
    }

    /// Gives back what a request did not use (e.g. fewer tokens than estimated).
    pub fn give_back(&mut self, amount: u32) {
        self.refill(Instant::now());
        self.available = (self.available + f64::from(amount)).min(self.rate_per_minute);
    }

    /// The upstream said to wait: nothing is taken before `until`.
    pub fn pause(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Whole units that could be taken now (zero while paused).
    pub fn available(&mut self) -> u32 {
        if !self.paused_for().is_zero() {
            return 0;
        }
        self.refill(Instant::now());
        // Saturating float-to-int conversion: the value is within 0..=rate.
        self.available.floor() as u32
    }

    /// How long the bucket stays paused (zero when it is not).
    pub fn paused_for(&self) -> Duration {
        self.paused_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    /// The upstream says only `remaining` is left in its window.
    pub fn clamp(&mut self, remaining: u32) {
        self.refill(Instant::now());
        self.available = self.available.min(f64::from(remaining));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refills_continuously_and_says_how_long_to_wait() {
        let mut bucket = TokenBucket::new(60);
        for _ in 0..60 {
            assert!(bucket.try_take(1).is_ok());
        }
        let wait = bucket.try_take(1).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(bucket.try_take(1).is_ok());
        bucket.pause(Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(bucket.try_take(1).unwrap_err(), Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(bucket.try_take(1).is_ok());
        bucket.clamp(0);
        assert!(bucket.try_take(1).is_err());
    }

    proptest! {
        /// Over any schedule of requests, what is granted in any window of
        /// length T never exceeds the burst plus the rate times T.
        #[test]
        fn never_grants_more_than_its_rate(rate in 1u32..600, steps in proptest::collection::vec((0u64..3_000, 1u32..50), 1..200)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async {
                let start = Instant::now();
                let mut bucket = TokenBucket::new(rate);
                let mut granted = 0f64;
                for (wait_ms, amount) in steps {
                    tokio::time::advance(Duration::from_millis(wait_ms)).await;
                    if bucket.try_take(amount).is_ok() {
                        granted += f64::from(amount.min(rate));
                    }
                    let elapsed = start.elapsed().as_secs_f64();
                    let bound = f64::from(rate) + f64::from(rate) * elapsed / 60.0;
                    prop_assert!(granted <= bound + 1e-6, "granted {granted} > bound {bound}");
                }
                Ok(())
            })?;
        }
    }
}
