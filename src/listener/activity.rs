//! One connection's activity, the facts its timeouts are decided on: how
//! many of its requests are in flight (until their response body is
//! dropped), since when none has been, whether a byte has arrived since
//! then (a request's headers on their way), and whether it speaks HTTP/2.
//! Written by the socket wrapper and the request service, read by the
//! connection's watchdog in `super`; lock-free, a few atomics.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Limits;

/// `first_read_ms` when nothing has arrived since the connection went idle.
const NOTHING: u64 = u64::MAX;

/// Why a connection is closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request's headers were not all there in time.
    HeaderRead,
    /// No request for too long.
    Idle,
}

impl Expiry {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::HeaderRead => "header_timeout",
            Self::Idle => "idle_timeout",
        }
    }
}

#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the last request finished.
    idle_since_ms: AtomicU64,
    /// Milliseconds after `start` of the first byte read while idle, or
    /// [`NOTHING`]. A new connection starts "read at 0": its first request
    /// is due within the header timeout.
    first_read_ms: AtomicU64,
    /// HTTP/2 reads frames (pings, window updates) between requests, so
    /// only the idle timeout applies to it.
    http2: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_read_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        })
    }

    /// A request has arrived; it counts until the guard is dropped.
    pub(super) fn request(self: &Arc<Self>, version: axum::http::Version) -> InFlight {
        if version == axum::http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection is due to be closed, and why; `None` while a
    /// request is in flight (a slow upstream is not the client's fault).
    pub(super) fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64| self.start + std::time::Duration::from_millis(ms);
        let idle = at(self.idle_since_ms.load(Ordering::Acquire)) + limits.idle;
        let first_read = self.first_read_ms.load(Ordering::Acquire);
        if self.http2.load(Ordering::Relaxed) || first_read == NOTHING {
            return Some((idle, Expiry::Idle));
        }
        let headers = at(first_read) + limits.header_read;
        Some(if headers < idle {
            (headers, Expiry::HeaderRead)
        } else {
            (idle, Expiry::Idle)
        })
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.first_read_ms.compare_exchange(
                NOTHING,
                self.elapsed_ms(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

/// One request in flight on its connection; dropped with the response body
/// (or with the handler, if the client leaves first).
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity
                .idle_since_ms
                .store(activity.elapsed_ms(), Ordering::Release);
            activity.first_read_ms.store(NOTHING, Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted until it is dropped.
pub(super) struct Tracked {
    pub(super) body: Body,
    pub(super) _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket (plain or TLS) that tells its connection's activity when bytes
/// arrive.
pub(super) struct Watched<I> {
    pub(super) io: I,
    pub(super) activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
