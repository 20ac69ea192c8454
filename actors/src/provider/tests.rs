//! The provider actor with a paused clock: concurrency caps, bounded waits,
//! the breaker opening and recovering through a probe, `retry-after`, and
//! limits learned from `x-ratelimit-*` headers.

use std::time::Duration;

use super::breaker::BreakerConfig;
use super::*;

async fn provider(limits: ProviderLimits) -> ProviderHandle {
    ProviderHandle::start("test".into(), limits).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_cap_queues_and_bounds_the_wait() {
    let limits = ProviderLimits {
        max_concurrency: Some(1),
        max_wait: Duration::from_millis(500),
        ..ProviderLimits::default()
    };
    let p = provider(limits).await;
    let first = p.acquire(10).await.unwrap();
    let waiting = tokio::spawn({
        let p = p.clone();
        async move { p.acquire(10).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.health().await.unwrap().waiting, 1);
    first.finish(Outcome::Success);
    let second = waiting
        .await
        .unwrap()
        .expect("granted once the first finished");
    let started = Instant::now();
    let refused = p.acquire(10).await.unwrap_err();
    assert!(matches!(refused, Refusal::RateLimited { .. }));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "refused only after the wait bound"
    );
    drop(second);
    assert!(
        p.acquire(10).await.is_ok(),
        "a dropped permit frees its slot"
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_on_failures_and_recovers_through_a_probe() {
    let breaker = BreakerConfig {
        consecutive_failures: 3,
        cool_down: Duration::from_secs(10),
        ..BreakerConfig::default()
    };
    let p = provider(ProviderLimits {
        breaker,
        ..ProviderLimits::default()
    })
    .await;
    for _ in 0..3 {
        p.acquire(1).await.unwrap().finish(Outcome::Failed);
    }
    match p.acquire(1).await {
        Err(Refusal::Open { retry_after }) => assert!(retry_after <= Duration::from_secs(10)),
        other => panic!("expected an open circuit, got {:?}", other.map(|_| ())),
    }
    assert_eq!(p.health().await.unwrap().circuit, CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = p.acquire(1).await.expect("one probe after the cool-down");
    assert_eq!(p.health().await.unwrap().circuit, CircuitState::HalfOpen);
    probe.finish(Outcome::Success);
    assert_eq!(p.health().await.unwrap().circuit, CircuitState::Closed);
    assert!(p.acquire(1).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_new_permits() {
    let p = provider(ProviderLimits {
        max_wait: Duration::from_secs(5),
        ..ProviderLimits::default()
    })
    .await;
    p.acquire(1).await.unwrap().finish(Outcome::RateLimited {
        retry_after: Some(Duration::from_secs(2)),
    });
    let started = Instant::now();
    p.acquire(1).await.expect("granted after the pause");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_per_minute_are_enforced() {
    let limits = ProviderLimits {
        rpm: Some(2),
        max_wait: Duration::from_millis(100),
        ..ProviderLimits::default()
    };
    let p = provider(limits).await;
    p.acquire(1).await.unwrap().finish(Outcome::Success);
    p.acquire(1).await.unwrap().finish(Outcome::Success);
    match p.acquire(1).await {
        Err(Refusal::RateLimited { retry_after }) => assert!(retry_after > Duration::from_secs(20)),
        other => panic!("expected rate limited, got {:?}", other.map(|_| ())),
    }
}

fn window(
    limit: Option<u32>,
    remaining: u32,
    reset_secs: u64,
) -> tokun_providers::ratelimit::Window {
    tokun_providers::ratelimit::Window {
        limit,
        remaining,
        reset: Some(Duration::from_secs(reset_secs)),
    }
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_upstream_window_pauses_until_its_reset() {
    let p = provider(ProviderLimits {
        max_wait: Duration::from_secs(1),
        ..ProviderLimits::default()
    })
    .await;
    p.acquire(1).await.unwrap().finish(Outcome::Success);
    p.learn(RateLimits {
        requests: Some(window(None, 0, 20)),
        tokens: None,
    });
    match p.acquire(1).await {
        Err(Refusal::RateLimited { retry_after }) => assert!(
            retry_after > Duration::from_secs(18) && retry_after <= Duration::from_secs(20),
            "{retry_after:?}"
        ),
        other => panic!("expected rate limited, got {:?}", other.map(|_| ())),
    }
    let health = p.health().await.unwrap();
    assert_eq!(health.requests_available, Some(0));
    assert!(health.paused_for > Duration::from_secs(18));
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(p.acquire(1).await.is_ok(), "the window has reset");
}

#[tokio::test(start_paused = true)]
async fn reported_headroom_caps_what_goes_before_the_bucket_refills() {
    let p = provider(ProviderLimits {
        max_wait: Duration::from_millis(100),
        ..ProviderLimits::default()
    })
    .await;
    assert_eq!(
        p.health().await.unwrap().tokens_available,
        None,
        "no limit yet"
    );
    // The upstream allows 6,000 tokens a minute and has 1,000 left.
    p.learn(RateLimits {
        requests: None,
        tokens: Some(window(Some(6_000), 1_000, 10)),
    });
    p.acquire(800).await.unwrap().finish(Outcome::Success);
    assert!(
        matches!(p.acquire(800).await, Err(Refusal::RateLimited { .. })),
        "only about 200 tokens are left"
    );
    // The learned bucket refills at the upstream's rate: 100 tokens a second.
    tokio::time::advance(Duration::from_secs(6)).await;
    p.acquire(800)
        .await
        .expect("refilled at the upstream's rate");
}
