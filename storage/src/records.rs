//! The records kept beside the ledger: accounts, API keys (by hash), open
//! holds, per-account balance rows and request usage metadata. Plain data;
//! the rules for changing them are in `writer`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{AccountId, HoldId, KeyId};
use crate::ledger::Books;
use crate::money::Nanos;
use crate::price::Price;

/// How many leading characters of a key's secret are kept for listing.
pub const KEY_PREFIX_CHARS: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: AccountId,
    /// Unique, compared case-insensitively.
    pub email: String,
    pub created_ms: u64,
    pub disabled: bool,
    /// The lowest `balance − held` holds may leave: 0 for prepaid accounts,
    /// negative for a credit line. `verify` checks every entry against the
    /// current floor.
    pub floor: Nanos,
    pub deleted_ms: Option<u64>,
}

/// An API key. Only the SHA-256 of the secret is stored (it is this record's
/// key in the `keys` tree); revoked keys are kept forever so a revoked secret
/// never works again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub account: AccountId,
    /// The first `KEY_PREFIX_CHARS` characters of the secret, for listing.
    pub prefix: String,
    pub name: String,
    pub created_ms: u64,
    pub last_used_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    pub spend_limit: Option<Nanos>,
    pub rpm_limit: Option<u32>,
    /// Empty: every model.
    pub allowed_models: Vec<String>,
    /// Request debugging: bodies kept for 7 days.
    pub debug: bool,
    /// When the spend limit starts over: never (`Total`), each UTC day or
    /// each UTC month. Absent in records written before periods existed.
    #[serde(default)]
    pub limit_reset: LimitReset,
    /// After this Unix millisecond the key is refused like a revoked one.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// The period a key's spend limit counts over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitReset {
    /// The limit is for the key's whole life.
    #[default]
    Total,
    /// Starts over at 00:00 UTC every day.
    Daily,
    /// Starts over at 00:00 UTC on the first of every month.
    Monthly,
}

/// A hold that has not been closed yet. Opened by a `Hold` entry, grown by
/// `Extend`, shrunk by `Settle`/`Release`/`Recovered`, and removed when an
/// entry of those three kinds leaves `amount` at zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenHold {
    pub hold: HoldId,
    pub account: AccountId,
    /// What is still reserved: hold + extends − settles − releases − recovered.
    pub amount: Nanos,
    pub request_id: Option<String>,
    pub opened_ms: u64,
    /// `(prompt, completion)` tokens last checkpointed, for recovery at restart.
    pub checkpoint_tokens: Option<(u64, u64)>,
    /// The price the request was admitted at, for recovery at restart.
    pub price: Price,
}

/// An account's books as of the last entry applied to it (`last_seq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BalanceRow {
    pub books: Books,
    pub last_seq: u64,
}

/// Metadata of one request; never its prompt or completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub at_ms: u64,
    pub account: AccountId,
    pub key: Option<KeyId>,
    pub model: String,
    pub served_model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    /// Of `prompt_tokens`, those the upstream served from its prompt cache
    /// (billed at the cached price). Absent in records written before it
    /// was kept: 0.
    #[serde(default)]
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Nanos,
    pub estimated: bool,
    /// The HTTP status the client was answered: 200 for every settled
    /// request (its stream or body began), the error's status for a request
    /// no route answered.
    pub status: u16,
    pub transport: String,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub error_kind: Option<String>,
    /// Which of the model's configured routes answered (0 is the first; a
    /// higher one means the routes before it failed over). `None` when no
    /// route answered, and in records written before it was kept.
    #[serde(default)]
    pub route: Option<u32>,
}

/// The SHA-256 of an API key's secret: how keys are stored and looked up.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl OpenHold {
    /// What recovery at restart charges for this hold: the cost of the last
    /// checkpointed usage (all of it as uncached prompt and completion), or
    /// the whole hold without a checkpoint — never more than the hold.
    /// Recovery writes `Recovered` for this and `Release` for the rest.
    pub fn recovery_cost(&self) -> Nanos {
        match self.checkpoint_tokens {
            Some((prompt, completion)) => self.price.cost(prompt, 0, completion).min(self.amount),
            None => self.amount,
        }
    }
}

