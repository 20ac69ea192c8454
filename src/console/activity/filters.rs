//! The activity filters as they travel in URLs: read from the query string
//! (every value kept as typed, to show it again), checked into a
//! `UsageFilter` and a cursor, with one error per field; and the account's
//! time zone, which turns the filter's dates into instants and instants
//! into the times shown.

use std::fmt::Write as _;

use axum::http::Uri;
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Deserialize;
use tokun_storage::{AccountId, KeyId, KeyRecord, StatusClass, UsageCursor, UsageFilter};

/// The query string of `/activity`, `/activity.csv` and `/activity.json`,
/// as typed. Every field defaults, so a missing one is simply unset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActivityQuery {
    pub from: String,
    pub to: String,
    pub key: String,
    pub model: String,
    pub status: String,
    pub before: String,
}

/// The filters, checked.
#[derive(Debug)]
pub struct Filters {
    pub query: ActivityQuery,
    pub filter: UsageFilter,
    pub before: Option<UsageCursor>,
    /// `(field, message)`, in the form's order.
    pub errors: Vec<(&'static str, &'static str)>,
}

/// An account's time zone: the IANA name it chose and jiff's rules for it.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

/// Longest model name a filter may hold.
const MODEL_CHARS: usize = 200;

impl ActivityQuery {
    /// The query of `uri`; `None` when it cannot be read as a form.
    pub fn from_uri(uri: &Uri) -> Option<ActivityQuery> {
        axum::extract::Query::<ActivityQuery>::try_from_uri(uri)
            .ok()
            .map(|q| q.0)
    }

    /// Whether any filter (not the cursor) is set.
    pub fn is_filtered(&self) -> bool {
        [&self.from, &self.to, &self.key, &self.model, &self.status]
            .iter()
            .any(|value| !value.trim().is_empty())
    }

    /// The filters as a query string (without `before`), `&`-joined and
    /// percent-encoded; empty when nothing is set.
    pub fn to_query(&self) -> String {
        let mut out = String::new();
        for (name, value) in [
            ("from", &self.from),
            ("to", &self.to),
            ("key", &self.key),
            ("model", &self.model),
            ("status", &self.status),
        ] {
            let value = value.trim();
            if !value.is_empty() {
                if !out.is_empty() {
                    out.push('&');
                }
                out.push_str(name);
                out.push('=');
                out.push_str(&percent_encode(value));
            }
        }
        out
    }

    /// `path` with the filters, and `before` when given.
    pub fn link(&self, path: &str, before: Option<UsageCursor>) -> String {
        let mut query = self.to_query();
        if let Some(cursor) = before {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("before=");
            query.push_str(&cursor.to_text());
        }
        if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        }
    }
}

impl Filters {
    /// Checks `query` for `account`, whose keys are `keys`, in `zone`.
    pub fn check(
        query: ActivityQuery,
        account: AccountId,
        keys: &[KeyRecord],
        zone: &Zone,
    ) -> Filters {
        let mut errors = Vec::new();
        let mut filter = UsageFilter::default();
        let from = parse_date(&query.from, "from", &mut errors);
        let to = parse_date(&query.to, "to", &mut errors);
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                errors.push(("from", "The start date must be on or before the end date"));
            }
        }
        if let Some(from) = from {
            match zone.day_start_ms(from) {
                Some(ms) => filter.from_ms = ms,
                None => errors.push(("from", "Enter a start date between 1970 and 9999")),
            }
        }
        if let Some(to) = to {
            match to.tomorrow().ok().and_then(|next| zone.day_start_ms(next)) {
                Some(ms) => filter.to_ms = ms,
                None => errors.push(("to", "Enter an end date between 1970 and 9999")),
            }
        }
        let key = query.key.trim();
        if !key.is_empty() {
            match key.parse::<KeyId>() {
                Ok(id) if keys.iter().any(|k| k.id == id) => filter.key = Some(id),
                _ => errors.push(("key", "Choose one of your keys")),
            }
        }
        let model = query.model.trim();
        if model.chars().count() > MODEL_CHARS || model.chars().any(char::is_control) {
            errors.push(("model", "Enter a model name of up to 200 characters"));
        } else if !model.is_empty() {
            filter.model = Some(model.to_owned());
        }
        let status = query.status.trim();
        if !status.is_empty() {
            match StatusClass::parse(status) {
                Some(class) => filter.status = Some(class),
                None => errors.push(("status", "Choose a status from the list")),
            }
        }
        let before = query.before.trim();
        let before = if before.is_empty() {
            None
        } else {
            match UsageCursor::parse(before) {
                Some(cursor) if cursor.account() == account => Some(cursor),
                _ => {
                    errors.push((
                        "before",
                        "This page link is broken. Start again from the newest requests",
                    ));
                    None
                }
            }
        };
        Filters {
            query,
            filter,
            before,
            errors,
        }
    }
}

