//! Postgres snapshots and restore. sled is the source of truth; Postgres is
//! a copy operators can query (`docs/postgres.md`) and the place a lost data
//! dir is rebuilt from. This module owns the connection (`PgTarget`,
//! `PgConn`), the schema and its migrations (`schema`), the binary COPY
//! encoding (`copy`), one snapshot (`snapshot`) and the rebuild of a sled
//! store from the latest snapshot (`restore`). It knows nothing of actors or
//! timers: when to snapshot is the snapshot actor's business.
//!
//! The only async code of this crate lives here (tokio-postgres); every sled
//! read it makes runs on a blocking thread, in chunks, so a large snapshot
//! never stalls an async worker.
//!
//! **Invariant:** a URL's password never appears in an error, a log line or
//! `Debug`/`Display` output: `PgTarget` shows `user@host:port/db` only, and
//! every error message passes through `PgTarget::redact`.
//!
//! TLS is not supported yet: connect over a private network or a local socket
//! proxy.

mod audit;
mod checkpoint;
mod copy;
mod load;
mod mirror;
mod payments;
mod restore;
mod rows;
mod schema;
mod snapshot;

use std::fmt;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::config::Host;

pub use restore::{RestoreReport, restore};
pub use snapshot::{SnapshotReport, snapshot, watermark};

use crate::error::StorageError;
use crate::store::Store;

/// A Postgres database and schema to snapshot into or restore from.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    schema: String,
    /// `user@host:port/db`: what errors, logs and the admin API show.
    shown: String,
    /// Kept only to scrub it out of error messages.
    password: Option<String>,
    /// At most this many rows a second per COPY (`None`: as fast as it goes).
    max_rows_per_sec: Option<u64>,
}

/// An open connection with the schema migrated and selected. The driver
/// task that tokio-postgres needs is owned here and aborted on drop.
pub struct PgConn {
    client: tokio_postgres::Client,
    /// Runs the connection's socket I/O; the client is useless without it.
    driver: JoinHandle<()>,
    target: PgTarget,
}

/// What went wrong talking to Postgres, reading sled for a snapshot, or
/// checking a restore. Messages never hold the URL's password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgError {
    #[error("invalid postgres URL: {message}")]
    Url { message: String },
    #[error(
        "invalid postgres schema {schema:?}: use 1 to 63 of a-z, 0-9 and _, not starting with a digit"
    )]
    Schema { schema: String },
    #[error("postgres ({target}) failed to {op}: {message}")]
    Postgres {
        target: String,
        op: &'static str,
        message: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "the snapshot in postgres reaches seq {watermark} but this store ends at {last_seq}: it is another ledger's snapshot"
    )]
    Ahead { watermark: u64, last_seq: u64 },
    #[error("postgres holds a different ledger: entry {seq} differs from this store's")]
    Diverged { seq: u64 },
    #[error("the snapshot in postgres is inconsistent: {message}")]
    Inconsistent { message: String },
    #[error("{what} is out of postgres's range: {value}")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("no tokun snapshot in postgres schema {schema}")]
    NoSnapshot { schema: String },
    #[error("restore refused: {message}")]
    Restore { message: String },
    #[error("a blocking read of the store was lost: {message}")]
    Blocking { message: String },
}

/// How far Postgres is behind the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotLag {
    /// Ledger entries not yet in Postgres.
    pub entries: u64,
    /// When the oldest of those was written (`None` when there is none).
    pub oldest_at_ms: Option<u64>,
}

impl PgTarget {
    /// Parses a `postgres://user[:password]@host[:port]/db` URL (or a
    /// `key=value` connection string) and checks the schema name.
    pub fn parse(url: &str, schema: &str) -> Result<PgTarget, PgError> {
        if !valid_schema(schema) {
            return Err(PgError::Schema {
                schema: schema.to_owned(),
            });
        }
        let config: tokio_postgres::Config = url.parse().map_err(|err| {
            let password = password_in(url);
            PgError::Url {
                message: scrub(&format!("{err}"), password.as_deref()),
            }
        })?;
        if config.get_hosts().is_empty() {
            return Err(PgError::Url {
                message: "no host".into(),
            });
        }
        let password = config
            .get_password()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        let shown = describe(&config);
        Ok(PgTarget {
            config,
            schema: schema.to_owned(),
            shown,
            password,
            max_rows_per_sec: None,
        })
    }

    /// Paces every COPY to at most `rows` rows a second, so a large snapshot
    /// (a catch-up after Postgres was away) takes a bounded share of the CPU
    /// it shares with request handling, and of Postgres.
    #[must_use]
    pub fn paced(mut self, rows: Option<u64>) -> PgTarget {
        self.max_rows_per_sec = rows.filter(|r| *r > 0);
        self
    }

