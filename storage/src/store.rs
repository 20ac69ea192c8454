//! `Store`: the sled database and its trees, opening it, and every read.
//! Writes go only through the `writer` (one thread, group commit), except id
//! allocation (`ids_alloc`). This file owns the tree layout; the writer owns
//! the rules for changing it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sled::Tree;

use crate::codec::{decode, normalize_email, pair_key, read_u64, usage_key};
use crate::error::StorageError;
use crate::feed::Feeds;
use crate::ids::{AccountId, HoldId, KeyId};
use crate::ids_alloc::IdAllocator;
use crate::ledger::{Books, LedgerEntry};
use crate::records::{AccountRecord, BalanceRow, KeyRecord, OpenHold, UsageRecord};

/// Key of the last committed ledger seq in the `meta` tree.
pub(crate) const META_LAST_SEQ: &[u8] = b"last_seq";

/// The embedded store. Cheap to clone; every clone is the same database.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: sled::Db,
    /// Behind one `Arc`, so a clone of the store is four pointers, however
    /// many trees there are.
    pub(crate) trees: Arc<Trees>,
    /// Shared so every clone hands out ids from the same reserved ranges.
    ids: Arc<IdAllocator>,
    /// Set while a `LedgerWriter` runs: two writers would hand out the same seqs.
    pub(crate) writer_claimed: Arc<AtomicBool>,
    /// What the writer made durable, for readers following an account.
    feeds: Arc<Feeds>,
}

/// How the store is opened.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// sled's page cache. Small by default (16 MiB, `ledger.cache_mib`): the
    /// hot data (balances, open holds, keys) is tiny and the ledger is
    /// appended, not re-read; a 64 MiB cache filled up with freshly written
    /// entries under load and added ≈ 25 MiB to the process.
    pub cache_capacity_bytes: u64,
}

