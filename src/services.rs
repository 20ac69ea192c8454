//! The long-lived parts behind the API, started in order and stopped in
//! reverse: the sled store, the ledger actor (with its writer thread), the
//! account actors' supervisor, and (with `[postgres]`) the snapshot actor,
//! which takes a final snapshot at stop before the ledger stops. On start it
//! settles holds left open by a crash (`recovered`), and on a fresh data dir
//! it creates the admin token and the demo account. Used by `tokun serve`
//! and by the store-touching subcommands.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokun_actors::{AccountsHandle, LedgerHandle, SnapshotHandle};
use tokun_storage::{
    AccountId, AccountRecord, EntryKind, KeyId, KeyRecord, LimitReset, Nanos, Store, StoreOptions,
    WriteOp, WriterConfig, hash_secret,
};

use crate::auth::new_key_secret;
use crate::config::Config;

/// How long shutdown waits for the final Postgres snapshot.
const FINAL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an account actor stays alive without traffic.
const ACCOUNT_IDLE: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub ledger: LedgerHandle,
    pub accounts: AccountsHandle,
    /// SHA-256 of the admin token.
    pub admin_token_hash: [u8; 32],
    /// Postgres snapshots (`tokun serve` with `[postgres]` configured).
    pub snapshots: Option<SnapshotHandle>,
}

/// What a first start created and must print once.
#[derive(Debug, Default)]
pub struct FirstStart {
    pub admin_token: Option<String>,
    pub demo_key: Option<String>,
    pub recovered_holds: usize,
}

/// Why the services start: the server creates the demo account on a fresh
/// data dir; a one-off command does not; a command that only reads
/// (`ledger verify`, `ledger export`) leaves holds a crash left open as they
/// are (the next `serve` recovers them), so reading never writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    Serve,
    Command,
    Inspect,
}

impl Services {
    pub async fn start(config: &Config, mode: StartMode) -> anyhow::Result<(Services, FirstStart)> {
        if mode == StartMode::Serve {
            // Load the tokenizer now, not on the first request.
            tokio::task::spawn_blocking(tokun_providers::tokens::warm_up).await?;
        }
        let dir = &config.server.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let options = StoreOptions {
            cache_capacity_bytes: config.ledger.cache_bytes,
        };
        let store = Store::open_with(dir.join("ledger"), options).with_context(|| {
            format!(
                "cannot open the store in {} (is another tokun using it?)",
                dir.display()
            )
        })?;
        let fresh = store.last_seq()? == 0 && store.accounts(None, 1)?.is_empty();
        let writer = WriterConfig {
            max_batch: config.ledger.max_batch,
            max_batch_delay: config.ledger.max_batch_delay,
            ..WriterConfig::default()
        };
        let ledger =
            LedgerHandle::start_with(store.clone(), writer, config.ledger.max_unflushed).await?;
        let accounts = AccountsHandle::start(store.clone(), ledger.clone(), ACCOUNT_IDLE).await?;
        let mut first = FirstStart::default();
        let admin_token_hash = match &config.server.admin_token {
            Some(token) => Sha256::digest(token.expose().as_bytes()).into(),
            None if mode == StartMode::Serve => admin_token_from_file(dir, &mut first)?,
            None => [0; 32],
        };
        let mut services = Services {
            store,
            ledger,
            accounts,
            admin_token_hash,
            snapshots: None,
        };
        if mode != StartMode::Inspect {
            first.recovered_holds = services.recover_holds().await?;
        }
        if mode == StartMode::Serve && fresh && config.billing.demo_credit.get() > 0 {
            let (_, key) = services
                .create_account(
                    "demo@tokun.local",
                    config.billing.demo_credit,
                    "demo credit",
                )
                .await?;
            first.demo_key = Some(key);
        }
        if mode == StartMode::Serve {
            services.snapshots = start_snapshots(config, &services.store).await?;
        }
        Ok((services, first))
    }

    /// Settles every hold a previous process left open, at its last
    /// checkpointed usage or in full, marked `recovered`.
    async fn recover_holds(&self) -> anyhow::Result<usize> {
        let holds = self.store.open_holds()?;
        for hold in &holds {
            self.accounts
                .recover(hold.account, hold.hold, hold.checkpoint_tokens)
                .await?;
        }
        if !holds.is_empty() {
            tracing::warn!(
                holds = holds.len(),
                "settled holds left open by an unclean stop (recovered)"
            );
        }
        Ok(holds.len())
    }

    /// Creates an account with optional starting credit and its first key.
    pub async fn create_account(
        &self,
        email: &str,
        credit: Nanos,
        reason: &str,
    ) -> anyhow::Result<(AccountRecord, String)> {
        let id = self.store.next_account_id()?;
        let record = AccountRecord {
            id,
            email: email.trim().to_lowercase(),
            created_ms: tokun_providers::clock::unix_ms(),
            disabled: false,
            floor: Nanos::ZERO,
            deleted_ms: None,
        };
        self.ledger
            .append(vec![WriteOp::PutAccount(record.clone())])
            .await?;
        if credit.get() > 0 {
            self.accounts
                .transfer(id, EntryKind::Topup, credit, reason)
                .await?;
        }
        let (_, secret) = self
            .create_key(
                id,
                KeyOptions {
                    name: "default".into(),
                    ..KeyOptions::default()
                },
            )
            .await?;
        Ok((record, secret))
    }

