//! The one `chromedriver` of a test binary: started on first use on a free
//! port, shared by every live [`super::Browser`], and stopped — its
//! Chromiums with it — when the last one is dropped; plus the small blocking
//! HTTP client used to talk to it where no runtime can be relied on.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::chromedriver_binary;

/// A running `chromedriver`, stopped (and its browsers with it) on drop.
pub(super) struct Driver {
    child: Child,
    pub(super) port: u16,
    log: PathBuf,
}

/// The binary's one driver while any [`super::Browser`] holds it.
static DRIVER: Mutex<Weak<Driver>> = Mutex::new(Weak::new());

pub(super) fn shared_driver() -> Arc<Driver> {
    let mut slot = DRIVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(driver) = slot.upgrade() {
        return driver;
    }
    let driver = Arc::new(Driver::start());
    *slot = Arc::downgrade(&driver);
    driver
}

impl Driver {
    fn start() -> Driver {
        let mut last_log = String::new();
        // A free port can be taken between probing and chromedriver's bind:
        // then it exits at once, and the next attempt takes another port.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!(
                "tokun-chromedriver-{}-{port}.log",
                std::process::id()
            ));
            let log_file = std::fs::File::create(&log).expect("chromedriver log file");
            let stderr = log_file.try_clone().expect("chromedriver log file");
            let child = Command::new(chromedriver_binary())
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "cannot run `{}`: {err}. The browser tests need Debian's `chromium` \
                         and `chromium-driver` (`apt-get install chromium chromium-driver`; \
                         .ci/run installs them)",
                        chromedriver_binary()
                    )
                });
            let mut driver = Driver { child, port, log };
            if driver.wait_ready(Duration::from_secs(15)) {
                return driver;
            }
            last_log = std::fs::read_to_string(&driver.log).unwrap_or_default();
            // `driver` drops here: killed, log removed.
        }
        panic!("chromedriver did not become ready; its last log:\n{last_log}");
    }

    /// Polls `GET /status` until `ready`, or false if the driver exited or time ran out.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if let Ok((200, body)) = http(self.port, "GET", "/status", None) {
                let ready = serde_json::from_str::<Value>(&body)
                    .is_ok_and(|status| status["value"]["ready"] == true);
                if ready {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // `/shutdown` quits every session's Chromium; killing chromedriver
        // alone would leave them running.
        let _ = http(self.port, "GET", "/shutdown", None);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A blocking HTTP/1.1 exchange with chromedriver on 127.0.0.1 (it answers
/// with `Content-Length` and keeps the connection open, so read exactly that).
/// Used where no async runtime can be relied on: start-up and `Drop`.
pub(super) fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(bad("connection closed before the response ended"));
        }
        buf.extend_from_slice(&chunk[..read]);
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= head_end + 4 + length {
            let body = &buf[head_end + 4..head_end + 4 + length];
            return Ok((status, String::from_utf8_lossy(body).into_owned()));
        }
    }
}