/// The sled trees. See the crate docs for what each one holds.
#[derive(Clone)]
pub(crate) struct Trees {
    /// seq (BE u64) → `LedgerEntry`.
    pub(crate) entries: Tree,
    /// account ++ first seq of a batch → that account's seqs in the batch.
    pub(crate) account_entries: Tree,
    /// account ++ at_ms ++ unique → `UsageRecord`.
    pub(crate) usage: Tree,
    /// `AccountId` → `AccountRecord`.
    pub(crate) accounts: Tree,
    /// normalized email → `AccountId`.
    pub(crate) emails: Tree,
    /// SHA-256 of the secret → `KeyRecord`.
    pub(crate) keys: Tree,
    /// `KeyId` → SHA-256.
    pub(crate) key_ids: Tree,
    /// account ++ key id → SHA-256: an account's keys.
    pub(crate) account_keys: Tree,
    /// `AccountId` → `BalanceRow`.
    pub(crate) balances: Tree,
    /// `HoldId` → `OpenHold`, open holds only.
    pub(crate) holds: Tree,
    /// Writer bookkeeping: the last committed seq.
    pub(crate) meta: Tree,
    /// Stripe session id → `PaymentRecord` (see `payments`).
    pub(crate) payments: Tree,
    /// account ++ session id → nothing: an account's payments.
    pub(crate) account_payments: Tree,
    /// PaymentIntent id → session id.
    pub(crate) payment_intents: Tree,
    /// Processed Stripe event id or refund key → when (BE u64 ms).
    pub(crate) stripe_events: Tree,
    /// account ++ `Idempotency-Key` → `IdempotentOutcome` (not ledger data;
    /// written outside the writer's batches).
    pub(crate) idempotency: Tree,
    /// SHA-256 of a session id → `SessionRecord` (see `people`; written
    /// outside the writer, like `idempotency`).
    pub(crate) sessions: Tree,
    /// account ++ session hash → nothing: an account's sessions.
    pub(crate) account_sessions: Tree,
    /// normalized email → `LoginCode`, the one live sign-in code.
    pub(crate) login_codes: Tree,
    /// account ++ at_ms ++ unique → `SignInRecord`.
    pub(crate) signins: Tree,
    /// `AccountId` → `Profile`.
    pub(crate) profiles: Tree,
    /// account ++ credential id → `PasskeyRecord` (see `people/passkeys.rs`).
    pub(crate) passkeys: Tree,
    /// credential id → account (8 bytes, big-endian).
    pub(crate) passkey_ids: Tree,
    /// The operators' audit log (see `audit`; written outside the writer).
    pub(crate) audit: crate::audit::AuditTrees,
    /// Policy notices, dismissals and their emails (see `policy`).
    pub(crate) policy: crate::policy::PolicyTrees,
    /// What pruned entries added up to (see `checkpoint`).
    pub(crate) checkpoint: Tree,
    /// key id ++ at_ms ++ unique → `DebugBody` (see `debug_bodies`; written
    /// outside the writer, like `idempotency`).
    pub(crate) debug_bodies: Tree,
    /// at_ms ++ key id ++ unique → nothing: debug bodies in time order.
    pub(crate) debug_by_time: Tree,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Only one process may have it open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StorageError> {
        Store::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StorageError> {
        Store::from_config(sled::Config::new().path(dir), options)
    }

    /// A store in a temporary file, deleted when the last clone is dropped.
    pub fn temporary() -> Result<Store, StorageError> {
        Store::from_config(sled::Config::new().temporary(true), StoreOptions::default())
    }

    fn from_config(config: sled::Config, options: StoreOptions) -> Result<Store, StorageError> {
        // No background flusher: the writer flushes after every batch, and
        // that flush is what "durable" means.
        let config = config
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        let db = open_waiting_for_lock(&config).map_err(StorageError::sled("open the store"))?;
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(StorageError::sled("open a tree"))
        };
        let trees = Trees {
            entries: open("entries")?,
            account_entries: open("account_entries")?,
            usage: open("usage")?,
            accounts: open("accounts")?,
            emails: open("emails")?,
            keys: open("keys")?,
            key_ids: open("key_ids")?,
            account_keys: open("account_keys")?,
            balances: open("balances")?,
            holds: open("holds")?,
            meta: open("meta")?,
            payments: open("payments")?,
            account_payments: open("account_payments")?,
            payment_intents: open("payment_intents")?,
            stripe_events: open("stripe_events")?,
            idempotency: open("idempotency")?,
            sessions: open("sessions")?,
            account_sessions: open("account_sessions")?,
            login_codes: open("login_codes")?,
            signins: open("signins")?,
            profiles: open("profiles")?,
            passkeys: open("passkeys")?,
            passkey_ids: open("passkey_ids")?,
            audit: crate::audit::AuditTrees::open(&db)?,
            policy: crate::policy::PolicyTrees::open(&db)?,
            checkpoint: open("ledger_checkpoint")?,
            debug_bodies: open("debug_bodies")?,
            debug_by_time: open("debug_by_time")?,
        };
        let ids = IdAllocator::open(db.clone(), open("ids")?)?;
        Ok(Store {
            db,
            trees: Arc::new(trees),
            ids: Arc::new(ids),
            writer_claimed: Arc::default(),
            feeds: Arc::default(),
        })
    }

    /// The writer's feeds of durable records (see [`crate::feed`]).
    pub fn feeds(&self) -> &Feeds {
        &self.feeds
    }

    /// Whether the store existed before this open (false for a new data dir).
    pub fn was_recovered(&self) -> bool {
        self.db.was_recovered()
    }

    /// The next id of `kind`: unique and increasing, never repeated even
    /// after a crash (ranges are reserved durably ahead of use, so a restart
    /// skips the unused rest of a range).
    pub fn next_id(&self, kind: IdKind) -> Result<u64, StorageError> {
        self.ids.next(kind)
    }

    pub fn next_account_id(&self) -> Result<AccountId, StorageError> {
        self.next_id(IdKind::Account).map(AccountId::new)
    }

    pub fn next_key_id(&self) -> Result<KeyId, StorageError> {
        self.next_id(IdKind::Key).map(KeyId::new)
    }

    pub fn next_hold_id(&self) -> Result<HoldId, StorageError> {
        self.next_id(IdKind::Hold).map(HoldId::new)
    }

    /// The seq of the last committed ledger entry, 0 for an empty ledger.
    pub fn last_seq(&self) -> Result<u64, StorageError> {
        let stored = self
            .trees
            .meta
            .get(META_LAST_SEQ)
            .map_err(StorageError::sled("read meta"))?;
        Ok(stored.and_then(|bytes| read_u64(&bytes, 0)).unwrap_or(0))
    }

    pub fn account(&self, id: AccountId) -> Result<Option<AccountRecord>, StorageError> {
        get(&self.trees.accounts, "accounts", id.to_key())
    }

