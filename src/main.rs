//! The `tokun` binary: parses the command line and runs a subcommand.

use anyhow::Context;
use clap::Parser;
use tokun::cli::{Cli, Command, ServeArgs};
use tokun::commands::{self, load_config};
use tokun::server::RunningServer;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Accounts(command) => commands::accounts(command).await,
            Command::Keys(command) => commands::keys(command).await,
            Command::Ledger(command) => commands::ledger(command).await,
            Command::Policy(command) => tokun::policy::command::run(command).await,
            Command::Snapshot { store } => commands::snapshot(&store).await,
            Command::Restore {
                from_postgres,
                data,
                schema,
            } => commands::restore(&from_postgres, &data, &schema).await,
            Command::Top {
                url,
                admin_token,
                interval,
                once,
                store,
            } => {
                let admin_token = match admin_token {
                    Some(token) => token,
                    None => {
                        let dir = load_config(&store)?.server.data_dir;
                        std::fs::read_to_string(dir.join("admin_token"))
                            .context("no --admin-token and no DATA/admin_token")?
                            .trim()
                            .to_owned()
                    }
                };
                let args = tokun::top::TopArgs {
                    url,
                    admin_token,
                    interval: std::time::Duration::from_secs(interval.max(1)),
                    once,
                };
                tokun::top::run(args).await
            }
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args.store)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    tokun::telemetry::init(&config.log);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let first_model = config
        .models
        .first()
        .map(|m| m.id.clone())
        .unwrap_or_default();
    let server = RunningServer::start(config, listener).await?;
    announce(&server, &first_model);
    shutdown_signal().await;
    tracing::info!("shutting down: draining streams");
    server.shutdown().await
}

fn announce(server: &RunningServer, model: &str) {
    let addr = server.addr();
    let first = server.first_start();
    if let Some(token) = &first.admin_token {
        eprintln!("Admin token (shown once; also in DATA/admin_token): {token}");
    }
    let key = match &first.demo_key {
        Some(key) => {
            eprintln!(
                "Demo account demo@tokun.local created with its API key (shown once):\n  {key}\n"
            );
            key.as_str()
        }
        None => "$TOKUN_API_KEY",
    };
    if let Some(redirect) = server.redirect_addr() {
        eprintln!("plain HTTP on http://{redirect} is redirected to https (308)");
    }
    if let Some(operator) = server.operator_addr() {
        eprintln!(
            "operator endpoints (/metrics, /admin/actors, /admin/providers) on http://{operator}"
        );
    }
    let scheme = if server.serves_tls() { "https" } else { "http" };
    eprintln!(
        "tokun listening on {scheme}://{addr}\n\nTry a streamed completion:\n  curl -N {scheme}://{addr}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{model}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello tokun\"}}]}}'\n"
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
