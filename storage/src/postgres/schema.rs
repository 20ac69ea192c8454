//! The snapshot schema and its migrations. Each migration runs once, in
//! version order, recorded in `schema_migrations`; all of them run in one
//! transaction under an advisory lock, so two tokun processes starting at
//! once cannot both apply one. Migrations are only ever appended: a
//! released one is never edited. `docs/postgres.md` documents the tables
//! and views for operators.
//!
//! Money is `bigint` nano-USD (`*_nanos`); times are `bigint` Unix
//! milliseconds (`*_ms`); the views add USD and `timestamptz` columns.

use super::{PgConn, PgError};

/// Any constant works; it only has to be the same for every tokun.
const MIGRATION_LOCK: i64 = 0x746f_6b75_6e00_0001;

/// `(version, name, SQL)`, in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "snapshot tables and views", V1),
    (2, "key limit periods and expiry", V2),
    (3, "audit log", V3),
    (4, "request log: cached tokens and route", V4),
    (5, "ledger checkpoint", V5),
];

const V1: &str = r#"
CREATE TABLE snapshot_state (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_seq bigint NOT NULL,
    snapshot_at timestamptz,
    last_duration_ms bigint,
    last_rows bigint
);
INSERT INTO snapshot_state (id, last_seq) VALUES (1, 0);

CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    created_ms bigint NOT NULL,
    disabled boolean NOT NULL,
    floor_nanos bigint NOT NULL,
    deleted_ms bigint
);

CREATE TABLE api_keys (
    id bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    key_hash bytea NOT NULL UNIQUE,
    prefix text NOT NULL,
    name text NOT NULL,
    created_ms bigint NOT NULL,
    last_used_ms bigint,
    revoked_ms bigint,
    spend_limit_nanos bigint,
    rpm_limit bigint,
    allowed_models text[] NOT NULL,
    debug boolean NOT NULL
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE balances (
    account_id bigint PRIMARY KEY,
    balance_nanos bigint NOT NULL,
    held_nanos bigint NOT NULL,
    last_seq bigint NOT NULL
);

CREATE TABLE ledger_entries (
    seq bigint PRIMARY KEY,
    at_ms bigint NOT NULL,
    account_id bigint NOT NULL,
    kind text NOT NULL,
    amount_nanos bigint NOT NULL,
    hold_id bigint,
    request_id text,
    reference text,
    estimated boolean NOT NULL,
    balance_after_nanos bigint NOT NULL,
    held_after_nanos bigint NOT NULL
);
-- No index on account_id: it would halve COPY throughput (random inserts
-- into a second btree); docs/postgres.md shows how to add one.

CREATE TABLE open_holds (
    hold_id bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    amount_nanos bigint NOT NULL,
    request_id text,
    opened_ms bigint NOT NULL,
    checkpoint_prompt_tokens bigint,
    checkpoint_completion_tokens bigint,
    price_input_nanos bigint,
    price_output_nanos bigint,
    price_cached_input_nanos bigint
);

CREATE TABLE requests (
    account_id bigint NOT NULL,
    at_ms bigint NOT NULL,
    unique_id bigint NOT NULL,
    request_id text NOT NULL,
    key_id bigint,
    model text NOT NULL,
    served_model text NOT NULL,
    provider text NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_nanos bigint NOT NULL,
    estimated boolean NOT NULL,
    status integer NOT NULL,
    transport text NOT NULL,
    latency_ms bigint NOT NULL,
    ttft_ms bigint,
    error_kind text,
    PRIMARY KEY (account_id, at_ms, unique_id)
);
CREATE INDEX requests_at ON requests (at_ms);

CREATE TABLE payments (
    id text PRIMARY KEY,
    account_id bigint,
    amount_nanos bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    paid_nanos bigint NOT NULL,
    refunded_nanos bigint NOT NULL,
    debited_nanos bigint NOT NULL,
    payment_intent text,
    note text
);
CREATE INDEX payments_account ON payments (account_id);
CREATE INDEX ledger_entries_payment ON ledger_entries (reference)
    WHERE kind IN ('topup', 'refund');

CREATE TABLE stripe_events (
    key text PRIMARY KEY,
    processed_ms bigint NOT NULL
);

CREATE VIEW account_balances AS
SELECT a.id AS account_id,
       'acct_' || a.id AS account,
       a.email,
       a.disabled,
       to_timestamp(a.created_ms / 1000.0) AS created_at,
       coalesce(b.balance_nanos, 0) AS balance_nanos,
       coalesce(b.held_nanos, 0) AS held_nanos,
       (coalesce(b.balance_nanos, 0)::numeric / 1000000000)::numeric(20, 9) AS balance_usd,
       (coalesce(b.held_nanos, 0)::numeric / 1000000000)::numeric(20, 9) AS held_usd,
       ((coalesce(b.balance_nanos, 0) - coalesce(b.held_nanos, 0))::numeric / 1000000000)::numeric(20, 9) AS available_usd,
       b.last_seq
FROM accounts a
LEFT JOIN balances b ON b.account_id = a.id;

CREATE VIEW daily_usage AS
SELECT (to_timestamp(at_ms / 1000.0) AT TIME ZONE 'UTC')::date AS day,
       account_id,
       model,
       provider,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 400 OR error_kind IS NOT NULL) AS failed,
       count(*) FILTER (WHERE estimated) AS estimated,
       sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens,
       sum(cost_nanos) AS cost_nanos,
       (sum(cost_nanos)::numeric / 1000000000)::numeric(20, 9) AS cost_usd
