//! Reading the request log (`usage` tree) a page at a time: filters (time
//! range, key, model, status class), newest first, with keyset paging — a
//! page starts just below a cursor (the tree key of the last row shown) and
//! never reads the log above it, and a sparse filter stops after a bounded
//! number of reads and says where to go on. Nothing here loads the whole
//! log. It does not know time zones or pages: callers turn dates into
//! milliseconds.

use std::ops::Bound;

use crate::codec::{decode, usage_key};
use crate::error::StorageError;
use crate::ids::{AccountId, KeyId};
use crate::records::UsageRecord;
use crate::store::Store;

/// Where a request ended, as the activity filters group it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// Answered in full.
    Ok,
    /// A 4xx status.
    ClientError,
    /// A 5xx status.
    ServerError,
    /// Answered, then ended early (`error_kind` says why).
    Error,
}

/// What a page of the request log is filtered by. The default matches all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageFilter {
    /// Inclusive, Unix milliseconds.
    pub from_ms: u64,
    /// Exclusive, Unix milliseconds; `u64::MAX` is "no end".
    pub to_ms: u64,
    pub key: Option<KeyId>,
    /// Matches the model asked for or the model that served.
    pub model: Option<String>,
    pub status: Option<StatusClass>,
}

/// A position in one account's request log: the tree key of a row. Opaque
/// to callers; it travels in URLs as 48 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UsageCursor([u8; 24]);

/// One row of the log with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub cursor: UsageCursor,
    pub record: UsageRecord,
}

/// One page, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsagePage {
    pub rows: Vec<UsageRow>,
    /// Where the next older page starts (exclusive), if there may be more.
    pub older: Option<UsageCursor>,
    /// Records read (matching or not).
    pub scanned: usize,
    /// The read budget ran out before the page filled: `older` continues
    /// the search from the last record read.
    pub stopped_early: bool,
}

impl StatusClass {
    pub const ALL: [StatusClass; 4] = [
        StatusClass::Ok,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Error,
    ];

    /// The class of a logged request: its HTTP status first, then whether
    /// it ended early.
    pub fn of(record: &UsageRecord) -> StatusClass {
        match record.status {
            500..=599 => StatusClass::ServerError,
            400..=499 => StatusClass::ClientError,
            _ if record.error_kind.is_some() => StatusClass::Error,
            _ => StatusClass::Ok,
        }
    }

    /// `ok`, `4xx`, `5xx` or `error`: the filter's value in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Ok => "ok",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<StatusClass> {
        StatusClass::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl Default for UsageFilter {
    fn default() -> Self {
        UsageFilter {
            from_ms: 0,
            to_ms: u64::MAX,
            key: None,
            model: None,
            status: None,
        }
    }
}

impl UsageFilter {
    /// Whether `record` passes the filters the tree key does not already
    /// decide (time is the key's; this checks it too, for callers with a
    /// record in hand).
    pub fn matches(&self, record: &UsageRecord) -> bool {
        record.at_ms >= self.from_ms
            && record.at_ms < self.to_ms
            && self.key.is_none_or(|key| record.key == Some(key))
            && self
                .model
                .as_deref()
                .is_none_or(|model| record.model == model || record.served_model == model)
            && self
                .status
                .is_none_or(|class| StatusClass::of(record) == class)
    }
}

impl UsageCursor {
    /// 48 lowercase hex digits.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The text of [`UsageCursor::to_text`], or `None` for anything else.
    pub fn parse(text: &str) -> Option<UsageCursor> {
        if text.len() != 48 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut key = [0u8; 24];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(UsageCursor(key))
    }

    /// Whose log this position is in.
    pub fn account(&self) -> AccountId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.0[..8]);
        AccountId::new(u64::from_be_bytes(id))
    }

    fn from_key(key: &[u8]) -> Option<UsageCursor> {
        key.try_into().ok().map(UsageCursor)
    }
}

impl Store {
    /// One page of `account`'s request log, newest first: at most `limit`
    /// rows matching `filter`, strictly older than `before` when given,
    /// reading at most `max_scan` records. A cursor from another account's
    /// log reads nothing.
    pub fn usage_page(
        &self,
        account: AccountId,
        filter: &UsageFilter,
        before: Option<UsageCursor>,
        limit: usize,
        max_scan: usize,
    ) -> Result<UsagePage, StorageError> {
        let mut page = UsagePage {
            rows: Vec::new(),
            older: None,
            scanned: 0,
            stopped_early: false,
        };
        if before.is_some_and(|cursor| cursor.account() != account) || limit == 0 {
            return Ok(page);
        }
        let start = usage_key(account.get(), filter.from_ms, 0);
        let end = match filter.to_ms {
            u64::MAX => Bound::Included(usage_key(account.get(), u64::MAX, u64::MAX)),
            to_ms => Bound::Excluded(usage_key(account.get(), to_ms, 0)),
        };
        let end = match (end, before) {
            (Bound::Included(end) | Bound::Excluded(end), Some(cursor)) if cursor.0 <= end => {
                Bound::Excluded(cursor.0)
            }
            (end, _) => end,
        };
        if !range_is_open(&start, &end) {
            return Ok(page);
        }
        let range = (Bound::Included(start), end);
        let prefilter = Prefilter::of(filter)?;
        let mut last_read = None;
        for item in self.trees.usage.range(range).rev() {
            if page.scanned >= max_scan {
                // More is left, unread: go on from the last record read, or
                // from the last row when the page is full.
                if page.rows.len() < limit {
                    page.stopped_early = true;
                    page.older = last_read;
                } else {
                    page.older = page.rows.last().map(|row| row.cursor);
                }
                return Ok(page);
            }
            let (key, value) = item.map_err(StorageError::sled("scan usage"))?;
            page.scanned += 1;
            let cursor = UsageCursor::from_key(&key).ok_or_else(|| bad_key(&key))?;
            last_read = Some(cursor);
            if !prefilter.may_match(&value) {
                continue;
            }
            let record: UsageRecord = decode("usage", &value)?;
            if !filter.matches(&record) {
                continue;
            }
            if page.rows.len() == limit {
                // A match past a full page: an older page exists.
                page.older = page.rows.last().map(|row| row.cursor);
                return Ok(page);
            }
            page.rows.push(UsageRow { cursor, record });
        }
        Ok(page)
    }

