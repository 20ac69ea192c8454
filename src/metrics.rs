//! Prometheus metrics: the `metrics` facade's recorder (installed once per
//! process), the scrape at `GET /metrics`, and the gauges computed at scrape
//! time (mailbox depths, ledger writer counters). Labels are bounded: kinds,
//! configured model and provider names, statuses — never ids or emails.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokun_actors::instrument::directory;

use crate::services::Services;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, 50 µs to 60 s.
const SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide recorder (first call wins) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            tokun_actors::metric::enable();
            describe();
            register_snapshot_metrics();
            Some(handle)
        })
        .clone()
}

/// How often histograms' pending samples are folded in when nobody scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Renders the scrape, refreshing the gauges computed on demand.
pub fn render(handle: &PrometheusHandle, services: &Services, live_streams: u64) -> String {
    directory().publish_depths();
    let writer = services.ledger.stats().snapshot();
    metrics::counter!("tokun_ledger_batches_total").absolute(writer.batches);
    metrics::counter!("tokun_ledger_flushes_total").absolute(writer.flushes);
    metrics::counter!("tokun_ledger_entries_total").absolute(writer.entries);
    metrics::counter!("tokun_ledger_rejected_total").absolute(writer.rejected);
    metrics::counter!("tokun_ledger_failed_batches_total").absolute(writer.failed_batches);
    metrics::counter!("tokun_ledger_flush_micros_total").absolute(writer.flush_micros_total);
    metrics::gauge!("tokun_ledger_last_batch_ops").set(writer.last_batch_ops as f64);
    metrics::gauge!("tokun_ledger_last_flush_micros").set(writer.last_flush_micros as f64);
    metrics::gauge!("tokun_ledger_writable").set(if services.ledger.is_healthy() {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("tokun_streams_live").set(live_streams as f64);
    metrics::gauge!("tokun_account_actors_live").set(services.accounts.live() as f64);
    publish_snapshot_lag(services);
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tokun_requests_total",
        "Completion requests by model, provider, status and transport."
    );
    describe_counter!(
        "tokun_http_requests_total",
        "HTTP requests by route template and status."
    );
    describe_histogram!(
        "tokun_gateway_overhead_seconds",
        Unit::Seconds,
        "Time spent in tokun, excluding the upstream."
    );
    describe_histogram!(
        "tokun_time_to_first_token_seconds",
        Unit::Seconds,
        "From request received to first chunk sent."
    );
    describe_histogram!(
        "tokun_inter_token_seconds",
        Unit::Seconds,
        "Gap between two relayed chunks."
    );
    describe_counter!(
        "tokun_tokens_total",
        "Tokens billed, by model and direction (prompt, completion)."
    );
    describe_counter!(
        "tokun_cost_nanos_total",
        "Cost billed in nano-USD, by model."
    );
    describe_gauge!(
        "tokun_streams_active",
        "Stream actors relaying right now, by transport."
    );
    describe_counter!(
        "tokun_stream_outcomes_total",
        "How streams ended, by model, provider and outcome."
    );
    describe_counter!(
        "tokun_upstream_errors_total",
        "Upstream failures by provider and kind (rate_limited = 429)."
    );
    describe_counter!(
        "tokun_failovers_total",
        "Requests moved to the next route before the first chunk."
    );
    describe_gauge!("tokun_holds_open", "Open holds across all accounts.");
    describe_counter!("tokun_ledger_entries_total", "Ledger entries made durable.");
    describe_counter!(
        "tokun_ledger_batches_total",
        "Group commits, one flush each."
    );
    describe_counter!(
        "tokun_ledger_flushes_total",
        "Flushes of the ledger store (fsyncs)."
    );
    describe_counter!(
        "tokun_ledger_flush_micros_total",
        "Time spent flushing, microseconds (÷ flushes = mean flush)."
    );
    describe_gauge!(
        "tokun_ledger_last_batch_ops",
        "Ops in the last group commit."
    );
    describe_gauge!(
        "tokun_ledger_last_flush_micros",
        "Duration of the last flush, microseconds."
    );
    describe_gauge!(
        "tokun_ledger_writable",
        "1 while the ledger accepts writes."
    );
    describe_gauge!("tokun_actors_alive", "Live actors by kind.");
    describe_counter!("tokun_actor_started_total", "Actors started, by kind.");
    describe_counter!("tokun_actor_stopped_total", "Actors stopped, by kind.");
    describe_counter!(
        "tokun_actor_restarts_total",
        "Actors that failed and were replaced or dropped, by kind and reason."
    );
    describe_counter!(
        "tokun_actor_messages_total",
        "Messages handled, by actor kind and message kind."
    );
    describe_histogram!(
        "tokun_actor_handler_seconds",
        Unit::Seconds,
        "Message handler latency by actor kind."
    );
    describe_gauge!(
        "tokun_actor_mailbox_depth",
        "Messages waiting, summed over the actors of a kind."
    );
    describe_gauge!(
        "tokun_actor_mailbox_depth_max",
        "Deepest mailbox among the actors of a kind."
    );
}

/// The Postgres snapshot lag, measured at scrape time (zero without Postgres).
fn publish_snapshot_lag(services: &Services) {
    let lag = services
        .snapshots
        .as_ref()
        .map(|snapshots| snapshots.lag())
        .unwrap_or_default();
    metrics::gauge!("tokun_snapshot_lag_entries").set(lag.entries as f64);
    metrics::gauge!("tokun_snapshot_lag_seconds").set(lag.seconds);
}

/// Snapshot metrics exist from the start, with or without Postgres, so
/// dashboards and alerts work before the first snapshot (and without one).
fn register_snapshot_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "tokun_snapshot_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last successful Postgres snapshot (0: none yet)."
    );
    describe_gauge!(
        "tokun_snapshot_lag_entries",
        "Ledger entries in sled not yet in Postgres."
    );
    describe_gauge!(
        "tokun_snapshot_lag_seconds",
        Unit::Seconds,
        "Age of the oldest ledger entry not yet in Postgres (0: caught up)."
    );
    describe_histogram!(
        "tokun_snapshot_duration_seconds",
        Unit::Seconds,
        "How long successful Postgres snapshots took."
    );
    describe_counter!(
        "tokun_snapshot_rows_total",
        "Rows written to Postgres by snapshots, by table."
    );
    describe_counter!(
        "tokun_snapshot_failures_total",
        "Postgres snapshots that failed (each is retried with backoff)."
    );
    metrics::gauge!("tokun_snapshot_last_success_timestamp_seconds").increment(0.0);
    metrics::gauge!("tokun_snapshot_lag_entries").set(0.0);
    metrics::gauge!("tokun_snapshot_lag_seconds").set(0.0);
    let _ = metrics::histogram!("tokun_snapshot_duration_seconds");
    for table in [
        "ledger_entries",
        "balances",
        "accounts",
        "api_keys",
        "open_holds",
        "requests",
        "payments",
        "stripe_events",
    ] {
        metrics::counter!("tokun_snapshot_rows_total", "table" => table).increment(0);
    }
    metrics::counter!("tokun_snapshot_failures_total").increment(0);
}
