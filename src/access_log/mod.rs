//! The access log: one JSON line per HTTP request and WebSocket upgrade, on
//! every listener, in `<data_dir>/access/access-YYYY-MM-DD.log` (UTC days).
//!
//! A request pays for capturing a few cheap clones (the URI, two header
//! values) and one `try_send` on a bounded channel; everything else — the
//! query filter, the timestamp, JSON — happens on one dedicated writer
//! thread (`writer.rs`) behind a `BufWriter`, flushed within a second and at
//! shutdown. When the channel is full the line is dropped and counted
//! (`tokun_access_log_dropped_total`); a request never waits for the log.
//!
//! What a line never holds: any header but `User-Agent` (so no
//! `Authorization`, cookie or WebSocket subprotocol credential), and any
//! query parameter outside a short list of tokun's own non-secret ones
//! (`line.rs`), so no ticket, key, code, state or session id. What it is
//! not: the request log of completions (that is the ledger's `usage`).

mod client_ip;
mod files;
mod line;
mod middleware;
mod writer;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, Method, Uri};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokun_actors::metric;

use crate::config::{Config, TrustedProxies};

pub use client_ip::client_ip;
pub use files::{day_file_name, remove_expired};
pub use line::{QUERY_KEPT, loggable_path};
pub use middleware::record;

/// How many days of files tokun keeps unless the retention sweeper is told
/// otherwise; every line is kept at least this long.
pub const KEEP_DAYS: u64 = 30;

/// Lines waiting for the writer; past this, new lines are dropped (about
/// 200 bytes each, so at most a couple of MiB held).
pub const CHANNEL_CAPACITY: usize = 8192;

/// The longest a written line waits in the buffer before it reaches the file.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The folder under the data dir that holds the day files.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("access")
}

/// What kind of request a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    /// A request asking to upgrade to a WebSocket (answered 101 when it did).
    WebSocket,
}

/// One request as captured on its path: cheap clones, formatted later on
/// the writer thread.
#[derive(Debug, Clone)]
pub struct Record {
    /// Unix milliseconds when the request arrived.
    pub ts_ms: u64,
    /// From arrival until the response body ended (or the client left).
    pub duration: Duration,
    /// The client: the socket's peer, or whom trusted proxies name.
    pub ip: Option<IpAddr>,
    pub method: Method,
    /// The whole URI; only `loggable_path` of it is ever written.
    pub uri: Uri,
    pub status: u16,
    /// Response body bytes handed to the connection.
    pub bytes: u64,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    pub kind: Kind,
}

/// The access log's handle: cheap to clone, held by the app state and by
/// every response body still being sent.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// Bounded: a full channel drops lines instead of slowing requests.
    lines: Sender<Record>,
    /// Flush and stop requests, apart from lines so they are never dropped.
    control: Sender<writer::Control>,
    trusted: TrustedProxies,
    /// The writer thread, joined by [`AccessLog::stop`].
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// Creates `<data_dir>/access/` and starts the writer thread, which first
    /// deletes day files older than `keep_days`.
    pub fn start(
        data_dir: &Path,
        trusted: TrustedProxies,
        keep_days: u64,
    ) -> std::io::Result<AccessLog> {
        let dir = dir(data_dir);
        std::fs::create_dir_all(&dir)?;
        let (lines, receiver) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let (control, orders) = crossbeam_channel::unbounded();
        let thread = spawn_writer(dir, keep_days, receiver, orders)?;
        Ok(AccessLog {
            inner: Arc::new(Inner {
                lines,
                control,
                trusted,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// As `[access_log]` and `[server]` say: `None` when disabled, files
    /// kept [`KEEP_DAYS`].
    pub fn from_config(config: &Config) -> std::io::Result<Option<AccessLog>> {
        if !config.access_log.enabled {
            return Ok(None);
        }
        let server = &config.server;
        Self::start(&server.data_dir, server.trusted_proxies.clone(), KEEP_DAYS).map(Some)
    }

    /// Hands a line to the writer, or drops and counts it if the writer is
    /// behind. Never blocks.
    pub fn send(&self, record: Record) {
        match self.inner.lines.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metric::counter_add("tokun_access_log_dropped_total", &[("reason", "full")], 1);
            }
            // Stopped at shutdown: a stream that outlived the server.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub fn trusted(&self) -> &TrustedProxies {
        &self.inner.trusted
    }

    /// Writes every line sent so far to its file (blocking, bounded).
    pub fn flush(&self) {
        let (ack, acked) = crossbeam_channel::bounded(1);
        if self.inner.control.send(writer::Control::Flush(ack)).is_ok() {
            let _ = acked.recv_timeout(STOP_WITHIN);
        }
    }

    /// Writes what was sent, closes the file and ends the thread (blocking,
    /// bounded). Lines sent afterwards are discarded.
    pub fn stop(&self) {
        let (ack, acked) = crossbeam_channel::bounded(1);
        let stopped = self.inner.control.send(writer::Control::Stop(ack)).is_ok()
            && acked.recv_timeout(STOP_WITHIN).is_ok();
        let thread = match self.inner.thread.lock() {
            Ok(mut thread) => thread.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // Joined only once it said it stopped, so this never hangs.
        if let (true, Some(thread)) = (stopped, thread) {
            let _ = thread.join();
        }
    }
}

/// How long `flush` and `stop` wait for the writer.
const STOP_WITHIN: Duration = Duration::from_secs(5);

fn spawn_writer(
    dir: PathBuf,
    keep_days: u64,
    lines: Receiver<Record>,
    orders: Receiver<writer::Control>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tokun-access-log".into())
        .spawn(move || {
            let now = tokun_providers::clock::unix_ms();
            match remove_expired(&dir, keep_days, now) {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed expired access log files"),
                Err(error) => tracing::warn!(%error, "could not remove expired access logs"),
            }
            writer::run(writer::Writer::new(dir), &lines, &orders);
        })
}