    pub fn max_rows_per_sec(&self) -> Option<u64> {
        self.max_rows_per_sec
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `user@host:port/db`, without the password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects (TCP, no TLS), names the session `application_name` (it
    /// shows in `pg_stat_activity`), creates and selects the schema, and
    /// applies any pending migrations.
    pub async fn connect(&self, application_name: &str) -> Result<PgConn, PgError> {
        let conn = self.open(application_name).await?;
        schema::migrate(&conn).await?;
        Ok(conn)
    }

    /// Connects and selects the schema without creating or migrating
    /// anything: for reading a snapshot (restore), possibly from a replica.
    pub async fn connect_existing(&self, application_name: &str) -> Result<PgConn, PgError> {
        let conn = self.open(application_name).await?;
        schema::select(&conn).await?;
        Ok(conn)
    }

    async fn open(&self, application_name: &str) -> Result<PgConn, PgError> {
        let mut config = self.config.clone();
        config
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(10))
            .keepalives_idle(Duration::from_secs(30));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|err| self.error("connect", &err))?;
        let shown = self.shown.clone();
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(target = %shown, %error, "postgres connection ended");
            }
        });
        Ok(PgConn {
            client,
            driver,
            target: self.clone(),
        })
    }

    /// Removes the password from a message, wherever it appears.
    pub fn redact(&self, message: &str) -> String {
        scrub(message, self.password.as_deref())
    }

    /// Maps a driver error to `PgError`, naming what was being done.
    pub(crate) fn fail(&self, op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        move |err| self.error(op, &err)
    }

    fn error(&self, op: &'static str, err: &tokio_postgres::Error) -> PgError {
        let message = match err.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => err.to_string(),
        };
        PgError::Postgres {
            target: self.shown.clone(),
            op,
            message: self.redact(&message),
        }
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("target", &self.shown)
            .field("schema", &self.schema)
            .finish()
    }
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (schema {})", self.shown, self.schema)
    }
}

impl PgConn {
    /// The client, for queries of its own (tests, operators' tools).
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// Whether the connection broke; a broken one must be replaced.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Maps a driver error to `PgError`, naming what was being done.
    pub(crate) fn fail(&self, op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        self.target.fail(op)
    }

    /// The client (mutably, to start a transaction) beside the target (to
    /// name errors while the transaction borrows the client).
    pub(crate) fn parts(&mut self) -> (&mut tokio_postgres::Client, &PgTarget) {
        (&mut self.client, &self.target)
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How far Postgres (at `watermark`) is behind `store`.
pub fn snapshot_lag(store: &Store, watermark: u64) -> Result<SnapshotLag, StorageError> {
    let last_seq = store.last_seq()?;
    if last_seq <= watermark {
        return Ok(SnapshotLag::default());
    }
    let oldest = store.entries(watermark + 1).next().transpose()?;
    Ok(SnapshotLag {
        entries: last_seq - watermark,
        oldest_at_ms: oldest.map(|entry| entry.at_ms),
    })
}

/// Schema names are interpolated into SQL, so only plain identifiers pass.
fn valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && schema.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// The password of a URL that did not parse, best effort, to scrub it.
fn password_in(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

fn scrub(message: &str, password: Option<&str>) -> String {
    match password {
        Some(password) if !password.is_empty() => message.replace(password, "[redacted]"),
        _ => message.to_owned(),
    }
}

/// Runs a sled read on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, PgError> + Send + 'static,
) -> Result<T, PgError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|err| PgError::Blocking {
            message: err.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_never_show_the_password() {
        let target = PgTarget::parse(
            "postgres://tokun:hunter2pw@db.internal:5433/ledger",
            "public",
        )
        .unwrap();
        assert_eq!(target.shown(), "tokun@db.internal:5433/ledger");
        for shown in [format!("{target}"), format!("{target:?}")] {
            assert!(!shown.contains("hunter2pw"), "{shown}");
        }
        assert_eq!(
            target.redact("auth failed for hunter2pw"),
            "auth failed for [redacted]"
        );
    }

    #[test]
    fn bad_urls_do_not_echo_the_password() {
        let err = PgTarget::parse("postgres://u:hunter2pw@h:notaport/db", "public").unwrap_err();
        assert!(!err.to_string().contains("hunter2pw"), "{err}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["public", "tokun", "tokun_test_1", "_x"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Public",
            "a-b",
            "a;drop",
            "a\"b",
            &"x".repeat(64),
        ] {
            assert!(!valid_schema(bad), "{bad}");
            assert!(PgTarget::parse("postgres://u@h/db", bad).is_err());
        }
    }
}
