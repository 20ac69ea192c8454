//! How the console prints money and time: USD from integer nanos (never a
//! float), and UTC dates from Unix milliseconds (civil-from-days, so no
//! calendar crate is needed for the foundation).

use tokun_storage::Nanos;

pub const MS_PER_DAY: u64 = 86_400_000;

/// `$5.00`, `$0.000123`, `−$1.50`: `Nanos`' own decimal text with a sign
/// and a dollar sign.
pub fn usd(amount: Nanos) -> String {
    let text = amount.to_string();
    match text.strip_prefix('-') {
        Some(magnitude) => format!("−${magnitude}"),
        None => format!("${text}"),
    }
}

/// `$5.00` for amounts of a cent or more, else the exact small amount: the
/// dashboard's headline numbers, rounded down to the cent when large.
pub fn usd_short(amount: Nanos) -> String {
    const CENT: i64 = 10_000_000;
    if amount.get().abs() >= CENT {
        usd(Nanos::new(amount.get() - amount.get() % CENT))
    } else {
        usd(amount)
    }
}

/// The UTC calendar date of a day number (days since 1970-01-01).
pub fn ymd(day: u64) -> (i64, u32, u32) {
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(day).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// `2026-12-06`.
pub fn date(day: u64) -> String {
    let (y, m, d) = ymd(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `Dec 6`: a chart axis label.
pub fn short_date(day: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_, m, d) = ymd(day);
    let month = MONTHS.get(m.saturating_sub(1) as usize).unwrap_or(&"");
    format!("{month} {d}")
}

/// `2026-12-06 23:59 UTC`.
pub fn datetime(ms: u64) -> String {
    let minutes = (ms % MS_PER_DAY) / 60_000;
    format!(
        "{} {:02}:{:02} UTC",
        date(ms / MS_PER_DAY),
        minutes / 60,
        minutes % 60
    )
}

/// `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_prints_from_nanos() {
        assert_eq!(usd(Nanos::new(5_000_000_000)), "$5.00");
        assert_eq!(usd(Nanos::new(123_000)), "$0.000123");
        assert_eq!(usd(Nanos::new(-1_500_000_000)), "−$1.50");
        assert_eq!(usd(Nanos::new(i64::MIN)), "−$9223372036.854775808");
        assert_eq!(usd_short(Nanos::new(4_999_999_999)), "$4.99");
        assert_eq!(usd_short(Nanos::new(123_000)), "$0.000123");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(19_782), "2024-02-29");
        assert_eq!(datetime(1_733_529_540_000), "2024-12-06 23:59 UTC");
        assert_eq!(short_date(19_782), "Feb 29");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
    }
}
