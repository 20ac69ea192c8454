//! A TCP proxy to the test Postgres that can play "Postgres is down" and
//! "the connection died mid-transaction".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::pg_url;

/// A TCP proxy to Postgres on 127.0.0.1:0 that can refuse connections
/// (Postgres "down") or cut the next connection after it has forwarded a
/// number of bytes to the server (killed mid-transaction).
pub struct PgProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    cut_after: Arc<AtomicU64>,
    /// Connections cut so far.
    pub cuts: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl PgProxy {
    pub async fn start() -> PgProxy {
        let config: tokio_postgres::Config = pg_url().parse().unwrap();
        let upstream = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => {
                format!(
                    "{host}:{}",
                    config.get_ports().first().copied().unwrap_or(5432)
                )
            }
            #[allow(unreachable_patterns)]
            _ => panic!("the test Postgres must be reachable over TCP"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let cut_after = Arc::new(AtomicU64::new(u64::MAX));
        let cuts = Arc::new(AtomicU64::new(0));
        let (d, c, n) = (down.clone(), cut_after.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let limit = c.swap(u64::MAX, Ordering::SeqCst);
                let upstream = upstream.clone();
                let cuts = n.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        if pump(client, server, limit).await {
                            cuts.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        PgProxy {
            addr,
            down,
            cut_after,
            cuts,
            accept,
        }
    }

    /// `postgres://…` through the proxy, with a password that must never show.
    pub fn url(&self, password: &str) -> String {
        let config: tokio_postgres::Config = pg_url().parse().unwrap();
        let user = config.get_user().unwrap_or("postgres");
        let db = config.get_dbname().unwrap_or(user);
        format!("postgres://{user}:{password}@{}/{db}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Cuts the next connection once it has sent `bytes` to Postgres.
    pub fn cut_next_after(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards both ways; returns true if it cut the connection.
async fn pump(mut client: TcpStream, mut server: TcpStream, limit: u64) -> bool {
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            read = client.read(&mut up) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    sent += n as u64;
                    if sent > limit {
                        return true;
                    }
                    if server.write_all(&up[..n]).await.is_err() {
                        return false;
                    }
                }
            },
            read = server.read(&mut down) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    if client.write_all(&down[..n]).await.is_err() {
                        return false;
                    }
                }
            },
        }
    }
}
