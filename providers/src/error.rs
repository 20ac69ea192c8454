//! Upstream failures, classified once: where they come from, whether another
//! route may succeed, and a short kind for metric labels. Failover and the HTTP
//! edge read these fields; nothing matches on message strings.

use std::time::Duration;

/// Who is to blame for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The upstream failed or misbehaved.
    Upstream,
    /// The upstream rejected the request itself (4xx other than 429).
    Client,
    /// tokun could not build or send the request.
    Internal,
}

/// Which watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    FirstByte,
    Idle,
    Total,
}

impl TimeoutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("could not connect to the upstream: {detail}")]
    Connect { detail: String },
    #[error("the upstream timed out ({})", phase.as_str())]
    Timeout { phase: TimeoutPhase },
    #[error("the upstream answered HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the upstream sent an invalid response: {detail}")]
    Protocol { detail: String },
    #[error("the upstream reported an error: {message}")]
    Stream { message: String },
    #[error("the upstream closed the stream before it finished")]
    Truncated,
    #[error("could not build the upstream request: {detail}")]
    Request { detail: String },
}

impl ProviderError {
    pub fn source(&self) -> ErrorSource {
        match self {
            ProviderError::Status { status, .. } if is_client_status(*status) => {
                ErrorSource::Client
            }
            ProviderError::Request { .. } => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }

    /// Whether another route (or a later retry) may succeed where this one failed.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Connect { .. } => true,
            ProviderError::Timeout { phase } => {
                matches!(phase, TimeoutPhase::Connect | TimeoutPhase::FirstByte)
            }
            ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
            ProviderError::Protocol { .. }
            | ProviderError::Stream { .. }
            | ProviderError::Truncated
            | ProviderError::Request { .. } => false,
        }
    }

    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Connect { .. } => "connect",
            ProviderError::Timeout { phase } => match phase {
                TimeoutPhase::Connect => "timeout_connect",
                TimeoutPhase::FirstByte => "timeout_first_byte",
                TimeoutPhase::Idle => "timeout_idle",
                TimeoutPhase::Total => "timeout_total",
            },
            ProviderError::Status { status: 429, .. } => "rate_limited",
            ProviderError::Status { status, .. } if is_client_status(*status) => "rejected",
            ProviderError::Status { .. } => "status",
            ProviderError::Protocol { .. } => "protocol",
            ProviderError::Stream { .. } => "stream_error",
            ProviderError::Truncated => "truncated",
            ProviderError::Request { .. } => "request",
        }
    }

    /// The HTTP status a gateway answers its client with when this failure
    /// ends a request before any output: timeouts 504, rate limits 429, an
    /// overloaded upstream (503, Anthropic's 529) 503, the upstream's own
    /// status when it rejected the request itself, 502 for everything else.
    /// The edge's error response and the request log both read it.
    pub fn answer_status(&self) -> u16 {
        match self {
            ProviderError::Timeout {
                phase: TimeoutPhase::FirstByte | TimeoutPhase::Total | TimeoutPhase::Idle,
            } => 504,
            ProviderError::Status { status: 429, .. } => 429,
            ProviderError::Status {
                status: 503 | 529, ..
            } => 503,
            ProviderError::Status { status, .. } if self.source() == ErrorSource::Client => *status,
            _ => 502,
        }
    }

    /// How long the upstream asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn is_client_status(status: u16) -> bool {
    (400..500).contains(&status) && status != 429 && status != 408
}
