//! nginx as a pure pass-through: the floor of any gateway that parses
//! nothing (Debian's `nginx-light`, one worker, `proxy_buffering off`,
//! keep-alive to the mock). Started like a child tokun (`taskset -c 1` with
//! `--pin`); installed with apt when missing, skipped when that fails.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the bench: it shares main's imports"
)]

use super::*;

/// Where Debian's package puts the binary.
const NGINX: &str = "/usr/sbin/nginx";

impl Gateway {
    /// nginx in front of the mock, or `None` (said on stdout) when it cannot run here.
    pub(crate) fn start_nginx(env: &Env<'_>) -> anyhow::Result<Option<Gateway>> {
        if !Path::new(NGINX).exists() && !install_nginx() {
            println!(
                "(nginx is not installed and `apt-get install nginx-light` failed: no nginx floor in this run)"
            );
            return Ok(None);
        }
        let parent = env.args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let n = GATEWAYS.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("tokun-load-nginx-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        let port = free_port()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(env.mock, port, &dir))?;
        let mut command = if env.args.pin {
            let mut command = Command::new("taskset");
            command.args(["-c", "1", NGINX]);
            command
        } else {
            Command::new(NGINX)
        };
        let child = command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Gateway {
            billing: Billing::Off,
            addr,
            key: None,
            dir,
            kind: GatewayKind::Nginx(child),
        }))
    }
}

fn install_nginx() -> bool {
    println!("(installing nginx-light for the nginx floor)");
    let quiet = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    (quiet(&["install", "-y", "nginx-light"])
        || (quiet(&["update"]) && quiet(&["install", "-y", "nginx-light"])))
        && Path::new(NGINX).exists()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One worker (one core, as tokun gets), no buffering (each event goes out
/// as it comes), HTTP/1.1 keep-alive both ways, no access log.
fn nginx_conf(mock: SocketAddr, port: u16, dir: &Path) -> String {
    let pid = dir.join("nginx.pid");
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log /dev/null crit;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    upstream mock {{ server {mock}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            tcp_nodelay on;
        }}
    }}
}}
"#,
        pid = pid.display(),
        dir = dir.display(),
    )
}
