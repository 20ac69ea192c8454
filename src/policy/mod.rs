//! Policy changes as the privacy policy promises them: an operator
//! announces a change with an effective date at least [`NOTICE_DAYS`] days
//! ahead (`POST /admin/policy`, `tokun policy announce`), every signed-in
//! person sees a dashboard banner until they dismiss it
//! (`console/policy_banner.rs`), and every account gets one email about it
//! when SMTP is configured (`mail.rs`). Announcing is audited.
//!
//! The records live in the store (`storage/src/policy.rs`); this module
//! owns the rules: what a valid announcement is, and who is told how.

pub mod command;
pub mod mail;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Value, json};
use tokun_storage::{NewPolicy, PolicyRecord, StorageError, Store};

use crate::audit::{self, Change};

/// The least notice a policy change gives, in days.
pub const NOTICE_DAYS: i64 = 14;
/// The longest summary, in characters.
const SUMMARY_CHARS: usize = 500;
/// The longest link, in bytes.
const URL_BYTES: usize = 2000;

/// What an operator asked to announce.
#[derive(Clone, Debug, Default)]
pub struct Announcement {
    /// `YYYY-MM-DD`.
    pub effective: String,
    pub summary: String,
    /// An `https://` link to the full text.
    pub url: Option<String>,
}

/// Why an announcement was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("`effective` must be a date written YYYY-MM-DD, like 2030-01-31.")]
    Date,
    #[error(
        "`effective` must be at least {NOTICE_DAYS} days ahead: {earliest} or later (today is {today}, UTC)."
    )]
    TooSoon { earliest: Date, today: Date },
    #[error("`summary` must be 1 to {SUMMARY_CHARS} characters, on one line.")]
    Summary,
    #[error("`url` must be an https:// address of at most {URL_BYTES} characters.")]
    Url,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl PolicyError {
    /// The request field at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            PolicyError::Date | PolicyError::TooSoon { .. } => Some("effective"),
            PolicyError::Summary => Some("summary"),
            PolicyError::Url => Some("url"),
            PolicyError::Storage(_) => None,
        }
    }
}

/// Checks `announcement` against today (`now_ms`'s UTC day), records it and
/// its audit record (done by `actor`), and returns it.
pub async fn announce(
    store: &Store,
    actor: &str,
    announcement: Announcement,
    now_ms: u64,
) -> Result<PolicyRecord, PolicyError> {
    let checked = check(announcement, utc_day(now_ms))?;
    let record = store.put_policy(NewPolicy {
        announced_ms: now_ms,
        effective: checked.effective,
        summary: checked.summary,
        url: checked.url,
        announced_by: actor.to_owned(),
    })?;
    let change = Change::new(Value::Null, policy_json(&record));
    // Flushes the announcement too: both are in the same sled database.
    audit::record(store, actor, "policy.announce", name(record.id), change, "").await;
    Ok(record)
}

/// `pol_7`: how people see a policy's id.
pub fn name(id: u64) -> String {
    format!("pol_{id}")
}

/// A policy as the admin API and the audit log show it.
pub fn policy_json(record: &PolicyRecord) -> Value {
    json!({
        "id": name(record.id), "object": "policy", "effective": record.effective,
        "summary": record.summary, "url": record.url,
        "announced_at": record.announced_ms / 1000, "announced_by": record.announced_by,
    })
}

/// The day `ms` falls on in UTC.
fn utc_day(ms: u64) -> Date {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(TimeZone::UTC)
        .date()
}

/// `announcement` with its fields checked and trimmed.
fn check(announcement: Announcement, today: Date) -> Result<Announcement, PolicyError> {
    let text = announcement.effective.trim();
    let effective: Date = text.parse().map_err(|_| PolicyError::Date)?;
    // Only the plain form: "20300131" and "+002030-01-31" parse too.
    if effective.to_string() != text {
        return Err(PolicyError::Date);
    }
    let earliest = today
        .checked_add(jiff::Span::new().days(NOTICE_DAYS))
        .map_err(|_| PolicyError::Date)?;
    if effective < earliest {
        return Err(PolicyError::TooSoon { earliest, today });
    }
    let summary = announcement.summary.trim();
    let length = summary.chars().count();
    if length == 0 || length > SUMMARY_CHARS || summary.chars().any(char::is_control) {
        return Err(PolicyError::Summary);
    }
    let url = match announcement.url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) => Some(check_url(url)?),
    };
    Ok(Announcement {
        effective: effective.to_string(),
        summary: summary.to_owned(),
        url,
    })
}

fn check_url(url: &str) -> Result<String, PolicyError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| PolicyError::Url)?;
    let plain = !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if parsed.scheme() != "https" || parsed.host_str().is_none() || url.len() > URL_BYTES || !plain
    {
        return Err(PolicyError::Url);
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(effective: &str, url: Option<&str>) -> Announcement {
        Announcement {
            effective: effective.into(),
            summary: "  We keep request logs for 90 days instead of 30.  ".into(),
            url: url.map(str::to_owned),
        }
    }

    #[test]
    fn the_effective_date_is_at_least_fourteen_days_ahead() {
        let today: Date = "2030-01-01".parse().unwrap();
        let ok = check(announcement("2030-01-15", None), today).unwrap();
        assert_eq!(ok.effective, "2030-01-15");
        assert_eq!(
            ok.summary,
            "We keep request logs for 90 days instead of 30."
        );
        let soon = check(announcement("2030-01-14", None), today).unwrap_err();
        assert!(matches!(soon, PolicyError::TooSoon { .. }), "{soon}");
        assert!(soon.to_string().contains("2030-01-15 or later"), "{soon}");
        for bad in ["2030-1-20", "20300120", "next month", "", "2030-02-30"] {
            let refused = check(announcement(bad, None), today).unwrap_err();
            assert!(matches!(refused, PolicyError::Date), "{bad}: {refused}");
        }
    }

    #[test]
    fn the_link_is_https_and_the_summary_one_line() {
        let today: Date = "2030-01-01".parse().unwrap();
        let url = Some("https://example.com/privacy#changes");
        let ok = check(announcement("2031-01-01", url), today).unwrap();
        assert_eq!(ok.url.as_deref(), url);
        for bad in [
            "http://example.com",
            "javascript:alert(1)",
            "https://",
            "ftp://x",
        ] {
            let refused = check(announcement("2031-01-01", Some(bad)), today).unwrap_err();
            assert!(matches!(refused, PolicyError::Url), "{bad}");
        }
        let mut two_lines = announcement("2031-01-01", None);
        two_lines.summary = "one\ntwo".into();
        assert!(matches!(check(two_lines, today), Err(PolicyError::Summary)));
    }

    #[test]
    fn today_is_the_utc_day() {
        // 2030-01-01T23:59:59.999Z.
        assert_eq!(utc_day(1_893_542_399_999).to_string(), "2030-01-01");
    }
}
