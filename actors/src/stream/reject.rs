//! How a stream actor ends a request before any output: the hold goes
//! back, and a request no route answered is logged as failed, with the
//! status its client is answered and nothing charged.

use tokun_providers::Usage;

use super::StreamState;
use crate::meter::{MeterRecord, RequestOutcome};
use crate::relay::{RelayEvent, RequestError, UsageSource};

impl StreamState {
    /// Ends a request before any output: the hold goes back, and a request
    /// no route answered is logged as failed (a refused hold has nothing to
    /// log against; a failed settlement already closed the meter).
    pub(super) async fn reject(&mut self, error: RequestError) {
        self.settled = true;
        match &error {
            RequestError::Upstream(upstream) => {
                let record = self.failed_record(upstream.kind());
                self.meter.release_failed(&record, upstream.answer_status());
            }
            RequestError::Account(_) => self.meter.release(),
        }
        let _ = self.send(RelayEvent::Rejected(Box::new(error))).await;
    }

    /// The request log's record of a request no route answered: no usage.
    fn failed_record(&self, error_kind: &'static str) -> MeterRecord {
        MeterRecord {
            request_id: self.args.request_id.clone(),
            model: self.args.model.clone(),
            served_model: None,
            provider: None,
            route: None,
            usage: Usage::new(0, 0),
            source: UsageSource::Exact,
            outcome: RequestOutcome::Interrupted,
            error_kind: Some(error_kind),
            latency_ms: self.started.elapsed().as_millis() as u64,
            ttft_ms: None,
        }
    }
}