impl KeyRecord {
    /// The part of a secret kept for listing.
    pub fn prefix_of(secret: &str) -> String {
        secret.chars().take(KEY_PREFIX_CHARS).collect()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_ms.is_some()
    }

    /// Whether the key has expired by `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now_ms)
    }
}

const MS_PER_DAY: u64 = 86_400_000;

impl LimitReset {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReset::Total => "total",
            LimitReset::Daily => "daily",
            LimitReset::Monthly => "monthly",
        }
    }

    /// `"total"`, `"daily"` or `"monthly"`.
    pub fn parse(text: &str) -> Option<LimitReset> {
        match text {
            "total" => Some(LimitReset::Total),
            "daily" => Some(LimitReset::Daily),
            "monthly" => Some(LimitReset::Monthly),
            _ => None,
        }
    }

    /// The Unix millisecond the period holding `now_ms` began: 0 for
    /// `Total`, 00:00 UTC of the day or of the month's first day.
    pub fn period_start_ms(self, now_ms: u64) -> u64 {
        let day_start = now_ms - now_ms % MS_PER_DAY;
        match self {
            LimitReset::Total => 0,
            LimitReset::Daily => day_start,
            LimitReset::Monthly => {
                let (_, _, day) = civil_from_days(now_ms / MS_PER_DAY);
                day_start - (day - 1) * MS_PER_DAY
            }
        }
    }
}

/// The UTC `(year, month, day)` of a day number (days since 1970-01-01),
/// Howard Hinnant's `civil_from_days` for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_charges_the_checkpoint_capped_at_the_hold() {
        let price =
            Price::per_million(Nanos::new(1_000_000), Nanos::new(2_000_000), Nanos::ZERO).unwrap();
        let mut open = OpenHold {
            hold: HoldId::new(1),
            account: AccountId::new(1),
            amount: Nanos::new(100),
            request_id: None,
            opened_ms: 0,
            checkpoint_tokens: None,
            price,
        };
        assert_eq!(open.recovery_cost(), Nanos::new(100));
        open.checkpoint_tokens = Some((10, 20));
        assert_eq!(open.recovery_cost(), Nanos::new(50));
        open.checkpoint_tokens = Some((1_000, 0));
        assert_eq!(open.recovery_cost(), Nanos::new(100));
    }

    #[test]
    fn keys_are_hashed_and_prefixed() {
        let secret = "sk-tokun-0123456789abcdef";
        assert_eq!(KeyRecord::prefix_of(secret), "sk-tokun-012");
        assert_eq!(hash_secret(secret), hash_secret(secret));
        assert_ne!(hash_secret(secret), hash_secret("sk-tokun-other"));
    }

    #[test]
    fn limit_periods_start_at_utc_midnight_and_the_first() {
        // 2024-02-29 13:45:00 UTC.
        let leap_day = 1_709_214_300_000;
        let midnight = 1_709_164_800_000;
        let first_of_february = 1_706_745_600_000;
        assert_eq!(LimitReset::Total.period_start_ms(leap_day), 0);
        assert_eq!(LimitReset::Daily.period_start_ms(leap_day), midnight);
        assert_eq!(
            LimitReset::Monthly.period_start_ms(leap_day),
            first_of_february
        );
        assert_eq!(LimitReset::Daily.period_start_ms(midnight), midnight);
        assert_eq!(
            LimitReset::Daily.period_start_ms(midnight - 1),
            midnight - MS_PER_DAY
        );
        // 2024-03-01 00:00 UTC starts a month; a millisecond before is February.
        let march = midnight + MS_PER_DAY;
        assert_eq!(LimitReset::Monthly.period_start_ms(march), march);
        assert_eq!(
            LimitReset::Monthly.period_start_ms(march - 1),
            first_of_february
        );
        assert_eq!(LimitReset::Monthly.period_start_ms(0), 0);
        for reset in [LimitReset::Total, LimitReset::Daily, LimitReset::Monthly] {
            assert_eq!(LimitReset::parse(reset.as_str()), Some(reset));
        }
        assert_eq!(LimitReset::parse("weekly"), None);
    }
}
