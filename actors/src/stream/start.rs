//! The first step of a stream actor: it opens the request's hold through its
//! meter (sized by the policy, the upstream `max_tokens` capped to what the
//! funds allow), then runs the request as a stream, a whole answer or
//! embeddings.

use super::{End, StreamState, Work};
use crate::meter::{Meter, Output};
use crate::relay::RequestError;

impl StreamState {
    /// Opens the hold, then runs the request; `None` when it ended without
    /// streaming (answered whole, or refused — already reported).
    pub(super) async fn start(&mut self) -> Option<Result<(), End>> {
        let mut work = self.work.take()?;
        let (output, requested) = match &work {
            Work::Chat(request) => {
                let requested = request.requested_max_tokens();
                let output = Output {
                    requested: requested.map(u64::from),
                    streamed: request.stream,
                    withheld: !request.stream,
                };
                (output, requested.unwrap_or(0))
            }
            // Embeddings produce no output tokens; the hold is the input.
            Work::Embeddings(_) => (
                Output {
                    requested: Some(1),
                    streamed: false,
                    withheld: true,
                },
                0,
            ),
        };
        self.tpm_tokens = u32::try_from(self.args.prompt_tokens_estimate)
            .unwrap_or(u32::MAX)
            .saturating_add(requested);
        if let Err(error) = self.open_meter(output).await {
            self.reject(error).await;
            return None;
        }
        if let Work::Chat(request) = &mut work {
            let (tariff, prompt) = (self.args.tariff, self.args.prompt_tokens_estimate);
            if let Some(cap) = self.meter.output_cap(output, tariff, prompt) {
                request.cap_max_tokens(u32::try_from(cap).unwrap_or(u32::MAX));
            }
        }
        match work {
            Work::Chat(request) if request.stream => self.open_stream(&request).await,
            Work::Chat(request) => {
                self.complete_unary(&request).await;
                None
            }
            Work::Embeddings(request) => {
                self.embed(request).await;
                None
            }
        }
    }

    async fn open_meter(&mut self, output: Output) -> Result<(), RequestError> {
        let sizing = (self.args.tariff, self.args.prompt_tokens_estimate, output);
        self.meter = Meter::open(
            &self.accounts,
            self.args.payer,
            &self.args.request_id,
            self.policy,
            sizing,
            self.args.transport,
        )
        .await?;
        Ok(())
    }
}
