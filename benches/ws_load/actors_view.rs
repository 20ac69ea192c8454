//! Timing `GET /admin/actors` while the completions run.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

/// What timing `GET /admin/actors` during the window saw.
pub(crate) struct ActorsView {
    /// Request sent → whole body read, in µs.
    pub(crate) latencies: Vec<u64>,
    pub(crate) streams_min: u64,
    pub(crate) streams_max: u64,
    pub(crate) bytes_min: usize,
    pub(crate) bytes_max: usize,
}

/// Times `GET /admin/actors` every `every` until `until`, on its own
/// keep-alive connection, and reads the live stream actor count from each answer.
pub(crate) async fn poll_actors(
    addr: SocketAddr,
    every: Duration,
    until: Instant,
) -> anyhow::Result<ActorsView> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/admin/actors");
    let mut view = ActorsView {
        latencies: Vec::new(),
        streams_min: u64::MAX,
        streams_max: 0,
        bytes_min: usize::MAX,
        bytes_max: 0,
    };
    let mut tick = tokio::time::interval(every);
    while Instant::now() < until {
        tick.tick().await;
        let sent = Instant::now();
        let body = client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        view.latencies.push(sent.elapsed().as_micros() as u64);
        let parsed: serde_json::Value = serde_json::from_slice(&body)?;
        let streams = parsed["kinds"]
            .as_array()
            .and_then(|kinds| kinds.iter().find(|k| k["kind"] == "stream"))
            .and_then(|k| k["alive"].as_u64())
            .context("a stream kind in /admin/actors")?;
        view.streams_min = view.streams_min.min(streams);
        view.streams_max = view.streams_max.max(streams);
        view.bytes_min = view.bytes_min.min(body.len());
        view.bytes_max = view.bytes_max.max(body.len());
    }
    if view.latencies.is_empty() {
        bail!("no /admin/actors poll fit in the window");
    }
    Ok(view)
}
