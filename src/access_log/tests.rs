//! The access log's parts without a server: lines, the query filter, the
//! client address, day files, rotation and expiry with chosen clocks, and
//! the writer thread's flush and stop. `tests/access_log.rs` drives the
//! real server.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::Value;

use super::files::{day_of, day_of_file_name};
use super::line::write_line;
use super::writer::Writer;
use super::*;

/// 2025-03-01T00:00:00Z in Unix milliseconds.
const MARCH_1: u64 = 1_740_787_200_000;
const DAY_MS: u64 = 86_400_000;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokun-access-{tag}-{}-{}",
        std::process::id(),
        tokun_providers::clock::unix_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn record(ts_ms: u64, path: &str) -> Record {
    Record {
        ts_ms,
        duration: Duration::from_micros(1500),
        ip: Some("203.0.113.7".parse().unwrap()),
        method: Method::POST,
        uri: path.parse().unwrap(),
        status: 200,
        bytes: 42,
        user_agent: Some(HeaderValue::from_static("curl/8.5 \"quoted\"")),
        request_id: Some(HeaderValue::from_static("AbC123")),
        kind: Kind::Http,
    }
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_line_is_one_json_object_with_every_field() {
    let mut out = Vec::new();
    write_line(&record(MARCH_1 + 500, "/v1/chat/completions"), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "{text}"
    );
    let line: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(line["ts"], "2025-03-01T00:00:00.500Z");
    assert_eq!(line["ip"], "203.0.113.7");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 42);
    assert_eq!(line["duration_ms"], 1.5);
    assert_eq!(line["user_agent"], "curl/8.5 \"quoted\"");
    assert_eq!(line["request_id"], "AbC123");
    assert_eq!(line["kind"], "http");
    assert_eq!(line.as_object().unwrap().len(), 10);
}

#[test]
fn the_query_keeps_only_tokuns_own_harmless_parameters() {
    let path = |uri: &str| loggable_path(&uri.parse::<Uri>().unwrap()).into_owned();
    assert_eq!(path("/v1/ws?ticket=wst_secret"), "/v1/ws");
    assert_eq!(
        path("/login/oidc/callback?code=c0de&state=st4te&error="),
        "/login/oidc/callback"
    );
    assert_eq!(
        path("/activity?from=2025-01-01&key=sk-x&model=gpt%204o&session_id=cs_1&before=9"),
        "/activity?from=2025-01-01&model=gpt%204o&before=9"
    );
    assert_eq!(
        path("/v1/realtime?model=m&ticket=t"),
        "/v1/realtime?model=m"
    );
    // An encoded name is not a known name; a bare name is kept as it came.
    assert_eq!(path("/v1/ws?tick%65t=s&api_key=k&model"), "/v1/ws?model");
    assert_eq!(path("/v1/models?"), "/v1/models");
    assert_eq!(path("/healthz"), "/healthz");
}

#[test]
fn the_client_is_the_peer_unless_a_trusted_proxy_names_another() {
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    let trusted = crate::config::Config::parse(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n",
        |_| None,
    )
    .unwrap()
    .server
    .trusted_proxies;
    let headers = |values: &[&str]| {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    };
    let forwarded = headers(&["198.51.100.1, 203.0.113.9, 10.0.0.3"]);
    // An untrusted peer's header is ignored.
    let from = |peer: &str, h: &HeaderMap| client_ip(Some(ip(peer)), h, &trusted);
    assert_eq!(from("192.0.2.1", &forwarded), Some(ip("192.0.2.1")));
    // From a trusted peer: right to left, past trusted hops, to the first other.
    assert_eq!(from("10.1.1.1", &forwarded), Some(ip("203.0.113.9")));
    assert_eq!(from("::1", &forwarded), Some(ip("203.0.113.9")));
    assert_eq!(from("::ffff:10.1.1.1", &forwarded), Some(ip("203.0.113.9")));
    // Several headers are one list; ports and brackets are read.
    let split = headers(&["198.51.100.1", "[2001:db8::5]:443, 10.0.0.3:80"]);
    assert_eq!(from("10.1.1.1", &split), Some(ip("2001:db8::5")));
    // Every hop trusted: the leftmost. Garbage: the last trusted hop.
    assert_eq!(
        from("10.1.1.1", &headers(&["10.9.9.9, 10.0.0.3"])),
        Some(ip("10.9.9.9"))
    );
    assert_eq!(
        from("10.1.1.1", &headers(&["203.0.113.9, unknown, 10.0.0.3"])),
        Some(ip("10.0.0.3"))
    );
    assert_eq!(from("10.1.1.1", &HeaderMap::new()), Some(ip("10.1.1.1")));
    assert_eq!(client_ip(None, &forwarded, &trusted), None);
    // No trusted proxies (the default): the header never counts.
    let nobody = crate::config::TrustedProxies::default();
    assert_eq!(
        client_ip(Some(ip("10.1.1.1")), &forwarded, &nobody),
        Some(ip("10.1.1.1"))
    );
}

