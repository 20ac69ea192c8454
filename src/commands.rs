//! The operator subcommands that work on the store directly: `accounts`,
//! `keys`, `ledger`, and the Postgres `snapshot` and `restore`. They start the same ledger and account actors as the
//! server (so every balance change takes the same path) and stop them again.
//! sled allows one process per store: with a server running, use the admin API.

use std::io::Write;

use anyhow::{Context, bail};
use tokun_storage::{ACTOR_CLI, AccountId, EntryKind, KeyId, Nanos};

use crate::cli::{AccountsCommand, KeysCommand, LedgerCommand, StoreArgs};
use crate::config::{Config, Secret};
use crate::services::{KeyOptions, Services, StartMode};

pub fn load_config(store: &StoreArgs) -> anyhow::Result<Config> {
    let mut config = match &store.config {
        Some(path) => {
            Config::load(path).with_context(|| format!("invalid config {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(data) = &store.data {
        config.server.data_dir.clone_from(data);
    }
    Ok(config)
}

async fn open(store: &StoreArgs) -> anyhow::Result<Services> {
    open_as(store, StartMode::Command).await
}

async fn open_as(store: &StoreArgs, mode: StartMode) -> anyhow::Result<Services> {
    let config = load_config(store)?;
    let (services, _) = Services::start(&config, mode).await?;
    Ok(services)
}

fn out(line: impl std::fmt::Display) -> anyhow::Result<()> {
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}

fn usd(value: &str) -> anyhow::Result<Nanos> {
    Nanos::parse_usd(value).map_err(|e| anyhow::anyhow!("invalid USD amount `{value}`: {e}"))
}

pub async fn accounts(command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::Create {
            email,
            credit_usd,
            store,
        } => {
            let credit = credit_usd
                .as_deref()
                .map(usd)
                .transpose()?
                .unwrap_or(Nanos::ZERO);
            if credit.is_negative() {
                bail!("--credit-usd must not be negative");
            }
            let services = open(&store).await?;
            if services.store.account_by_email(&email)?.is_some() {
                services.stop().await;
                bail!("an account with email {email} exists");
            }
            let result = services
                .create_account(&email, credit, "initial credit")
                .await;
            services.stop().await;
            let (record, key) = result?;
            out(format!(
                "{}\t{}\tbalance ${credit}\napi key (shown once): {key}",
                record.id, record.email
            ))
        }
        AccountsCommand::List {
            search,
            limit,
            store,
        } => {
            let services = open(&store).await?;
            let accounts = services.store.accounts(search.as_deref(), limit);
            let mut lines = Vec::new();
            for account in accounts? {
                let books = services.store.books(account.id)?;
                let state = if account.disabled {
                    "disabled"
                } else {
                    "active"
                };
                lines.push(format!(
                    "{}\t{}\t{state}\tbalance ${}\theld ${}",
                    account.id, account.email, books.balance, books.held
                ));
            }
            services.stop().await;
            for line in lines {
                out(line)?;
            }
            Ok(())
        }
        AccountsCommand::Credit {
            account,
            amount_usd,
            reason,
            store,
        } => {
            let id: AccountId = account
                .parse()
                .map_err(|_| anyhow::anyhow!("`{account}` is not an account id like acct_1"))?;
            let amount = usd(&amount_usd)?;
            if amount.get() == 0 || reason.trim().is_empty() {
                bail!("the amount must not be zero and a reason is required");
            }
            let services = open(&store).await?;
            if services.store.account(id)?.is_none() {
                services.stop().await;
                bail!("no account {id}");
            }
            let result = services
                .accounts
                .transfer(id, EntryKind::Adjustment, amount, reason.trim())
                .await;
            if let Ok(balance) = &result {
                let (action, change) = crate::audit::adjustment(*balance, amount);
                let store = &services.store;
                crate::audit::record(store, ACTOR_CLI, action, id, change, reason.trim()).await;
            }
            services.stop().await;
            let balance = result.map_err(|e| anyhow::anyhow!("{e}"))?;
            out(format!("{id}\tbalance ${balance}"))
        }
        AccountsCommand::SetEmail {
            account,
            email,
            reason,
            store,
        } => {
            let id: AccountId = account
                .parse()
                .map_err(|_| anyhow::anyhow!("`{account}` is not an account id like acct_1"))?;
            let services = open(&store).await?;
            let result =
                crate::corrections::change_email(&services, id, &email, Some(&reason), ACTOR_CLI)
                    .await;
            services.stop().await;
            let record = result?;
            out(format!("{}\t{}", record.id, record.email))
        }
    }
}

pub async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            account,
            name,
            store,
        } => {
            let id: AccountId = account
                .parse()
                .map_err(|_| anyhow::anyhow!("`{account}` is not an account id like acct_1"))?;
            let services = open(&store).await?;
            if services.store.account(id)?.is_none() {
                services.stop().await;
                bail!("no account {id}");
            }
            let result = services
                .create_key(
                    id,
                    KeyOptions {
                        name,
                        ..KeyOptions::default()
                    },
                )
                .await;
            services.stop().await;
            let (record, secret) = result?;
            out(format!(
                "{}\t{}\napi key (shown once): {secret}",
                record.id, record.name
            ))
        }
        KeysCommand::Revoke { key, store } => {
            let id: KeyId = key
                .parse()
                .map_err(|_| anyhow::anyhow!("`{key}` is not a key id like key_3"))?;
            let services = open(&store).await?;
            let before = services.store.key(id)?;
            let result = services.revoke_key(id).await;
            if let (Some(before), Ok(Some((_, after)))) = (&before, &result) {
                if let Some(change) = crate::audit::revocation(before, after) {
                    let store = &services.store;
                    crate::audit::record(store, ACTOR_CLI, "key.revoke", id, change, "").await;
                }
            }
            services.stop().await;
            match result? {
                Some(_) => out(format!("{id}\trevoked")),
                None => bail!("no key {id}"),
            }
        }
    }
}