    /// The record at `cursor` if it is in `account`'s log.
    pub fn usage_at(
        &self,
        account: AccountId,
        cursor: UsageCursor,
    ) -> Result<Option<UsageRecord>, StorageError> {
        if cursor.account() != account {
            return Ok(None);
        }
        match self.trees.usage.get(cursor.0) {
            Ok(Some(bytes)) => decode("usage", &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(err) => Err(StorageError::sled("read usage")(err)),
        }
    }

    /// `account`'s newest record of `request_id`, looking at most
    /// `max_scan` records back. Records are matched on their encoded
    /// prefix (serde writes `request_id` first), so a miss decodes nothing.
    pub fn find_usage(
        &self,
        account: AccountId,
        request_id: &str,
        max_scan: usize,
    ) -> Result<Option<UsageRow>, StorageError> {
        let id = serde_json::to_string(request_id).map_err(|err| StorageError::Encode {
            what: "request id",
            message: err.to_string(),
        })?;
        let prefix = format!("{{\"request_id\":{id},");
        for item in self
            .trees
            .usage
            .scan_prefix(account.get().to_be_bytes())
            .rev()
            .take(max_scan)
        {
            let (key, value) = item.map_err(StorageError::sled("scan usage"))?;
            if value.starts_with(prefix.as_bytes()) {
                let cursor = UsageCursor::from_key(&key).ok_or_else(|| bad_key(&key))?;
                let record = decode("usage", &value)?;
                return Ok(Some(UsageRow { cursor, record }));
            }
        }
        Ok(None)
    }
}

/// Byte patterns a record's JSON must hold to match a filter: checked
/// before decoding, so a sparse filter decodes only likely rows. Each is a
/// necessary condition only (serde_json's compact output, field names as
/// `UsageRecord` spells them); `UsageFilter::matches` decides.
struct Prefilter {
    /// `(pattern, followed by a non-digit)`.
    patterns: Vec<(Vec<u8>, bool)>,
}

impl Prefilter {
    fn of(filter: &UsageFilter) -> Result<Prefilter, StorageError> {
        let mut patterns = Vec::new();
        if let Some(model) = &filter.model {
            let quoted = serde_json::to_string(model).map_err(|err| StorageError::Encode {
                what: "model filter",
                message: err.to_string(),
            })?;
            patterns.push((quoted.into_bytes(), false));
        }
        if let Some(key) = filter.key {
            patterns.push((format!("\"key\":{}", key.get()).into_bytes(), true));
        }
        match filter.status {
            Some(StatusClass::ServerError) => patterns.push((b"\"status\":5".to_vec(), false)),
            Some(StatusClass::ClientError) => patterns.push((b"\"status\":4".to_vec(), false)),
            Some(StatusClass::Error) => patterns.push((b"\"error_kind\":\"".to_vec(), false)),
            Some(StatusClass::Ok) | None => {}
        }
        Ok(Prefilter { patterns })
    }

    fn may_match(&self, bytes: &[u8]) -> bool {
        self.patterns
            .iter()
            .all(|(pattern, number)| contains(bytes, pattern, *number))
    }
}

/// Whether `hay` holds `needle` (not followed by a digit, when `number`).
fn contains(hay: &[u8], needle: &[u8], number: bool) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(found) = hay
        .get(from..)
        .and_then(|h| h.iter().position(|&b| b == first))
    {
        let start = from + found;
        let end = start + needle.len();
        if hay.get(start + 1..end) == Some(rest)
            && !(number && hay.get(end).is_some_and(u8::is_ascii_digit))
        {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Whether `start..end` can hold a key.
fn range_is_open(start: &[u8; 24], end: &Bound<[u8; 24]>) -> bool {
    match end {
        Bound::Included(end) => start <= end,
        Bound::Excluded(end) => start < end,
        Bound::Unbounded => true,
    }
}

fn bad_key(key: &[u8]) -> StorageError {
    StorageError::Decode {
        tree: "usage",
        message: format!("a usage key of {} bytes", key.len()),
    }
}

#[cfg(test)]
mod tests;
