//! A bare hyper proxy: the floor of any HTTP gateway on this machine.
//!
//! Every inbound connection gets one upstream connection of its own, and
//! each request and response body is handed across untouched (no parsing,
//! no pool, no actor, no accounting). Whatever it adds over `direct` is what
//! the extra hop alone costs here — two more sockets and the thread hops
//! between the runtimes — so it bounds from below what any gateway can add.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

type Upstream = Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>>;

/// Starts the proxy on the current runtime; it forwards to `upstream`.
pub(crate) async fn start_bare(
    upstream: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let slot = Upstream::default();
                let service = hyper::service::service_fn(move |request| {
                    let slot = slot.clone();
                    async move { forward(upstream, &slot, request).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// Sends `request` on this inbound connection's upstream connection (opened
/// on first use, or again after it closed) and answers with the upstream's
/// response, its body streamed through frame by frame.
async fn forward(
    upstream: SocketAddr,
    slot: &Upstream,
    request: Request<Incoming>,
) -> std::io::Result<Response<Incoming>> {
    let mut slot = slot.lock().await;
    let sender = match slot.take() {
        Some(sender) if !sender.is_closed() => slot.insert(sender),
        _ => {
            let tcp = TcpStream::connect(upstream).await?;
            tcp.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            slot.insert(sender)
        }
    };
    sender.ready().await.map_err(std::io::Error::other)?;
    sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)
}
