//! `tokun top`: a terminal view of a running tokun — actor kinds with their
//! mailbox depths and message rates, and request rates — refreshed from
//! `/admin/actors` and `/metrics`.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

pub struct TopArgs {
    pub url: String,
    pub admin_token: String,
    pub interval: Duration,
    /// Print one screen and exit.
    pub once: bool,
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = args.url.trim_end_matches('/');
    let mut previous: Option<(Instant, Snapshot)> = None;
    loop {
        let snapshot = Snapshot::fetch(&client, base, &args.admin_token).await?;
        let screen = render(&snapshot, previous.as_ref());
        let mut out = std::io::stdout().lock();
        if !args.once {
            // Clear the screen and go home.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        out.write_all(screen.as_bytes())?;
        out.flush()?;
        if args.once {
            return Ok(());
        }
        previous = Some((Instant::now(), snapshot));
        tokio::time::sleep(args.interval).await;
    }
}

struct Snapshot {
    actors: Value,
    /// Counter values by series (name + labels) from the scrape.
    counters: HashMap<String, f64>,
}

impl Snapshot {
    async fn fetch(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<Snapshot> {
        let actors = client
            .get(format!("{base}/admin/actors?top=10"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?
            .error_for_status()
            .context("the admin API refused (check the admin token)")?
            .json()
            .await?;
        let scrape = client
            .get(format!("{base}/metrics"))
            .bearer_auth(token)
            .send()
            .await?
            .text()
            .await?;
        let counters = scrape
            .lines()
            .filter(|l| {
                l.starts_with("tokun_requests_total") || l.starts_with("tokun_actor_messages_total")
            })
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            })
            .collect();
        Ok(Snapshot { actors, counters })
    }

    fn sum(&self, prefix: &str, label: &str) -> f64 {
        self.counters
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.contains(label))
            .map(|(_, v)| v)
            .sum()
    }
}

fn render(now: &Snapshot, previous: Option<&(Instant, Snapshot)>) -> String {
    let rate = |prefix: &str, label: &str| -> String {
        match previous {
            Some((at, before)) => {
                let secs = at.elapsed().as_secs_f64().max(0.001);
                format!(
                    "{:.1}/s",
                    (now.sum(prefix, label) - before.sum(prefix, label)).max(0.0) / secs
                )
            }
            None => "-".into(),
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "tokun top — {} live actors\n\n",
        now.actors["total"]
    ));
    out.push_str(&format!(
        "{:<20} {:>8} {:>10} {:>10} {:>10} {:>12}\n",
        "KIND", "ALIVE", "STARTED", "RESTARTS", "MAILBOX", "MESSAGES"
    ));
    for kind in now.actors["kinds"].as_array().into_iter().flatten() {
        let name = kind["kind"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "{:<20} {:>8} {:>10} {:>10} {:>10} {:>12}\n",
            name,
            kind["alive"],
            kind["started"],
            kind["restarted"],
            kind["mailbox_depth"],
            rate("tokun_actor_messages_total", &format!("kind=\"{name}\"")),
        ));
    }
    out.push_str(&format!(
        "\nrequests {}   200s {}   4xx/5xx {}\n\nBUSIEST\n",
        rate("tokun_requests_total", ""),
        rate("tokun_requests_total", "status=\"200\""),
        rate("tokun_requests_total", "status=\"4").to_string()
            + " / "
            + &rate("tokun_requests_total", "status=\"5"),
    ));
    for actor in now.actors["busiest"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:<14} mailbox {:>5}  messages {:>8}  last {:>8.1} µs\n",
            actor["kind"].as_str().unwrap_or("?"),
            actor["name"]
                .as_str()
                .or(actor["id"].as_str())
                .unwrap_or("-"),
            actor["mailbox_depth"],
            actor["messages"],
            actor["last_handler_us"].as_f64().unwrap_or(0.0),
        ));
    }
    out
}
