//! The access log's middleware, outermost on every listener: it notes the
//! request as it arrives and wraps the response body so that the line is
//! sent when the body is done — completely sent, or dropped because the
//! client left — with the bytes it carried. A stream's line therefore comes
//! when the stream ends; a WebSocket upgrade's when its 101 is written.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::{UPGRADE, USER_AGENT};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

use super::{AccessLog, Kind, Record, client_ip};

/// Logs the request once its response body is done.
pub async fn record(State(log): State<AccessLog>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let ts_ms = tokun_providers::clock::unix_ms();
    let headers = request.headers();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let ip = client_ip(peer, headers, log.trusted());
    let kind = if asks_for_websocket(headers) {
        Kind::WebSocket
    } else {
        Kind::Http
    };
    let user_agent = headers.get(USER_AGENT).cloned();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    let record = Record {
        ts_ms,
        duration: Duration::ZERO,
        ip,
        method,
        uri,
        status: response.status().as_u16(),
        bytes: 0,
        user_agent,
        // Set by the request-id middleware inside this one.
        request_id: response.headers().get("x-request-id").cloned(),
        kind,
    };
    let (parts, body) = response.into_parts();
    let body = Counted {
        inner: body,
        pending: Pending {
            log,
            started,
            record: Some(record),
        },
    };
    Response::from_parts(parts, Body::new(body))
}

fn asks_for_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A response body that counts the bytes it yields; its line goes out when
/// it is dropped, which hyper does once the body ended or the client left.
struct Counted {
    inner: Body,
    pending: Pending,
}

/// The line waiting for its body to finish; sending it is its `Drop`, so a
/// body that is never polled to the end still gets its line.
struct Pending {
    log: AccessLog,
    started: Instant,
    /// Always `Some` until dropped.
    record: Option<Record>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(record)) = (&polled, &mut this.pending.record) {
            let len = frame.data_ref().map_or(0, Bytes::len);
            record.bytes = record
                .bytes
                .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        }
        polled
    }

    // Both forwarded, so hyper still sends `Content-Length` for a known size.
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration = self.started.elapsed();
            self.log.send(record);
        }
    }
}
