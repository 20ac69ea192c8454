//! The command line: `tokun serve` and the operator subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Secret;

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
    /// Manage accounts (the store must not be in use by a running server).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check or export the ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Announce policy changes (the store must not be in use by a running
    /// server; with one running, use POST /admin/policy).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Copy the store to the configured Postgres once and exit (with a
    /// server running, use POST /admin/snapshots instead).
    Snapshot {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Rebuild a store from the latest Postgres snapshot, into an empty data dir.
    Restore {
        /// postgres://user[:password]@host[:port]/db (never printed).
        #[arg(long = "from-postgres", env = "TOKUN_RESTORE_PG_URL", hide_env_values = true, value_parser = secret)]
        from_postgres: Secret,
        /// The data directory to create; it must be missing or empty.
        #[arg(long, env = "TOKUN_DATA")]
        data: PathBuf,
        /// The schema the snapshots were written to (`postgres.schema`).
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// Watch a running tokun's actors and request rates.
    Top {
        /// The tokun to watch.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The admin token (default: DATA/admin_token).
        #[arg(long, env = "TOKUN_ADMIN_TOKEN")]
        admin_token: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Print one screen and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account and its first API key (printed once).
    Create {
        email: String,
        /// Starting credit in USD, e.g. 10 or 2.50.
        #[arg(long)]
        credit_usd: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List accounts with their balances.
    List {
        /// Part of an email, or an account id.
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Credit (or, with a negative amount, debit) an account with a reason.
    Credit {
        /// The account id, like acct_1.
        account: String,
        #[arg(long, allow_hyphen_values = true)]
        amount_usd: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Correct an account's email (audited, with a reason).
    SetEmail {
        /// The account id, like acct_1.
        account: String,
        email: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Announce a policy change: a dashboard banner for everyone and one
    /// email per account (when SMTP is configured).
    Announce {
        /// The day it takes effect, YYYY-MM-DD, at least 14 days ahead.
        #[arg(long)]
        effective: String,
        /// What changes, in a sentence or two.
        #[arg(long)]
        summary: String,
        /// An https:// link to the full text.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for an account (printed once).
    Create {
        account: String,
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key for good.
    Revoke {
        /// The key id, like key_3.
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute every balance from the entries and check conservation.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write every ledger entry as one JSON line.
    Export {
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
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

/// Keeps a URL with a password out of `Debug` output.
fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}
