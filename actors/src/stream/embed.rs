//! The embeddings path of a stream actor: the model's routes that can embed,
//! tried like any whole answer (permits, failover, the total watchdog), then
//! one settlement (input tokens only) and one `Embedded` event.

use tokun_providers::{EmbeddingRequest, EmbeddingResponse, Usage};

use super::StreamState;
use crate::meter::RequestOutcome;
use crate::relay::{RelayEvent, Route};

impl StreamState {
    pub(super) async fn embed(&mut self, request: EmbeddingRequest) {
        let routes: Vec<Route> = self
            .args
            .routes
            .iter()
            .filter(|route| route.adapter.can_embed())
            .cloned()
            .collect();
        let response = self
            .first_whole_answer(&routes, |route| {
                let mut upstream_request = request.clone();
                upstream_request.model = route.upstream_model.to_string();
                async move { route.adapter.embed(&upstream_request).await }
            })
            .await;
        if let Some(response) = response {
            self.deliver_embeddings(response).await;
        }
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
