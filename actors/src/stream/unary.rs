//! The non-streaming path of a stream actor: one upstream call per route
//! until one answers, then one settlement and one `Completion` event.

use tokio::time::Instant;
use tokun_providers::{ChatCompletion, ChatRequest, TimeoutPhase};

use super::attempts::{Attempts, attempt, request_for};
use super::{StreamState, learn};
use crate::meter::RequestOutcome;
use crate::provider::Outcome;
use crate::relay::{RelayEvent, RequestError};

impl StreamState {
    /// Non-streaming: one upstream call per route until one answers.
    pub(super) async fn complete_unary(&mut self, request: &ChatRequest) {
        let routes = self.args.routes.clone();
        let mut plan = Attempts::new(routes.len());
        while let Some(index) = plan.next() {
            let route = &routes[index];
            let request = request_for(request, route);
            let attempt_started = Instant::now();
            let attempt = attempt(
                route,
                self.tpm_tokens,
                route.timeouts.total,
                TimeoutPhase::Total,
                route.adapter.complete(&request),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = self.args.out.closed() => {
                    // The upstream call is dropped; bill the prompt it already read.
                    let _ = self
                        .settle(RequestOutcome::Interrupted, Some("client_gone"))
                        .await;
                    return;
                }
            };
            match outcome {
                Ok((permit, Ok(reply))) => {
                    learn(route, reply.limits);
                    let completion = reply.body;
                    if let Some(permit) = permit {
                        permit.finish(Outcome::Success);
                    }
                    self.route = Some(route.clone());
                    let routed = RelayEvent::Routed {
                        provider: route.provider.clone(),
                        upstream: attempt_started.elapsed(),
                    };
                    let _ = self.send(routed).await;
                    return self.deliver(completion).await;
                }
                Ok((permit, Err(error))) => plan.failed(route, permit, error),
                Err(refused) => plan.failed(route, None, refused),
            }
        }
        let error = plan.into_error();
        self.reject(RequestError::Upstream(error)).await;
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
