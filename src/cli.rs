//! The command line: `tokun serve` and the operator subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tokun", version, about = "A self-hosted, metered LLM gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
}

/// Where the config and data are; shared by every subcommand that reads the store.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// TOML config file; without it tokun runs the built-in `echo` provider.
    #[arg(long, env = "TOKUN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `server.data_dir`).
    #[arg(long, env = "TOKUN_DATA")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, env = "TOKUN_LISTEN")]
    pub listen: Option<SocketAddr>,
}
