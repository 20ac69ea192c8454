//! What an upstream says about its own rate limits in response headers, read
//! once per response so the provider actor can tighten its buckets before the
//! upstream starts answering 429.
//!
//! - OpenAI (and compatible servers): `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
//!   resets as Go-style durations (`1s`, `6m0s`, `20ms`, `1.5s`).
//! - Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`,
//!   resets as RFC 3339 instants (`2026-11-25T19:20:00Z`).
//!
//! Headers that are missing or malformed are ignored: they can only tighten.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// One limit window as the upstream reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The whole window (per minute for OpenAI and Anthropic), when reported.
    pub limit: Option<u32>,
    /// What is left in the current window.
    pub remaining: u32,
    /// When the window is full again, from now.
    pub reset: Option<Duration>,
}

/// The limits one response reported; both empty when it said nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

/// An upstream's answer together with the limits its headers reported.
#[derive(Debug)]
pub struct Reply<T> {
    pub body: T,
    pub limits: RateLimits,
}

impl<T> Reply<T> {
    /// An answer whose upstream reported nothing (the echo provider).
    pub fn unlimited(body: T) -> Self {
        Self {
            body,
            limits: RateLimits::default(),
        }
    }
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Reads OpenAI-style headers, else Anthropic-style ones.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::read(headers, crate::clock::now())
    }

    fn read(headers: &HeaderMap, now: SystemTime) -> Self {
        let openai = |what: &str| {
            window(
                headers,
                &format!("x-ratelimit-limit-{what}"),
                &format!("x-ratelimit-remaining-{what}"),
                &format!("x-ratelimit-reset-{what}"),
                parse_go_duration,
            )
        };
        let anthropic = |what: &str| {
            window(
                headers,
                &format!("anthropic-ratelimit-{what}-limit"),
                &format!("anthropic-ratelimit-{what}-remaining"),
                &format!("anthropic-ratelimit-{what}-reset"),
                |value| parse_rfc3339(value).map(|at| until(at, now)),
            )
        };
        Self {
            requests: openai("requests").or_else(|| anthropic("requests")),
            tokens: openai("tokens").or_else(|| anthropic("tokens")),
        }
    }
}

fn window(
    headers: &HeaderMap,
    limit: &str,
    remaining: &str,
    reset: &str,
    parse_reset: impl Fn(&str) -> Option<Duration>,
) -> Option<Window> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok()).map(saturate);
    Some(Window {
        remaining: number(remaining)?,
        limit: number(limit),
        reset: text(reset).and_then(parse_reset),
    })
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// `1h2m3.5s`, `6m0s`, `20ms`, `1s`, `0.5s`, `150us`: the format of Go's
/// `time.Duration`, which OpenAI's reset headers use.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` as seconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0i64)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        let offset = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
        (clock, sign * offset)
    };
    let mut clock_parts = clock.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: f64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 - offset_seconds;
    let whole = u64::try_from(seconds).ok()?;
    let fraction = Duration::try_from_secs_f64(second).ok()?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(whole))?
        .checked_add(fraction)
}

/// Days from 1970-01-01 to the given civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("1s"), Some(ms(1000)));
        assert_eq!(parse_go_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(parse_go_duration("20ms"), Some(ms(20)));
        assert_eq!(parse_go_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_go_duration("1h2m3s"), Some(ms(3_723_000)));
        assert_eq!(parse_go_duration("150us"), Some(Duration::from_micros(150)));
        for bad in ["", "s", "10", "1x", "1.2.3s", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_instants() {
        let at = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(at("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(at("2026-11-25T19:20:00Z"), Some(1_795_634_400.0));
        assert_eq!(at("2026-11-25T20:20:00+01:00"), Some(1_795_634_400.0));
        assert_eq!(at("2026-11-25T19:20:00.5Z"), Some(1_795_634_400.5));
        for bad in [
            "",
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-11-25T19:20Z",
            "soon",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_openai_headers() {
        let limits = RateLimits::from_headers(&headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]));
        assert_eq!(
            limits.requests,
            Some(Window {
                limit: Some(60),
                remaining: 59,
                reset: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(
            limits.tokens,
            Some(Window {
                limit: Some(150_000),
                remaining: 149_984,
                reset: Some(Duration::from_secs(360))
            })
        );
    }

    #[test]
    fn reads_anthropic_headers_relative_to_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_634_390);
        let limits = RateLimits::read(
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-11-25T19:20:00Z"),
                ("anthropic-ratelimit-tokens-remaining", "1000"),
                ("anthropic-ratelimit-tokens-reset", "2026-11-25T19:19:00Z"),
            ]),
            now,
        );
        assert_eq!(
            limits.requests,
            Some(Window {
                limit: Some(50),
                remaining: 0,
                reset: Some(Duration::from_secs(10))
            })
        );
        // A reset in the past means "now"; a missing limit stays unknown.
        assert_eq!(
            limits.tokens,
            Some(Window {
                limit: None,
                remaining: 1000,
                reset: Some(Duration::ZERO)
            })
        );
    }

    #[test]
    fn missing_or_malformed_headers_say_nothing() {
        assert!(RateLimits::from_headers(&HeaderMap::new()).is_empty());
        let limits = RateLimits::from_headers(&headers(&[
            ("x-ratelimit-remaining-requests", "lots"),
            ("x-ratelimit-remaining-tokens", "-5"),
        ]));
        assert!(limits.is_empty());
        // A malformed reset keeps the remaining count.
        let limits = RateLimits::from_headers(&headers(&[
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "later"),
        ]));
        assert_eq!(
            limits.requests,
            Some(Window {
                limit: None,
                remaining: 3,
                reset: None
            })
        );
    }
}