impl Zone {
    /// The zone named `name`, or UTC when jiff does not know the name
    /// (a profile saved before names were checked against the database).
    pub fn named(name: &str) -> Zone {
        match TimeZone::get(name) {
            Ok(tz) => Zone {
                name: name.to_owned(),
                tz,
            },
            Err(_) => Zone {
                name: "UTC".to_owned(),
                tz: TimeZone::UTC,
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `2026-12-07 01:02:03`, in this zone.
    pub fn display(&self, ms: u64) -> String {
        let (dt, _) = self.civil(ms);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }

    /// `2026-12-07T01:02:03.456+01:00`: RFC 3339 with this zone's offset.
    pub fn rfc3339(&self, ms: u64) -> String {
        let (dt, offset) = self.civil(ms);
        let mut out = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        );
        let seconds = offset.seconds();
        let sign = if seconds < 0 { '-' } else { '+' };
        let minutes = seconds.unsigned_abs() / 60;
        let _ = write!(out, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
        out
    }

    /// The first millisecond of `date` in this zone (a day starting in a
    /// daylight-saving gap starts when the gap ends).
    pub fn day_start_ms(&self, date: Date) -> Option<u64> {
        let zoned = date.to_zoned(self.tz.clone()).ok()?;
        u64::try_from(zoned.timestamp().as_millisecond()).ok()
    }

    fn civil(&self, ms: u64) -> (jiff::civil::DateTime, jiff::tz::Offset) {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let at = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX);
        (self.tz.to_datetime(at), self.tz.to_offset(at))
    }
}

/// `YYYY-MM-DD`, or nothing; anything else is an error on `field`.
fn parse_date(
    text: &str,
    field: &'static str,
    errors: &mut Vec<(&'static str, &'static str)>,
) -> Option<Date> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    match text.parse::<Date>() {
        Ok(date) if shaped && date.year() >= 1970 => Some(date),
        _ => {
            errors.push(match field {
                "from" => (
                    "from",
                    "Enter the start date as a real date, like 2026-12-31",
                ),
                _ => ("to", "Enter the end date as a real date, like 2026-12-31"),
            });
            None
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_days_in_the_accounts_zone() {
        let paris = Zone::named("Europe/Paris");
        let date: Date = "2026-07-01".parse().unwrap();
        // Midnight in Paris in summer is 22:00 UTC the day before.
        assert_eq!(paris.day_start_ms(date), Some(1_782_856_800_000));
        assert_eq!(paris.display(1_782_856_800_000), "2026-07-01 00:00:00");
        assert_eq!(
            paris.rfc3339(1_782_856_800_123),
            "2026-07-01T00:00:00.123+02:00"
        );
        let unknown = Zone::named("Mars/Olympus");
        assert_eq!(unknown.name(), "UTC");
        assert_eq!(
            Zone::named("America/St_Johns").rfc3339(0),
            "1969-12-31T20:30:00.000-03:30"
        );
    }

    #[test]
    fn filters_are_checked_field_by_field() {
        let zone = Zone::named("UTC");
        let account = AccountId::new(3);
        let check = |pairs: &[(&str, &str)]| {
            let query: String = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let uri: Uri = format!("/activity?{query}").parse().unwrap();
            Filters::check(ActivityQuery::from_uri(&uri).unwrap(), account, &[], &zone)
        };
        let ok = check(&[
            ("from", "2026-01-01"),
            ("to", "2026-01-01"),
            ("status", "5xx"),
        ]);
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
        assert_eq!(ok.filter.to_ms - ok.filter.from_ms, 86_400_000);
        assert_eq!(ok.filter.status, Some(StatusClass::ServerError));
        for bad in [
            vec![("from", "2026-01-02"), ("to", "2026-01-01")],
            vec![("from", "yesterday")],
            vec![("to", "2026-02-30")],
            vec![("to", "+002026-01-01")],
            vec![("key", "key_9")],
            vec![("status", "teapot")],
            vec![("before", "zz")],
            vec![("model", "a\u{1}b")],
        ] {
            assert!(!check(&bad).errors.is_empty(), "{bad:?}");
        }
        let query = check(&[("model", "a b&c"), ("status", "ok")]).query;
        assert_eq!(query.to_query(), "model=a%20b%26c&status=ok");
        assert!(query.is_filtered());
    }
}
