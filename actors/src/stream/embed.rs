//! The embeddings path of a stream actor: the model's routes that can embed,
//! tried in order with the same permits and failover as a completion, then
//! one settlement (input tokens only) and one `Embedded` event.

use tokio::time::Instant;
use tokun_providers::{EmbeddingRequest, EmbeddingResponse, TimeoutPhase, Usage};

use super::StreamState;
use super::attempts::{Attempts, attempt};
use crate::meter::RequestOutcome;
use crate::provider::Outcome;
use crate::relay::{RelayEvent, RequestError, Route};

impl StreamState {
    pub(super) async fn embed(&mut self, request: EmbeddingRequest) {
        let routes: Vec<Route> = self
            .args
            .routes
            .iter()
            .filter(|route| route.adapter.can_embed())
            .cloned()
            .collect();
        let mut plan = Attempts::new(routes.len());
        while let Some(index) = plan.next() {
            let route = &routes[index];
            let mut upstream_request = request.clone();
            upstream_request.model = route.upstream_model.to_string();
            let attempt_started = Instant::now();
            let attempt = attempt(
                route,
                self.tpm_tokens,
                route.timeouts.total,
                TimeoutPhase::Total,
                route.adapter.embed(&upstream_request),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = self.args.out.closed() => {
                    // The upstream call is dropped; bill the input it already read.
                    let _ = self
                        .settle(RequestOutcome::Interrupted, Some("client_gone"))
                        .await;
                    return;
                }
            };
            match outcome {
                Ok((permit, Ok(response))) => {
                    if let Some(permit) = permit {
                        permit.finish(Outcome::Success);
                    }
                    self.route = Some(route.clone());
                    let routed = RelayEvent::Routed {
                        provider: route.provider.clone(),
                        upstream: attempt_started.elapsed(),
                    };
                    let _ = self.send(routed).await;
                    return self.deliver_embeddings(response).await;
                }
                Ok((permit, Err(error))) => plan.failed(route, permit, error),
                Err(refused) => plan.failed(route, None, refused),
            }
        }
        let error = plan.into_error();
        self.reject(RequestError::Upstream(error)).await;
    }

    async fn deliver_embeddings(&mut self, response: EmbeddingResponse) {
        // An upstream that reported no usage leaves tokun's own count of the
        // input (the prompt estimate), settled as estimated.
        self.upstream_usage =
            (!response.usage_estimated).then(|| Usage::new(response.usage.prompt_tokens, 0));
        match self.settle(RequestOutcome::Completed, None).await {
            Ok(settlement) => {
                let event = RelayEvent::Embedded(Box::new(response), Box::new(settlement));
                let _ = self.send(event).await;
            }
            Err(error) => self.reject(error).await,
        }
    }
}
