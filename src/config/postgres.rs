//! The `[postgres]` section: where snapshots go and how often. Checked here
//! with the same parser the snapshot uses, so a bad URL or schema is a
//! config error naming the field (never echoing the password).

use std::time::Duration;

use tokun_storage::postgres::{PgError, PgTarget};

use super::raw::RawPostgres;
use super::{ConfigError, Secret, SecretFn, invalid};

/// Postgres snapshots, when configured.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/db`: a secret for its password.
    pub url: Secret,
    /// Where tokun's tables live (created if missing); default `public`.
    pub schema: String,
    pub snapshot_interval: Duration,
    /// Paces each snapshot COPY (`None`: unpaced).
    pub max_rows_per_sec: Option<u64>,
}

impl PostgresConfig {
    /// The checked connection target.
    pub fn target(&self) -> Result<PgTarget, PgError> {
        PgTarget::parse(self.url.expose(), &self.schema).map(|t| t.paced(self.max_rows_per_sec))
    }
}

pub(super) fn postgres_config(
    raw: Option<RawPostgres>,
    secret: &SecretFn<'_>,
) -> Result<Option<PostgresConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(url) = secret("postgres.url", Some(raw.url))? else {
        return Ok(None);
    };
    let config = PostgresConfig {
        url,
        schema: raw.schema.unwrap_or_else(|| "public".into()),
        snapshot_interval: Duration::from_secs(match raw.snapshot_interval_secs.unwrap_or(60) {
            0 => {
                return Err(invalid(
                    "postgres.snapshot_interval_secs",
                    "must be at least 1",
                ));
            }
            secs => secs,
        }),
        max_rows_per_sec: raw.max_rows_per_sec.filter(|rows| *rows > 0),
    };
    match config.target() {
        Ok(_) => Ok(Some(config)),
        Err(PgError::Schema { .. }) => Err(invalid(
            "postgres.schema",
            "must be 1 to 63 of a-z, 0-9 and _, not starting with a digit",
        )),
        Err(error) => Err(invalid("postgres.url", error.to_string())),
    }
}
