//! The API listener's https side, started and stopped with the server: the
//! certificate store and the task that reloads it, and the
//! `server.redirect_http` listener. With no `[server.tls]` it is empty.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::tls::{self, CertStore};
use super::{Endpoint, Limits, Listener, redirect};
use crate::config::ServerConfig;

pub struct Https {
    acceptor: Option<TlsAcceptor>,
    /// Keeps the certificate current; aborted at shutdown.
    reloader: Option<JoinHandle<()>>,
    redirect: Option<RedirectListener>,
}

/// The plain-HTTP listener that only redirects.
struct RedirectListener {
    addr: SocketAddr,
    /// Stops its accept loop.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Https {
    /// Loads the certificate and binds the redirect listener, if configured;
    /// `api` is where the TLS listener listens (the redirect's port).
    pub async fn start(server: &ServerConfig, api: SocketAddr) -> anyhow::Result<Https> {
        let Some(files) = &server.tls else {
            return Ok(Https {
                acceptor: None,
                reloader: None,
                redirect: None,
            });
        };
        let store = CertStore::open(files).with_context(|| "[server.tls]".to_owned())?;
        let acceptor = tls::acceptor(store.clone())?;
        let reloader = tokio::spawn(tls::keep_current(store, files.clone()));
        let redirect = match server.redirect_http {
            Some(addr) => Some(RedirectListener::start(addr, server, api.port()).await?),
            None => None,
        };
        Ok(Https {
            acceptor: Some(acceptor),
            reloader: Some(reloader),
            redirect,
        })
    }

    /// The acceptor the API listener serves TLS with; `None`: plain HTTP.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor.clone()
    }

    /// Where `server.redirect_http` listens, if configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().map(|r| r.addr)
    }

    /// Stops reloading and redirecting (bounded: redirects are instant).
    pub async fn stop(mut self) {
        if let Some(reloader) = self.reloader.take() {
            reloader.abort();
            let _ = reloader.await;
        }
        if let Some(mut redirect) = self.redirect.take() {
            if let Some(stop) = redirect.stop.take() {
                let _ = stop.send(());
            }
            let wait = std::time::Duration::from_secs(2);
            if tokio::time::timeout(wait, &mut redirect.task)
                .await
                .is_err()
            {
                redirect.task.abort();
            }
        }
    }
}

impl Drop for Https {
    fn drop(&mut self) {
        if let Some(reloader) = self.reloader.take() {
            reloader.abort();
        }
        if let Some(redirect) = self.redirect.take() {
            redirect.task.abort();
        }
    }
}

impl RedirectListener {
    async fn start(
        addr: SocketAddr,
        server: &ServerConfig,
        https_port: u16,
    ) -> anyhow::Result<RedirectListener> {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (server.redirect_http)"))?;
        let addr = tcp.local_addr()?;
        let router = redirect::router(server.public_url.as_deref(), https_port);
        let endpoint = Endpoint::new(Listener::Redirect, router, Limits::of(server));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(super::serve(tcp, endpoint, async move {
            let _ = stopped.await;
        }));
        Ok(RedirectListener {
            addr,
            stop: Some(stop),
            task,
        })
    }
}
