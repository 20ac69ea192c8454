//! Writing to a socket without ever buffering more than the loop decided to:
//! an [`Outbox`] of messages queued for one direction, written and flushed by
//! a future the socket loop can drop at any time without losing a message,
//! and how a socket ends: what a read error means, and the close frames
//! tokun sends (codes and reasons clients can read).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, SinkExt, Stream, StreamExt};

use crate::config::WebSocketConfig;
use crate::error::ApiError;

/// How long tokun waits for a close frame to go out and for the peer's reply.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Close codes tokun uses; refusals are `4000 + HTTP status` (see [`close_for`]).
pub(super) mod code {
    /// No frame from the client within `pong_timeout` of a ping.
    pub const PING_TIMEOUT: u16 = 4408;
    /// A frame or message over `max_frame_bytes` (RFC 6455 "message too big").
    pub const TOO_BIG: u16 = 1009;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const INTERNAL: u16 = 1011;
    pub const NORMAL: u16 = 1000;
    /// tokun is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// Messages queued for one socket direction.
pub(super) struct Outbox<M> {
    queue: VecDeque<M>,
    /// Set from the first push until a flush completed: the sink may still
    /// hold bytes the kernel did not take yet.
    unflushed: bool,
}

impl<M> Outbox<M> {
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            unflushed: false,
        }
    }

    pub fn push(&mut self, message: M) {
        self.queue.push_back(message);
        self.unflushed = true;
    }

    pub fn push_some(&mut self, message: Option<M>) {
        if let Some(message) = message {
            self.push(message);
        }
    }

    /// True while something queued has not been written and flushed.
    pub fn pending(&self) -> bool {
        self.unflushed
    }

    /// Messages not handed to the sink yet.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Hands every queued message to `sink`, then flushes it. Cancel-safe:
    /// a message leaves the queue only once the sink accepted it.
    pub async fn write<S>(&mut self, sink: &mut S) -> Result<(), S::Error>
    where
        S: Sink<M> + Unpin,
    {
        poll_fn(|cx| {
            while !self.queue.is_empty() {
                ready!(sink.poll_ready_unpin(cx))?;
                if let Some(message) = self.queue.pop_front() {
                    sink.start_send_unpin(message)?;
                }
            }
            ready!(sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
            Poll::Ready(Ok(()))
        })
        .await
    }
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
pub(super) fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }
}

/// `4000 + status` for a refusal (4401, 4402, 4403, 4404, 4429…), 1011 otherwise.
pub(super) fn close_for(error: &ApiError) -> CloseFrame {
    let status = error.status().as_u16();
    let code = if (400..500).contains(&status) {
        4000 + status
    } else {
        code::INTERNAL
    };
    close_frame(code, &error.object().message)
}

/// How a socket loop ended.
pub(super) enum Ending {
    /// tokun closes with this frame.
    Close(CloseFrame),
    /// The client sent a close frame.
    ClientClosed,
    /// The connection broke or the client stopped reading: nothing to send.
    Gone,
}

/// The close for a client that sent nothing within `pong_timeout` of a ping.
pub(super) fn ping_timeout(limits: &WebSocketConfig) -> Ending {
    let reason = format!(
        "No pong within {} ms of a ping.",
        limits.pong_timeout.as_millis()
    );
    Ending::Close(close_frame(code::PING_TIMEOUT, &reason))
}

/// Maps a read error to how the socket ends (1009 for an oversize frame).
pub(super) fn read_failed(error: axum::Error, max_frame_bytes: usize) -> Ending {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => {
            let reason =
                format!("A frame or message exceeds the limit of {max_frame_bytes} bytes.");
            Ending::Close(close_frame(code::TOO_BIG, &reason))
        }
        Some(Error::Utf8(_)) => Ending::Close(close_frame(
            code::INVALID_DATA,
            "A text frame is not valid UTF-8.",
        )),
        // A TCP close without a close frame is a network drop, not a protocol error.
        Some(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Ending::Gone,
        Some(Error::Protocol(_)) => {
            Ending::Close(close_frame(code::PROTOCOL, "WebSocket protocol error."))
        }
        _ => Ending::Gone,
    }
}

/// Closes a socket that was refused before any work (bad credentials, unknown model).
pub(super) async fn refuse(socket: WebSocket, error: &ApiError) {
    let (mut sink, stream) = socket.split();
    close(&mut sink, stream, close_for(error)).await;
}

/// Sends `frame`, then waits (bounded) for the peer's close reply, so the
/// peer reads the frame before the connection goes away.
pub(super) async fn close<S, R, E>(sink: &mut S, mut stream: R, frame: CloseFrame)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
}
