//! The mock upstream: a lean hyper HTTP/1.1 server with canned OpenAI bodies.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

/// A lean OpenAI-compatible upstream: canned bodies, no bookkeeping.
/// `/v1/chat/completions` answers at once; `/slow/v1/chat/completions`
/// streams with a pause before every event but the usage chunk and `[DONE]`.
pub(crate) struct Mock {
    pub(crate) completion: Bytes,
    pub(crate) fast: Arc<[Bytes]>,
    pub(crate) slow: Arc<[Bytes]>,
    pub(crate) fast_usage: Bytes,
    pub(crate) slow_usage: Bytes,
    pub(crate) done: Bytes,
    pub(crate) delay: Duration,
}

pub(crate) type MockBody = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn sse_chunk(delta: &str, finish: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
         \"model\":\"upstream-model\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{{\"index\":0,\
         \"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

pub(crate) fn usage_chunk(completion_tokens: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
         \"model\":\"upstream-model\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{completion_tokens},\
         \"total_tokens\":{}}}}}\n\n",
        completion_tokens + 12
    ))
}

/// Role chunk, `tokens` content chunks, finish chunk.
pub(crate) fn stream_frames(tokens: usize) -> Arc<[Bytes]> {
    let mut frames = Vec::with_capacity(tokens + 2);
    frames.push(sse_chunk(r#"{"role":"assistant","content":""}"#, "null"));
    frames.extend((0..tokens).map(|i| sse_chunk(&format!(r#"{{"content":" tok{i}"}}"#), "null")));
    frames.push(sse_chunk("{}", r#""stop""#));
    frames.into()
}

impl Mock {
    pub(crate) fn new(chunks: usize, slow_chunks: usize, delay: Duration) -> Mock {
        let completion = Bytes::from_static(
            br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"upstream-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark's mock upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20},"system_fingerprint":"fp_bench"}"#,
        );
        Mock {
            completion,
            fast: stream_frames(chunks),
            slow: stream_frames(slow_chunks),
            fast_usage: usage_chunk(chunks),
            slow_usage: usage_chunk(slow_chunks),
            done: Bytes::from_static(b"data: [DONE]\n\n"),
            delay,
        }
    }

    pub(crate) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<MockBody> {
        let slow = request.uri().path().starts_with("/slow/");
        let body = request
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut response = if memmem::find(&body, br#""stream":true"#).is_none() {
            let mut response = Response::new(Full::new(self.completion.clone()).boxed_unsync());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        } else {
            let include_usage = memmem::find(&body, br#""include_usage":true"#).is_some();
            let (frames, usage, delay) = if slow {
                (self.slow.clone(), self.slow_usage.clone(), self.delay)
            } else {
                (self.fast.clone(), self.fast_usage.clone(), Duration::ZERO)
            };
            let tail: Vec<Bytes> = include_usage
                .then_some(usage)
                .into_iter()
                .chain([self.done.clone()])
                .collect();
            let delayed = frames.len();
            let events = stream::unfold(
                (0usize, frames, tail),
                move |(i, frames, tail)| async move {
                    let frame = if i < delayed {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        frames[i].clone()
                    } else {
                        tail.get(i - delayed)?.clone()
                    };
                    Some((
                        Ok::<_, Infallible>(Frame::data(frame)),
                        (i + 1, frames, tail),
                    ))
                },
            );
            let mut response = Response::new(StreamBody::new(events).boxed_unsync());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            response
        };
        *response.status_mut() = StatusCode::OK;
        response
    }
}

/// Connections the mock accepted: tokun's upstream connections during a run
/// through tokun (the pool should keep them to about the concurrency).
pub(crate) static MOCK_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn start_mock(mock: Arc<Mock>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors, most likely: back off.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            MOCK_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
            let mock = mock.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let mock = mock.clone();
                    async move { Ok::<_, Infallible>(mock.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