    /// Looks an account up by email, ignoring case and surrounding spaces.
    pub fn account_by_email(&self, email: &str) -> Result<Option<AccountRecord>, StorageError> {
        let found = self.trees.emails.get(normalize_email(email).as_bytes());
        match found.map_err(StorageError::sled("read emails"))? {
            Some(id) => match read_u64(&id, 0) {
                Some(id) => self.account(AccountId::new(id)),
                None => Err(StorageError::Decode {
                    tree: "emails",
                    message: "short id".into(),
                }),
            },
            None => Ok(None),
        }
    }

    /// Accounts in id order whose email contains `search` (ignoring case) or
    /// whose id is `search` (`acct_7` or `7`); all accounts without a search.
    pub fn accounts(
        &self,
        search: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, StorageError> {
        let needle = search.map(normalize_email).filter(|s| !s.is_empty());
        let mut found = Vec::new();
        for item in self.trees.accounts.iter().values() {
            if found.len() >= limit {
                break;
            }
            let bytes = item.map_err(StorageError::sled("scan accounts"))?;
            let account: AccountRecord = decode("accounts", &bytes)?;
            if needle
                .as_deref()
                .is_none_or(|n| matches_account(&account, n))
            {
                found.push(account);
            }
        }
        Ok(found)
    }

    /// An account's books; zero for an account with no entries.
    pub fn books(&self, id: AccountId) -> Result<Books, StorageError> {
        Ok(self
            .balance_row(id)?
            .map(|row| row.books)
            .unwrap_or_default())
    }

    pub fn balance_row(&self, id: AccountId) -> Result<Option<BalanceRow>, StorageError> {
        get(&self.trees.balances, "balances", id.to_key())
    }

    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>, StorageError> {
        get(&self.trees.keys, "keys", hash)
    }

    pub fn key_hash(&self, id: KeyId) -> Result<Option<[u8; 32]>, StorageError> {
        let found = self
            .trees
            .key_ids
            .get(id.to_key())
            .map_err(StorageError::sled("read key_ids"))?;
        found.map(|bytes| to_hash("key_ids", &bytes)).transpose()
    }

    pub fn key(&self, id: KeyId) -> Result<Option<KeyRecord>, StorageError> {
        match self.key_hash(id)? {
            Some(hash) => self.key_by_hash(&hash),
            None => Ok(None),
        }
    }

    /// An account's keys (revoked ones too) in id order.
    pub fn keys_for(&self, account: AccountId) -> Result<Vec<KeyRecord>, StorageError> {
        let mut keys = Vec::new();
        for item in self
            .trees
            .account_keys
            .scan_prefix(account.to_key())
            .values()
        {
            let hash = to_hash(
                "account_keys",
                &item.map_err(StorageError::sled("scan keys"))?,
            )?;
            keys.extend(self.key_by_hash(&hash)?);
        }
        Ok(keys)
    }

    pub fn open_hold(&self, hold: HoldId) -> Result<Option<OpenHold>, StorageError> {
        get(&self.trees.holds, "holds", hold.to_key())
    }

    /// Every hold not yet closed, in id order: what recovery settles at start.
    pub fn open_holds(&self) -> Result<Vec<OpenHold>, StorageError> {
        self.trees
            .holds
            .iter()
            .values()
            .map(|item| decode("holds", &item.map_err(StorageError::sled("scan holds"))?))
            .collect()
    }

    /// Ledger entries from `from_seq` on, in seq order.
    pub fn entries(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<LedgerEntry, StorageError>> + use<> {
        self.trees
            .entries
            .range(from_seq.to_be_bytes()..)
            .values()
            .map(|item| {
                decode(
                    "entries",
                    &item.map_err(StorageError::sled("scan entries"))?,
                )
            })
    }

    /// One account's ledger entries from `from_seq` on, in seq order.
    pub fn entries_for(
        &self,
        account: AccountId,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<LedgerEntry, StorageError>> + use<> {
        let entries = self.trees.entries.clone();
        let index = &self.trees.account_entries;
        let (a, last) = (account.get(), pair_key(account.get(), u64::MAX));
        // Index keys are (account, first seq of a batch) → that batch's
        // seqs, so start at the last key at or before `from_seq`. If that
        // lookup fails, start at the account's first key: slower, same result.
        let start = match index
            .range(pair_key(a, 0)..=pair_key(a, from_seq))
            .next_back()
        {
            Some(Ok((key, _))) => key.to_vec(),
            _ => pair_key(a, 0).to_vec(),
        };
        let seqs = index
            .range(start..=last.to_vec())
            .values()
            .flat_map(move |chunk| match chunk {
                Ok(seqs) => unpack_seqs(&seqs)
                    .filter(|seq| *seq >= from_seq)
                    .map(Ok)
                    .collect(),
                Err(err) => vec![Err(StorageError::sled("scan account entries")(err))],
            });
        seqs.map(move |seq| {
            let seq = seq?;
            indexed_entry(&entries, seq)
        })
    }

    /// One account's usage with `from_ms <= at_ms < to_ms`, oldest first.
    pub fn usage_for(
        &self,
        account: AccountId,
        from_ms: u64,
        to_ms: u64,
    ) -> impl Iterator<Item = Result<UsageRecord, StorageError>> + use<> {
        let start = usage_key(account.get(), from_ms, 0);
        let end = usage_key(account.get(), to_ms, 0);
        self.trees
            .usage
            .range(start..end)
            .values()
            .map(|item| decode("usage", &item.map_err(StorageError::sled("scan usage"))?))
    }

    /// One account's latest `limit` usage records, newest first, without
    /// reading the older ones.
    pub fn latest_usage(
        &self,
        account: AccountId,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, StorageError> {
        self.trees
            .usage
            .scan_prefix(account.to_key())
            .values()
            .rev()
            .take(limit)
            .map(|item| decode("usage", &item.map_err(StorageError::sled("scan usage"))?))
            .collect()
    }
}

/// What `Store::next_id` hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    Account,
    Key,
    Hold,
}

/// sled's file lock outlives the last handle by a moment (its I/O threads
/// let go of the files after the `Db` is dropped), so a store reopened right
/// after it was closed — a restart, a restore then a start — may find it
/// still locked. Retries that for up to a second; a store another process
/// holds still fails, just a second later.
fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let mut tries = 0;
    loop {
        match config.open() {
            // sled reports it as `Other` with this text (sled 0.34, config.rs).
            Err(sled::Error::Io(err))
                if tries < 20 && err.to_string().starts_with("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn get<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
    key: impl AsRef<[u8]>,
) -> Result<Option<T>, StorageError> {
    match tree.get(key).map_err(StorageError::sled("read a record"))? {
        Some(bytes) => decode(name, &bytes).map(Some),
        None => Ok(None),
    }
}

fn to_hash(tree: &'static str, bytes: &[u8]) -> Result<[u8; 32], StorageError> {
    bytes.try_into().map_err(|_| StorageError::Decode {
        tree,
        message: format!("{} bytes, not 32", bytes.len()),
    })
}

/// The seqs packed in an `account_entries` value (big-endian `u64`s).
pub(crate) fn unpack_seqs(packed: &[u8]) -> impl Iterator<Item = u64> + '_ {
    packed.chunks_exact(8).filter_map(|seq| read_u64(seq, 0))
}

fn matches_account(account: &AccountRecord, needle: &str) -> bool {
    let id = account.id.get().to_string();
    account.email.to_lowercase().contains(needle)
        || needle == id
        || needle == account.id.to_string()
}

/// The entry `seq` that the `account_entries` index names (its absence is
/// a damaged store, said as such).
pub(crate) fn indexed_entry(entries: &Tree, seq: u64) -> Result<LedgerEntry, StorageError> {
    let found = entries.get(seq.to_be_bytes());
    match found.map_err(StorageError::sled("read an entry"))? {
        Some(bytes) => decode("entries", &bytes),
        None => Err(StorageError::Decode {
            tree: "account_entries",
            message: format!("index names missing entry {seq}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tokun-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn opening_waits_for_a_lock_that_is_being_let_go() {
        let dir = dir("released");
        let first = Store::open(&dir).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let started = Instant::now();
        let second = Store::open(&dir);
        assert!(
            second.is_ok(),
            "opened once the first let go: {:?}",
            second.err()
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        releaser.join().unwrap();
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_held_open_is_still_refused() {
        let dir = dir("held");
        let first = Store::open(&dir).unwrap();
        let started = Instant::now();
        let err = Store::open(&dir).err().expect("refused while held");
        assert!(err.to_string().contains("lock"), "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "retried for about a second"
        );
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
