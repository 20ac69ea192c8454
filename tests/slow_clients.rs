//! Slow clients cannot hold descriptors: connections that send half a
//! request's headers and stall (slowloris), or never finish a TLS
//! handshake, are closed by the server after `server.header_read_timeout_secs`,
//! and the process's open descriptors (`/proc/self/fd`) fall back; a
//! keep-alive connection between requests gets `server.idle_timeout_secs`
//! instead. One test, run in steps, because the descriptor count is the
//! whole process's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "tls/pki.rs"]
mod pki;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Harness, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

const TIMEOUTS: &str = "[server]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 3\n";

/// How long a test waits for the server to close a connection before it
/// calls the connection held for ever (far above the 1 s and 3 s set).
const HELD: Duration = Duration::from_secs(20);

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Opens `n` connections that each send `prefix` and then nothing.
async fn stalled(addr: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(prefix).await.unwrap();
        streams.push(stream);
    }
    streams
}

/// Reads until the server closes the connection (end of file or reset).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(HELD, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    closed
        .await
        .expect("the server closed the stalled connection");
}

/// Waits (bounded) until at most `limit` descriptors are open; the count.
async fn settles_at_most(limit: usize) -> usize {
    for _ in 0..100 {
        if open_descriptors() <= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open_descriptors()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_and_their_descriptors_freed() {
    let h = Harness::start(Some(TIMEOUTS)).await;
    half_headers_on_plain_http(&h).await;
    keep_alive_gets_the_idle_timeout(&h).await;
    stalled_tls_handshakes_and_headers().await;
}

async fn half_headers_on_plain_http(h: &Harness) {
    const N: usize = 200;
    let before = open_descriptors();
    let mut streams = stalled(h.server.addr(), N, b"GET /v1/models HTTP/1.1\r\nHost: loc").await;
    assert!(open_descriptors() >= before + N, "the client side is open");
    for stream in &mut streams {
        closed_by_server(stream).await;
    }
    // The client's N sockets are still open; the server's are gone.
    let during = settles_at_most(before + N + 10).await;
    assert!(during <= before + N + 10, "{during} open, {before} before");
    drop(streams);
    let after = settles_at_most(before + 10).await;
    assert!(after <= before + 10, "{after} open, {before} before");
    // The server still serves.
    let response = h.client.get(h.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// Between requests a connection waits for the idle timeout (3 s), not the
/// header timeout (1 s); then it is closed.
async fn keep_alive_gets_the_idle_timeout(h: &Harness) {
    let mut stream = TcpStream::connect(h.server.addr()).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: tokun\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        stream.write_all(request).await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        // Longer than the header timeout, shorter than the idle one.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    closed_by_server(&mut stream).await;
}

/// On a TLS listener: connections that never start a handshake, stop half
/// way through a ClientHello, or finish it and send half a request.
async fn stalled_tls_handshakes_and_headers() {
    let ca = pki::Ca::new();
    let files = pki::Files::new(&temp_dir("slow-tls"));
    files.write(&ca.leaf("slow"));
    let h = Harness::start(Some(&format!("{TIMEOUTS}{}", files.toml()))).await;
    let before = open_descriptors();
    let mut silent = stalled(h.server.addr(), 50, b"").await;
    // A TLS record header announcing a ClientHello that never comes.
    let mut partial = stalled(h.server.addr(), 50, &[0x16, 0x03, 0x01, 0x02, 0x00]).await;
    for stream in silent.iter_mut().chain(partial.iter_mut()) {
        closed_by_server(stream).await;
    }
    drop((silent, partial));
    let after = settles_at_most(before + 10).await;
    assert!(after <= before + 10, "{after} open, {before} before");

    // Half a request after a full handshake, with the TLS client's own stack.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(h.server.addr()).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let closed = tokio::time::timeout(HELD, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    closed
        .await
        .expect("the server closed the stalled TLS connection");
}
