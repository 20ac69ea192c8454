//! The whole-answer paths of a stream actor (a non-streamed completion, an
//! embeddings call): one upstream call per route until one answers, then one
//! settlement and one `Completion` (or `Embedded`) event.

use tokio::time::Instant;
use tokun_providers::{ChatCompletion, ChatRequest, ProviderError, TimeoutPhase};

use super::attempts::{Attempts, attempt, request_for};
use super::{StreamState, learn};
use crate::meter::RequestOutcome;
use crate::provider::Outcome;
use crate::relay::{RelayEvent, RequestError, Route};

impl StreamState {
    /// Non-streaming: one upstream call per route until one answers.
    pub(super) async fn complete_unary(&mut self, request: &ChatRequest) {
        let routes = self.args.routes.clone();
        let reply = self
            .first_whole_answer(&routes, |route| {
                let request = request_for(request, &route);
                async move { route.adapter.complete(&request).await }
            })
            .await;
        if let Some(reply) = reply {
            if let Some(route) = &self.route {
                learn(route, reply.limits);
            }
            self.deliver(reply.body).await;
        }
    }

    /// Calls `routes` in order until one answers whole — each try under its
    /// provider's permit and the route's total watchdog, moving on after a
    /// retryable failure — and sends `Routed` for the route that answered.
    /// `None` when the request already ended: the client left (billed for
    /// the input the upstream read) or no route answered (rejected).
    pub(super) async fn first_whole_answer<T, F, Fut>(
        &mut self,
        routes: &[Route],
        call: F,
    ) -> Option<T>
    where
        F: Fn(Route) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut plan = Attempts::new(routes.len());
        while let Some(index) = plan.next() {
            let route = &routes[index];
            let attempt_started = Instant::now();
            // A whole answer's body is its first byte: while it has not come,
            // nothing reached the client, so a route that stays silent for its
            // total timeout fails over like a stream's first-byte timeout.
            let attempt = attempt(
                route,
                self.tpm_tokens,
                route.timeouts.total,
                TimeoutPhase::FirstByte,
                call(route.clone()),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = self.args.out.closed() => {
                    // The upstream call is dropped; bill the input it already read.
                    let _ = self
                        .settle(RequestOutcome::Interrupted, Some("client_gone"))
                        .await;
                    return None;
                }
            };
            match outcome {
                Ok((permit, Ok(answer))) => {
                    if let Some(permit) = permit {
                        permit.finish(Outcome::Success);
                    }
                    self.route = Some(route.clone());
                    let routed = RelayEvent::Routed {
                        provider: route.provider.clone(),
                        upstream: attempt_started.elapsed(),
                    };
                    let _ = self.send(routed).await;
                    return Some(answer);
                }
                Ok((permit, Err(error))) => plan.failed(route, permit, error),
                Err(refused) => plan.failed(route, None, refused),
            }
        }
        let error = plan.into_error();
        self.reject(RequestError::Upstream(error)).await;
        None
    }

    async fn deliver(&mut self, mut completion: ChatCompletion) {
        self.upstream_usage = completion.usage;
        if self.upstream_usage.is_none() {
            for choice in &completion.choices {
                if let Some(text) = choice.message.get("content").and_then(|c| c.as_str()) {
                    self.relayed_text.push_str(text);
                }
            }
        }
        completion.id.clone_from(&self.chunk_id);
        completion.model = self.args.model.to_string();
        match self.settle(RequestOutcome::Completed, None).await {
            Ok(settlement) => {
                completion.usage = Some(settlement.usage);
                let _ = self
                    .send(RelayEvent::Completion(
                        Box::new(completion),
                        Box::new(settlement),
                    ))
                    .await;
            }
            Err(error) => self.reject(error).await,
        }
    }
}
