//! Fakes of the outside world for tests and benchmarks: OpenAI-compatible,
//! Anthropic and Gemini upstreams on port 0, scriptable per call with one
//! [`Script`] type, a fake Stripe (Checkout Sessions, signed webhooks), a
//! fake OpenID issuer (`oidc`) and an SMTP sink (`smtp`).
//! Never used by the product itself.

pub mod anthropic;
pub mod fake;
pub mod gemini;
pub mod oidc;
pub mod realtime;
pub mod smtp;
pub mod stripe;
pub mod upstream;

pub use anthropic::FakeAnthropic;
pub use fake::Recorded;
pub use gemini::FakeGemini;
pub use realtime::{FakeRealtime, RealtimeScript};
pub use stripe::FakeStripe;
pub use upstream::{FakeUpstream, Script};