    /// Creates an API key; returns its record and the secret (shown once).
    pub async fn create_key(
        &self,
        account: AccountId,
        options: KeyOptions,
    ) -> anyhow::Result<(KeyRecord, String)> {
        let secret = new_key_secret();
        let record = KeyRecord {
            id: self.store.next_key_id()?,
            account,
            prefix: KeyRecord::prefix_of(&secret),
            name: options.name,
            created_ms: tokun_providers::clock::unix_ms(),
            last_used_ms: None,
            revoked_ms: None,
            spend_limit: options.spend_limit,
            rpm_limit: options.rpm_limit,
            allowed_models: options.allowed_models,
            debug: options.debug,
            limit_reset: options.limit_reset,
            expires_ms: options.expires_ms,
        };
        let hash = hash_secret(&secret);
        self.ledger
            .append(vec![WriteOp::PutKey {
                hash,
                record: record.clone(),
            }])
            .await?;
        Ok((record, secret))
    }

    /// Revokes a key for good; returns its hash and the updated record.
    pub async fn revoke_key(&self, key: KeyId) -> anyhow::Result<Option<([u8; 32], KeyRecord)>> {
        let (Some(hash), Some(mut record)) = (self.store.key_hash(key)?, self.store.key(key)?)
        else {
            return Ok(None);
        };
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(tokun_providers::clock::unix_ms());
            self.ledger
                .append(vec![WriteOp::PutKey {
                    hash,
                    record: record.clone(),
                }])
                .await?;
        }
        delete_debug_bodies(&self.store, key).await;
        Ok(Some((hash, record)))
    }

    /// Changes a key's name or debug flag; returns its hash and the updated
    /// record (`None`: no such key). The caller refreshes the auth cache.
    pub async fn update_key(
        &self,
        key: KeyId,
        change: KeyChange,
    ) -> anyhow::Result<Option<([u8; 32], KeyRecord)>> {
        let (Some(hash), Some(mut record)) = (self.store.key_hash(key)?, self.store.key(key)?)
        else {
            return Ok(None);
        };
        match change {
            KeyChange::Rename(name) => record.name = name,
            KeyChange::Debug(debug) => record.debug = debug,
        }
        self.ledger
            .append(vec![WriteOp::PutKey {
                hash,
                record: record.clone(),
            }])
            .await?;
        Ok(Some((hash, record)))
    }

    /// Stops the account actors, flushes and stops the ledger.
    pub async fn stop(&self) {
        self.accounts.stop().await;
        let _ = self.ledger.barrier().await;
        if let Some(snapshots) = &self.snapshots {
            // Everything is flushed: copy it to Postgres before the ledger stops.
            if let Err(error) = snapshots.snapshot_now(FINAL_SNAPSHOT_TIMEOUT).await {
                tracing::warn!(%error, "the final postgres snapshot failed; sled has everything");
            }
            snapshots.stop().await;
        }
        self.ledger.stop().await;
    }
}

/// Deletes a revoked key's debug bodies at once (issue 20 item 2), off the
/// async workers. The revocation is already durable, so a failure here is
/// logged, not returned: the caller must still refresh the auth cache, and
/// the retention sweeper removes the bodies within 7 days anyway.
async fn delete_debug_bodies(store: &Store, key: KeyId) {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.delete_debug_bodies_of_key(key)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(deleted)) => tracing::info!(%key, deleted, "a revoked key's debug bodies deleted"),
        Ok(Err(error)) => tracing::error!(%key, %error, "a revoked key's debug bodies remain"),
        Err(error) => tracing::error!(%key, %error, "deleting debug bodies panicked"),
    }
}

/// Starts the snapshot actor when `[postgres]` is configured.
async fn start_snapshots(config: &Config, store: &Store) -> anyhow::Result<Option<SnapshotHandle>> {
    let Some(postgres) = &config.postgres else {
        return Ok(None);
    };
    let target = postgres.target()?;
    let handle = SnapshotHandle::start(store.clone(), target, postgres.snapshot_interval).await?;
    tracing::info!(target = %handle.status().target, "postgres snapshots on");
    Ok(Some(handle))
}

/// Options of a new API key.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    pub name: String,
    pub spend_limit: Option<Nanos>,
    pub rpm_limit: Option<u32>,
    pub allowed_models: Vec<String>,
    pub debug: bool,
    pub limit_reset: LimitReset,
    /// Unix milliseconds after which the key is refused.
    pub expires_ms: Option<u64>,
}

/// A change its owner may make to a key after it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    Rename(String),
    Debug(bool),
}

/// The admin token lives in `DATA/admin_token` (mode 0600), created at first start.
fn admin_token_from_file(dir: &Path, first: &mut FirstStart) -> anyhow::Result<[u8; 32]> {
    let path = dir.join("admin_token");
    let token = match std::fs::read_to_string(&path) {
        Ok(token) => token.trim().to_owned(),
        Err(_) => {
            let token = format!(
                "tokun-admin-{}",
                &new_key_secret()[crate::auth::KEY_PREFIX.len()..]
            );
            write_private(&path, &token)?;
            first.admin_token = Some(token.clone());
            token
        }
    };
    Ok(Sha256::digest(token.as_bytes()).into())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