pub async fn ledger(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Verify { store } => {
            let services = open_as(&store, StartMode::Inspect).await?;
            let report = services.store.verify();
            services.stop().await;
            let report = report?;
            out(format!(
                "entries {}\taccounts {}\topen holds {}\tproblems {}",
                report.entries,
                report.accounts,
                report.open_holds,
                report.problems.len()
            ))?;
            if report.pruned_through > 0 {
                out(format!(
                    "entries through seq {} pruned by retention: replayed from the ledger checkpoint",
                    report.pruned_through
                ))?;
            }
            for problem in &report.problems {
                out(format!("problem: {problem}"))?;
            }
            if !report.is_clean() {
                bail!("the ledger is not consistent");
            }
            out("ledger verified: clean")
        }
        LedgerCommand::Export { out: path, store } => {
            let services = open_as(&store, StartMode::Inspect).await?;
            let result = match &path {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let mut writer = std::io::BufWriter::new(file);
                    services.store.export_jsonl(&mut writer).map(|_| ())
                }
                None => services
                    .store
                    .export_jsonl(&mut std::io::stdout().lock())
                    .map(|_| ()),
            };
            services.stop().await;
            result.map_err(Into::into)
        }
    }
}

/// `tokun snapshot`: one snapshot to the configured Postgres.
pub async fn snapshot(store: &StoreArgs) -> anyhow::Result<()> {
    let config = load_config(store)?;
    let Some(postgres) = &config.postgres else {
        bail!("the config has no [postgres] section: there is nowhere to snapshot to");
    };
    let target = postgres.target()?;
    let services = open(store).await?;
    let result = async {
        let mut conn = target.connect("tokun-snapshot-cli").await?;
        tokun_storage::postgres::snapshot(&services.store, &mut conn).await
    }
    .await;
    services.stop().await;
    let report = result?;
    out(format!(
        "snapshot to {target}: {} new entries (seq {} to {}), {} balances, {} accounts, {} keys, \
         {} open holds, {} new requests, {} payments in {:.2}s",
        report.entries,
        report.from_seq,
        report.last_seq,
        report.balances,
        report.accounts,
        report.api_keys,
        report.open_holds,
        report.requests,
        report.payments,
        report.duration.as_secs_f64()
    ))
}

/// `tokun restore --from-postgres URL --data DIR`: a new store from the
/// latest snapshot. Refuses a data dir that is not empty.
pub async fn restore(url: &Secret, data: &std::path::Path, schema: &str) -> anyhow::Result<()> {
    if std::fs::read_dir(data).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} is not empty: restore only into a new or empty data dir",
            data.display()
        );
    }
    let target = tokun_storage::postgres::PgTarget::parse(url.expose(), schema)?;
    let mut conn = target.connect_existing("tokun-restore").await?;
    let report = tokun_storage::postgres::restore(&mut conn, &data.join("ledger")).await?;
    out(format!(
        "restored {} from {target}: {} entries, {} accounts, {} keys, {} open holds \
         (settled as recovered at the next start), {} requests, {} payments; ledger verified clean\n\
         start it with: tokun serve --data {}",
        data.display(),
        report.last_seq,
        report.accounts,
        report.api_keys,
        report.open_holds,
        report.requests,
        report.payments,
        data.display()
    ))
}
