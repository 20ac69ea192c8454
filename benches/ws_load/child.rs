//! The `tokun serve` child under test, and what `/proc` says about it.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

/// Starts `tokun serve` on 127.0.0.1:0; returns it, its address, the demo
/// key (`None` with billing off) and its operator listener's address.
pub(crate) fn spawn_tokun(
    args: &Args,
    dir: &std::path::Path,
) -> anyhow::Result<(Child, SocketAddr, Option<String>, SocketAddr)> {
    let data_dir = toml::Value::String(dir.display().to_string());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = {data_dir}
admin_token = "{ADMIN_TOKEN}"
shutdown_grace_secs = 2

[log]
level = "warn"

[billing]
enabled = {billing}
demo_credit_usd = 1000000.0

[[providers]]
name = "echo-slow"
kind = "echo"
delay_ms = {delay}
reply_tokens = {tokens}

[[models]]
id = "bench-slow"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "echo-slow" }}]

[websocket]
max_completions = {per_socket}
max_messages_per_sec = 10000
"#,
        delay = args.token_delay_ms,
        tokens = args.tokens,
        per_socket = args.per_socket.max(1),
        billing = args.billing == "on",
    );
    let path = dir.join("ws-load.toml");
    std::fs::write(&path, config)?;
    let bin = args
        .tokun_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokun")));
    let mut command = if args.pin {
        let mut command = Command::new("taskset");
        command.args(["-c", "1"]).arg(&bin);
        command
    } else {
        Command::new(&bin)
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child.stderr.take().context("child stderr")?;
    let (found, announced) = std::sync::mpsc::channel();
    // Reads the announcement, then keeps draining stderr (a full pipe would block tokun).
    std::thread::spawn(move || {
        let (mut key, mut operator) = (None, None);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("sk-tokun-") {
                key = line[at..].split_whitespace().next().map(str::to_owned);
            }
            if line.starts_with("operator endpoints") {
                operator = line
                    .split("on http://")
                    .nth(1)
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            }
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let addr = addr.trim().parse::<SocketAddr>().ok();
                let _ = found.send((addr, key.clone(), operator));
            }
            if line.contains("WARN") || line.contains("ERROR") {
                println!("tokun: {line}");
            }
        }
    });
    match announced.recv_timeout(Duration::from_secs(60)) {
        Ok((Some(addr), key, Some(operator))) if args.billing == "off" => {
            drop(key);
            Ok((child, addr, None, operator))
        }
        Ok((Some(addr), Some(key), Some(operator))) => Ok((child, addr, Some(key), operator)),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tokun did not announce its address and demo key")
        }
    }
}

/// `VmRSS` or `VmHWM` of a process, in KiB.
pub(crate) fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process (assumes 100 clock ticks a second).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
