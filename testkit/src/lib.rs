//! Fakes of the outside world for tests and benchmarks: an OpenAI-compatible
//! upstream on port 0, scriptable per call. Never used by the product itself.

pub mod upstream;

pub use upstream::{FakeUpstream, Script};
