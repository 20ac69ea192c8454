//! tokun under test: in this process (`RunningServer`) or as a `tokun serve` child.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

pub(crate) struct Gateway {
    pub(crate) billing: Billing,
    pub(crate) addr: SocketAddr,
    pub(crate) key: Option<String>,
    pub(crate) dir: PathBuf,
    pub(crate) kind: GatewayKind,
}

pub(crate) enum GatewayKind {
    InProc(Box<RunningServer>),
    /// The bare proxy of `bare.rs`, not tokun.
    Bare(tokio::task::JoinHandle<()>),
    Child {
        child: Child,
        stderr: Arc<Mutex<VecDeque<String>>>,
    },
    /// nginx as a pass-through (`nginx.rs`), not tokun.
    Nginx(Child),
}

pub(crate) fn gateway_toml(
    mock: SocketAddr,
    billing: Billing,
    metrics: bool,
    dir: &Path,
) -> String {
    let dir = toml::Value::String(dir.display().to_string());
    let enabled = billing == Billing::On;
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = {dir}
shutdown_grace_secs = 5

[log]
level = "warn"

[metrics]
enabled = {metrics}
public = true

[billing]
enabled = {enabled}
demo_credit_usd = 1000000.0

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-mock"
first_byte_timeout_ms = 30000
idle_timeout_ms = 30000

[[providers]]
name = "mock-slow"
kind = "openai"
base_url = "http://{mock}/slow/v1"
api_key = "sk-mock"
first_byte_timeout_ms = 30000
idle_timeout_ms = 30000

[[models]]
id = "bench"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "mock", model = "upstream-model" }}]

[[models]]
id = "bench-slow"
price = {{ input = 1.0, output = 2.0 }}
routes = [{{ provider = "mock-slow", model = "upstream-model" }}]
"#
    )
}

pub(crate) static GATEWAYS: AtomicU64 = AtomicU64::new(0);

impl Gateway {
    pub(crate) fn start(env: &Env<'_>, mode: Mode, billing: Billing) -> anyhow::Result<Gateway> {
        let parent = env.args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let n = GATEWAYS.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("tokun-load-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let toml = gateway_toml(env.mock, billing, env.args.metrics == "on", &dir);
        match mode {
            Mode::Inproc => {
                let config = Config::parse(&toml, |_| None).context("bench config")?;
                let server = env.gateway_rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    RunningServer::start(config, listener).await
                })?;
                let key = server.first_start().demo_key.clone();
                Ok(Gateway {
                    billing,
                    addr: server.addr(),
                    key,
                    dir,
                    kind: GatewayKind::InProc(Box::new(server)),
                })
            }
            Mode::Child => Self::spawn_child(env, billing, dir, &toml),
        }
    }

    /// The bare hyper proxy on the in-process gateway's runtime.
    pub(crate) fn start_bare(env: &Env<'_>) -> anyhow::Result<Gateway> {
        let (addr, task) = env.gateway_rt.block_on(start_bare(env.mock))?;
        Ok(Gateway {
            billing: Billing::Off,
            addr,
            key: None,
            dir: PathBuf::new(),
            kind: GatewayKind::Bare(task),
        })
    }

    pub(crate) fn spawn_child(
        env: &Env<'_>,
        billing: Billing,
        dir: PathBuf,
        toml: &str,
    ) -> anyhow::Result<Gateway> {
        let config_path = dir.join("bench.toml");
        std::fs::write(&config_path, toml)?;
        let bin = env
            .args
            .tokun_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokun")));
        let mut command = if env.args.pin {
            let mut command = Command::new("taskset");
            command.args(["-c", "1"]).arg(&bin);
            command
        } else {
            Command::new(&bin)
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (found, ready) = std::sync::mpsc::channel::<(Option<SocketAddr>, Option<String>)>();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let lines = tail.clone();
        // Reads the announcement, then keeps draining stderr (a full pipe would block tokun).
        std::thread::spawn(move || {
            let mut key = None;
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(start) = line.find("sk-tokun-") {
                    key = line[start..].split_whitespace().next().map(str::to_owned);
                }
                if !sent && line.contains("listening on http://") {
                    let addr = line
                        .rsplit("http://")
                        .next()
                        .and_then(|a| a.trim().parse().ok());
                    let _ = found.send((addr, key.clone()));
                    sent = true;
                }
                let mut tail = lines.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            if !sent {
                let _ = found.send((None, None));
            }
        });
        let announced = ready.recv_timeout(Duration::from_secs(60));
        let Ok((Some(addr), key)) = announced else {
            let _ = child.kill();
            let _ = child.wait();
            let tail: Vec<String> = tail
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            bail!(
                "the tokun child did not announce its address; stderr:\n{}",
                tail.join("\n")
            );
        };
        Ok(Gateway {
            billing,
            addr,
            key,
            dir,
            kind: GatewayKind::Child {
                child,
                stderr: tail,
            },
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.kind {
            GatewayKind::InProc(_) | GatewayKind::Bare(_) => None,
            GatewayKind::Child { child, .. } | GatewayKind::Nginx(child) => Some(child.id()),
        }
    }

    pub(crate) fn label(&self) -> String {
        let billing = match self.billing {
            Billing::Off => "OFF",
            Billing::On => "ON",
        };
        let kind = match self.kind {
            GatewayKind::Bare(_) => return "bare hyper proxy".into(),
            GatewayKind::Nginx(_) => return "nginx pass-through".into(),
            GatewayKind::InProc(_) => "inproc",
            GatewayKind::Child { .. } => "child",
        };
        format!("tokun {kind} billing {billing}")
    }

    pub(crate) fn target(&self, path: &'static str) -> Target {
        let auth = match (self.billing, &self.key) {
            (Billing::On, Some(key)) => HeaderValue::from_str(&format!("Bearer {key}")).ok(),
            _ => None,
        };
        Target::new(self.addr, path, auth)
    }

    pub(crate) fn stop(self, env: &Env<'_>) {
        match self.kind {
            GatewayKind::InProc(server) => {
                if let Err(error) = env.gateway_rt.block_on(server.shutdown()) {
                    println!("(gateway shutdown: {error})");
                }
            }
            GatewayKind::Bare(task) => {
                task.abort();
                return;
            }
            GatewayKind::Nginx(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            GatewayKind::Child { mut child, stderr } => {
                // SIGTERM the child we started (by its pid), then wait a bounded time.
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let tail = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                let warnings = tail
                    .iter()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .count();
                if warnings > 0 {
                    println!(
                        "(the tokun child logged {warnings} warning/error lines; last: {:?})",
                        tail.back()
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
