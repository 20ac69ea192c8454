//! The domain, as ractor actors: stream actors relaying completions, account
//! actors owning balances, the ledger actor in front of the durable store, the
//! snapshot actor copying it to Postgres, and
//! their supervision and counters. Knows nothing of axum, HTTP status codes or
//! the public JSON shapes; talks to upstreams only through `tokun-providers`
//! and to disk only through `tokun-storage`.

pub mod account;
pub mod instrument;
pub mod ledger;
pub mod meter;
pub mod metric;
pub mod provider;
pub mod relay;
pub mod routing;
pub mod snapshot;
pub mod stats;
pub mod stream;

pub use account::supervisor::AccountsHandle;
pub use ledger::LedgerHandle;
pub use meter::{HoldPolicy, Meter, MeterRecord, Output, Payer, RequestOutcome, Tariff, Transport};
pub use relay::{
    RelayEvent, RequestError, Route, Settlement, StreamFailure, Timeouts, UsageSource,
};
pub use snapshot::supervisor::SnapshotHandle;
pub use stream::supervisor::StreamSupervisorHandle;
pub use stream::{StreamArgs, Work};