FROM requests
GROUP BY 1, 2, 3, 4;

CREATE VIEW ledger AS
SELECT seq,
       to_timestamp(at_ms / 1000.0) AS at,
       account_id,
       kind,
       (amount_nanos::numeric / 1000000000)::numeric(20, 9) AS amount_usd,
       hold_id,
       request_id,
       reference,
       estimated,
       (balance_after_nanos::numeric / 1000000000)::numeric(20, 9) AS balance_after_usd,
       (held_after_nanos::numeric / 1000000000)::numeric(20, 9) AS held_after_usd
FROM ledger_entries;
"#;

/// Keys gain the period their spend limit counts over and an expiry.
const V2: &str = r#"
ALTER TABLE api_keys
    ADD COLUMN limit_reset text NOT NULL DEFAULT 'total',
    ADD COLUMN expires_ms bigint;
"#;

/// The operators' audit log (`storage/src/audit.rs`), appended by seq.
const V3: &str = r#"
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY,
    at_ms bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    before jsonb NOT NULL,
    after jsonb NOT NULL,
    reason text NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target);

CREATE VIEW audit AS
SELECT seq, to_timestamp(at_ms / 1000.0) AS at, actor, action, target, before, after, reason
FROM audit_log;
"#;

/// The request log gains the cached prompt tokens and the route that
/// answered. `IF NOT EXISTS`, so a database that already has them (a
/// migration renumbered while branches merged) takes it as it is.
const V4: &str = r#"
ALTER TABLE requests
    ADD COLUMN IF NOT EXISTS cached_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS route integer;
"#;

/// Retention prunes the oldest entries; the checkpoint says what they
/// added up to (`postgres/checkpoint.rs`). Sums beyond `bigint` are
/// `numeric`.
const V5: &str = r#"
CREATE TABLE IF NOT EXISTS ledger_checkpoint (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    through_seq bigint NOT NULL,
    through_at_ms bigint NOT NULL,
    revenue_nanos numeric NOT NULL,
    external_nanos numeric NOT NULL,
    max_hold_id bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS checkpoint_balances (
    account_id bigint PRIMARY KEY,
    balance_nanos bigint NOT NULL,
    held_nanos bigint NOT NULL,
    last_seq bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS checkpoint_references (
    reference text PRIMARY KEY,
    topups integer NOT NULL,
    topped_up_nanos numeric NOT NULL,
    refunded_nanos numeric NOT NULL,
    account_ids bigint[] NOT NULL,
    last_seq bigint NOT NULL
);
"#;

/// Creates and selects the schema, then applies what is missing. Returns
/// how many migrations ran.
pub(super) async fn migrate(conn: &PgConn) -> Result<usize, PgError> {
    select(conn).await?;
    let schema = conn.target().schema();
    let client = conn.client();
    client
        .batch_execute("BEGIN")
        .await
        .map_err(conn.fail("begin the migration"))?;
    let applied = apply(conn, schema).await;
    let end = if applied.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client
        .batch_execute(end)
        .await
        .map_err(conn.fail("end the migration"));
    let applied = applied?;
    ended?;
    if applied > 0 {
        tracing::info!(target = %conn.target(), applied, "postgres snapshot schema migrated");
    }
    Ok(applied)
}

/// Makes the schema the session's `search_path` (it need not exist yet).
pub(super) async fn select(conn: &PgConn) -> Result<(), PgError> {
    let schema = conn.target().schema();
    // The name was checked to be a plain identifier (`valid_schema`).
    conn.client()
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .map_err(conn.fail("select the schema"))
}

async fn apply(conn: &PgConn, schema: &str) -> Result<usize, PgError> {
    let client = conn.client();
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(conn.fail("lock the migrations"))?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(conn.fail("create the schema"))?;
    let rows = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(conn.fail("read schema_migrations"))?;
    let done = rows
        .iter()
        .map(|row| row.try_get::<_, i32>(0))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(conn.fail("read schema_migrations"))?;
    let newest = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if let Some(unknown) = done.iter().find(|version| **version > newest) {
        return Err(PgError::Inconsistent {
            message: format!(
                "schema migration {unknown} is newer than this tokun knows (up to {newest}); upgrade tokun"
            ),
        });
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        client
            .batch_execute(sql)
            .await
            .map_err(conn.fail("apply a schema migration"))?;
        client
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(conn.fail("record a schema migration"))?;
        applied += 1;
    }
    Ok(applied)
}
