//! `tokun-storage`: money, the ledger and the embedded sled store. It owns
//! the money type (`Nanos`, `Price`), ledger entries and their arithmetic
//! (`ledger::apply`), the sled trees and their layout (`Store`), the one
//! writer thread that group-commits to them (`LedgerWriter`), and the audit
//! (`Store::verify`), and the Postgres snapshot and restore (`postgres`, the
//! crate's only async code). It knows nothing of actors, HTTP or providers,
//! and depends on no other tokun crate.
//!
//! Trees: `entries` (seq → entry), `account_entries` (account ++ batch's
//! first seq → the account's seqs in that batch),
//! `balances` (account → books as of its last entry), `accounts` and
//! `emails`, `keys` (secret hash → key) with `key_ids` and `account_keys`,
//! `holds` (open holds only), `usage` (account ++ time ++ unique → request
//! metadata), `meta` (last committed seq) and `ids` (reserved id ranges);
//! for Stripe, `payments`, `account_payments`, `payment_intents` and
//! `stripe_events` (see `payments`); `idempotency` (account ++ the client's
//! `Idempotency-Key` → what the request answered; see `idempotency`); for
//! the console's people, `sessions` with `account_sessions`, `login_codes`,
//! `signins`, `profiles`, `passkeys` and `passkey_ids` (see `people`); the
//! operators' `audit` log (see `audit`); `policies`, `policy_dismissals`,
//! `policy_mails` and `policy_progress` (see `policy`); `ledger_checkpoint`,
//! what the entries retention pruned added up to (see `checkpoint`);
//! request debugging's `debug_bodies` and `debug_by_time` (see
//! `debug_bodies`).
//!
//! **Invariant:** every write except id reservation, idempotent outcomes,
//! the people trees, the audit log, the policy trees and debug bodies (none
//! of them money) goes through the writer thread, one atomic transaction and
//! one flush per batch; an ack fires only after its batch is on disk. A
//! `WriteOp::Sync` makes those side writes durable with the writer's flush.
//!
//! **Invariant:** the ledger is append-only: seqs 1, 2, 3, … with no gaps,
//! never updated. Only retention deletes entries, the oldest first, through
//! the writer (`WriteOp::PruneLedger`), in the same transaction that folds
//! them into the ledger checkpoint; `verify` starts from it, so the books,
//! postings and payments are still checked exactly.

mod account_data;
mod audit;
mod billing;
mod checkpoint;
mod codec;
mod debug_bodies;
mod error;
pub mod feed;
mod idempotency;
mod ids;
mod ids_alloc;
pub mod ledger;
mod money;
mod ops;
mod payments;
mod people;
mod policy;
pub mod postgres;
mod price;
mod records;
mod replay;
mod store;
mod usage_daily;
mod usage_query;
mod verify;
mod writer;

pub use account_data::{Batch, BatchCursor};
pub use audit::{ACTOR_ADMIN_TOKEN, ACTOR_CLI, AuditFilter, AuditRecord, NewAudit};
pub use billing::{AlertWatch, Change, Period};
pub use checkpoint::{CheckpointState, LedgerCheckpoint, PRUNE_BATCH, PrunedReference};
pub use debug_bodies::{DebugBody, DebugBodyId, DebugPage, StoredDebugBody};
pub use error::StorageError;
pub use idempotency::{IdempotentOutcome, StoredReply};
pub use ids::{AccountId, HoldId, IdError, KeyId};
pub use ledger::{Book, Books, EntryKind, LedgerEntry, LedgerError, apply, apply_within_floor};
pub use money::{MoneyError, NANOS_PER_USD, Nanos};
pub use ops::{Ack, Durable, NewEntry, WriteOp};
pub use payments::{PaymentRecord, PaymentStatus};
pub use people::{
    CodeCheck, LoginCode, PasskeyRecord, Profile, SessionRecord, SignInRecord, constant_time_eq,
    login_code_hash,
};
pub use policy::{MailProgress, NewPolicy, PolicyRecord};
pub use price::Price;
pub use records::{
    AccountRecord, BalanceRow, KEY_PREFIX_CHARS, KeyRecord, LimitReset, OpenHold, UsageRecord,
    hash_secret,
};
pub use store::{IdKind, Store, StoreOptions};
pub use usage_daily::{DailySpend, DaySpend};
pub use usage_query::{StatusClass, UsageCursor, UsageFilter, UsagePage, UsageRow};
pub use verify::VerifyReport;
pub use writer::{LedgerWriter, WriterConfig, WriterHandle, WriterStats, WriterStatsSnapshot};
