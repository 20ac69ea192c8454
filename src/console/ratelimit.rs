//! A sliding-window counter per key (an email, a client address), in
//! memory: at most `max` events per `window`. Uses tokio's clock, so tests
//! can pause and advance it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Keys kept before the idle ones are swept out.
const SWEEP_ABOVE: usize = 10_000;

pub struct RateLimiter {
    max: u32,
    window: Duration,
    /// When each key's recent events happened, oldest first. A plain mutex:
    /// held for a few instructions, never across an `.await`.
    events: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(max: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            max,
            window,
            events: Mutex::default(),
        }
    }

    /// Counts an event for `key` if the window has room; otherwise how long
    /// until it will.
    pub fn allow(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if events.len() > SWEEP_ABOVE {
            let window = self.window;
            events.retain(|_, times| times.back().is_some_and(|t| now - *t < window));
        }
        let times = events.entry(key.to_owned()).or_default();
        while times.front().is_some_and(|t| now - *t >= self.window) {
            times.pop_front();
        }
        if times.len() >= self.max as usize {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now - oldest));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_window_refuses_until_its_oldest_event_ages_out() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.allow("a").is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(limiter.allow("a").is_ok());
        assert_eq!(limiter.allow("a"), Err(Duration::from_secs(50)));
        assert!(limiter.allow("b").is_ok(), "keys are counted apart");
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(limiter.allow("a").is_ok());
        assert!(limiter.allow("a").is_err());
    }
}
