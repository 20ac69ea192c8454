//! The access log's day files: their names (`access-YYYY-MM-DD.log`, one per
//! UTC day) and their expiry. Writing them is `writer.rs`'s.

use std::path::Path;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

const MS_PER_DAY: u64 = 86_400_000;
const PREFIX: &str = "access-";
const SUFFIX: &str = ".log";

/// The UTC day (days since 1970-01-01) a Unix millisecond falls in.
pub fn day_of(unix_ms: u64) -> u64 {
    unix_ms / MS_PER_DAY
}

/// `access-YYYY-MM-DD.log` for a UTC day number.
pub fn day_file_name(day: u64) -> String {
    let seconds = i64::try_from(day.saturating_mul(86_400)).unwrap_or(i64::MAX);
    let date = Timestamp::from_second(seconds)
        .unwrap_or(Timestamp::MAX)
        .to_zoned(TimeZone::UTC)
        .date();
    format!("{PREFIX}{date}{SUFFIX}")
}

/// The UTC day of a file named `access-YYYY-MM-DD.log`; `None` for any
/// other name, so nothing else in the folder is ever touched.
pub fn day_of_file_name(name: &str) -> Option<u64> {
    let date: Date = name
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()?;
    let seconds = date.to_zoned(TimeZone::UTC).ok()?.timestamp().as_second();
    u64::try_from(seconds).ok().map(|s| s / 86_400)
}

/// Deletes the day files in `dir` older than `keep_days`: a file goes once
/// its day is more than `keep_days` days before today, so every line stays
/// at least `keep_days` days (and at most one more, plus the sweep's period).
/// Today's file is never deleted. How many files went; a missing folder is 0.
pub fn remove_expired(dir: &Path, keep_days: u64, now_ms: u64) -> std::io::Result<usize> {
    let today = day_of(now_ms);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(day) = name.to_str().and_then(day_of_file_name) else {
            continue;
        };
        if day.saturating_add(keep_days) < today {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Another sweep got there first.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(removed)
}
