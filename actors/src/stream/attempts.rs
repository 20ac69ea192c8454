//! Which route a request tries next, and the permits that gate each try:
//! routes in order, moving on only after a retryable failure (never after the
//! first chunk), one same-route retry after a short `retry-after`, and the
//! outcome of every attempt reported to the route's provider actor.

use std::time::Duration;

use tokio::time::timeout;
use tokun_providers::{ChatRequest, ProviderError, TimeoutPhase};

use crate::metric;
use crate::provider::{Outcome, Permit, Refusal};
use crate::relay::Route;

/// The order in which routes are tried for one request: each once, in order,
/// moving on only after a retryable failure — except that a 429 with a short
/// `retry-after` is retried once on the same route (its provider actor holds
/// the next permit until the pause is over).
pub(super) struct Attempts {
    routes: usize,
    next: Option<usize>,
    retried_same: bool,
    /// What the last attempt failed with: the answer when no route is left.
    last_error: Option<ProviderError>,
}

/// Longest `retry-after` worth waiting for on the same route.
const SAME_ROUTE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Attempts {
    pub(super) fn new(routes: usize) -> Self {
        Self {
            routes,
            next: (routes > 0).then_some(0),
            retried_same: false,
            last_error: None,
        }
    }

    pub(super) fn next(&mut self) -> Option<usize> {
        self.next
    }

    /// An attempt on `route` failed (`permit`: it got as far as the upstream):
    /// reports the outcome to the provider actor and picks what comes next.
    pub(super) fn failed(&mut self, route: &Route, permit: Option<Permit>, error: ProviderError) {
        finish_permit(permit, &error);
        self.choose_next(route, &error);
        self.last_error = Some(error);
    }

    /// Why the request could not be served, once `next` says no route is left.
    pub(super) fn into_error(self) -> ProviderError {
        self.last_error.unwrap_or(ProviderError::Request {
            detail: "the model has no routes".into(),
        })
    }

    fn choose_next(&mut self, route: &Route, error: &ProviderError) {
        let Some(current) = self.next else { return };
        let short_429 = matches!(error, ProviderError::Status { status: 429, retry_after: Some(wait), .. } if *wait <= SAME_ROUTE_RETRY_AFTER);
        let (next, failover) = if short_429 && !self.retried_same {
            self.retried_same = true;
            (Some(current), false)
        } else if error.retryable() && current + 1 < self.routes {
            self.retried_same = false;
            (Some(current + 1), true)
        } else {
            (None, false)
        };
        tracing::warn!(provider = %route.provider, kind = error.kind(), failover, "route failed before any output");
        let provider = &*route.provider;
        metric::counter_add(
            "tokun_upstream_errors_total",
            &[("provider", provider), ("kind", error.kind())],
            1,
        );
        if failover {
            metric::counter_add("tokun_failovers_total", &[("provider", provider)], 1);
        }
        self.next = next;
    }
}

/// A permit from the route's provider actor; a refusal reads like the
/// upstream status it stands for (429 rate limited, 503 circuit open).
/// The request as `route` is sent it: the client's, with the route's model.
pub(super) fn request_for(request: &ChatRequest, route: &Route) -> ChatRequest {
    let mut request = request.clone();
    request.model = route.upstream_model.to_string();
    request
}

/// One try of a route: its permit, then `call` within `limit` (running out
/// is a timeout in `phase`). A refused permit is the outer error; the call's
/// own result comes back beside the permit, which the caller finishes.
pub(super) async fn attempt<T>(
    route: &Route,
    tokens: u32,
    limit: Duration,
    phase: TimeoutPhase,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<(Option<Permit>, Result<T, ProviderError>), ProviderError> {
    let permit = acquire(route, tokens).await?;
    let answer = timeout(limit, call)
        .await
        .unwrap_or(Err(ProviderError::Timeout { phase }));
    Ok((permit, answer))
}

async fn acquire(route: &Route, tokens: u32) -> Result<Option<Permit>, ProviderError> {
    let Some(limiter) = &route.limiter else {
        return Ok(None);
    };
    limiter
        .acquire(tokens)
        .await
        .map(Some)
        .map_err(|refusal| match refusal {
            Refusal::RateLimited { retry_after } => ProviderError::Status {
                status: 429,
                message: "tokun's rate limit for this provider is reached".into(),
                retry_after: Some(retry_after),
            },
            Refusal::Open { retry_after } => ProviderError::Status {
                status: 503,
                message: "this provider is failing; its circuit is open".into(),
                retry_after: Some(retry_after),
            },
        })
}

/// Reports a failed attempt to the provider actor: 429s pause it, upstream
/// failures count against its health, rejections of the request do not.
fn finish_permit(permit: Option<Permit>, error: &ProviderError) {
    if let Some(permit) = permit {
        permit.finish(outcome_of(error));
    }
}

pub(super) fn outcome_of(error: &ProviderError) -> Outcome {
    match error {
        ProviderError::Status {
            status: 429,
            retry_after,
            ..
        } => Outcome::RateLimited {
            retry_after: *retry_after,
        },
        _ if error.source() == tokun_providers::ErrorSource::Client => Outcome::Neutral,
        _ => Outcome::Failed,
    }
}