#[test]
fn day_files_are_named_by_utc_date() {
    assert_eq!(day_file_name(day_of(MARCH_1)), "access-2025-03-01.log");
    assert_eq!(day_file_name(day_of(MARCH_1 - 1)), "access-2025-02-28.log");
    assert_eq!(
        day_of_file_name("access-2025-03-01.log"),
        Some(day_of(MARCH_1))
    );
    for other in [
        "access-2025-13-01.log",
        "access-2025-03-01.txt",
        "notes",
        "access-.log",
    ] {
        assert_eq!(day_of_file_name(other), None, "{other}");
    }
}

#[test]
fn the_writer_rotates_at_midnight_utc_and_never_back() {
    let dir = temp_dir("rotate");
    let mut writer = Writer::new(dir.clone());
    let before_midnight = MARCH_1 + DAY_MS - 10;
    writer.write(&record(before_midnight, "/one"));
    // Began before midnight, ended after it (1.5 ms later): the new day.
    writer.write(&record(MARCH_1 + DAY_MS - 1, "/two"));
    // Ended before midnight but written after the rotation: stays in the new day.
    writer.write(&record(before_midnight, "/three"));
    writer.flush();
    let first = lines_of(&dir.join("access-2025-03-01.log"));
    let second = lines_of(&dir.join("access-2025-03-02.log"));
    let paths = |lines: &[Value]| lines.iter().map(|l| l["path"].clone()).collect::<Vec<_>>();
    assert_eq!(paths(&first), ["/one"]);
    assert_eq!(paths(&second), ["/two", "/three"]);
    assert_eq!(
        second[0]["ts"], "2025-03-01T23:59:59.999Z",
        "ts is the arrival"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn expired_day_files_go_and_everything_else_stays() {
    let dir = temp_dir("expire");
    let now = MARCH_1 + DAY_MS * 40 + 5;
    for days_ago in 0..=35 {
        let name = day_file_name(day_of(now) - days_ago);
        std::fs::write(dir.join(name), "{}\n").unwrap();
    }
    std::fs::write(dir.join("access-notes.log"), "").unwrap();
    std::fs::write(dir.join("README"), "").unwrap();
    assert_eq!(remove_expired(&dir, 30, now).unwrap(), 5);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left.len(), 31 + 2);
    // 30 days ago is kept (its lines are at most 31 days old); 31 is not.
    assert!(left.contains(&day_file_name(day_of(now) - 30)));
    assert!(!left.contains(&day_file_name(day_of(now) - 31)));
    assert_eq!(remove_expired(&dir, 30, now).unwrap(), 0, "idempotent");
    // keep_days 0 keeps only today's file.
    assert_eq!(remove_expired(&dir, 0, now).unwrap(), 30);
    assert!(dir.join(day_file_name(day_of(now))).exists());
    assert_eq!(remove_expired(&dir.join("missing"), 30, now).unwrap(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_writer_thread_expires_at_start_flushes_on_request_and_stops() {
    let data = temp_dir("thread");
    let access = dir(&data);
    std::fs::create_dir_all(&access).unwrap();
    let old = access.join("access-2001-01-01.log");
    std::fs::write(&old, "{}\n").unwrap();
    let log = AccessLog::start(&data, TrustedProxies::default(), KEEP_DAYS).unwrap();
    let now = tokun_providers::clock::unix_ms();
    log.send(record(now, "/first"));
    log.flush();
    // Expired at start, before the flush was answered.
    assert!(!old.exists());
    let today = access.join(day_file_name(day_of(now)));
    assert_eq!(lines_of(&today).len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&today).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "client addresses are personal data");
    }
    log.send(record(now, "/second"));
    log.stop();
    assert_eq!(lines_of(&today).len(), 2, "stop writes what was sent");
    log.send(record(now, "/late"));
    log.flush();
    assert_eq!(lines_of(&today).len(), 2, "after stop, lines are discarded");
    std::fs::remove_dir_all(data).unwrap();
}

#[test]
fn a_full_channel_drops_lines_instead_of_waiting() {
    // A writer that never reads, behind a channel with room for one line.
    let (lines, queued) = crossbeam_channel::bounded(1);
    let (control, _orders) = crossbeam_channel::unbounded();
    let log = AccessLog {
        inner: Arc::new(Inner {
            lines,
            control,
            trusted: TrustedProxies::default(),
            thread: Mutex::new(None),
        }),
    };
    for n in 0..3 {
        log.send(record(MARCH_1, &format!("/{n}")));
    }
    let kept: Vec<String> = queued.try_iter().map(|r| r.uri.path().to_owned()).collect();
    assert_eq!(kept, ["/0"]);
}
