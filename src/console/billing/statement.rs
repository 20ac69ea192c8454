//! The monthly statement (`/billing/statement?month=YYYY-MM`, UTC months):
//! opening balance, one line per kind of movement, closing balance — from
//! the ledger through `Store::period`, so opening + lines = closing to the
//! nano and one month's closing is the next one's opening. Each line links
//! to its entries (`entries.rs`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use tokun_storage::{Books, Change, EntryKind, LedgerEntry, Nanos, Period};

use super::super::format::{MS_PER_DAY, count, datetime, usd, ymd};
use super::super::layout::{error_summary, page, respond};
use super::super::{Signed, internal};
use crate::state::AppState;

/// A UTC calendar month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    year: i64,
    /// 1 to 12.
    month: u32,
}

/// The statement's lines, in the order shown. Every ledger entry falls in
/// exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Topups,
    Usage,
    Recovered,
    Credits,
    Debits,
    Refunds,
    Holds,
}

/// One line: how many entries and what they did to the balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    pub group: Group,
    pub entries: u64,
    pub balance: Nanos,
}

/// A month of an account's ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub month: Month,
    pub opening: Books,
    pub closing: Books,
    pub lines: Vec<Line>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StatementQuery {
    month: String,
}

impl Group {
    pub const ALL: [Group; 7] = [
        Group::Topups,
        Group::Usage,
        Group::Recovered,
        Group::Credits,
        Group::Debits,
        Group::Refunds,
        Group::Holds,
    ];

    pub fn of(entry: &LedgerEntry) -> Group {
        match entry.kind {
            EntryKind::Topup => Group::Topups,
            EntryKind::Settle => Group::Usage,
            EntryKind::Recovered => Group::Recovered,
            EntryKind::Adjustment if entry.amount.is_negative() => Group::Debits,
            EntryKind::Adjustment => Group::Credits,
            EntryKind::Refund => Group::Refunds,
            EntryKind::Hold | EntryKind::Extend | EntryKind::Release => Group::Holds,
        }
    }

    /// The `kind=` of its entries' page.
    pub fn slug(self) -> &'static str {
        match self {
            Group::Topups => "topup",
            Group::Usage => "usage",
            Group::Recovered => "recovered",
            Group::Credits => "credit",
            Group::Debits => "debit",
            Group::Refunds => "refund",
            Group::Holds => "holds",
        }
    }

    pub fn parse(slug: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.slug() == slug)
    }

    pub fn label(self) -> &'static str {
        match self {
            Group::Topups => "Top-ups",
            Group::Usage => "Usage",
            Group::Recovered => "Requests settled at restart",
            Group::Credits => "Credits from tokun",
            Group::Debits => "Debits by tokun",
            Group::Refunds => "Refunds",
            Group::Holds => "Holds placed and released",
        }
    }

    pub fn explanation(self) -> &'static str {
        match self {
            Group::Topups => "Payments and signup credit added to the balance.",
            Group::Usage => "What settled requests cost.",
            Group::Recovered => "Requests a restart interrupted, settled at what they had used.",
            Group::Credits => "Credit added by an operator, with a reason.",
            Group::Debits => "Amounts taken by an operator, with a reason.",
            Group::Refunds => "Payments refunded to your card.",
            Group::Holds => "Funds reserved while requests run; they never change the balance.",
        }
    }
}

impl Month {
    pub fn new(year: i64, month: u32) -> Option<Month> {
        ((1970..=9999).contains(&year) && (1..=12).contains(&month))
            .then_some(Month { year, month })
    }

    /// `2026-12`.
    pub fn parse(text: &str) -> Option<Month> {
        let (year, month) = text.trim().split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(year) || !all_digits(month) {
            return None;
        }
        Month::new(year.parse().ok()?, month.parse().ok()?)
    }

    /// The month `ms` falls in.
    pub fn containing(ms: u64) -> Month {
        let (year, month, _) = ymd(ms / MS_PER_DAY);
        Month { year, month }
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                month: self.month + 1,
                ..self
            }
        }
    }

    pub fn previous(self) -> Option<Month> {
        if self.month == 1 {
            Month::new(self.year - 1, 12)
        } else {
            Month::new(self.year, self.month - 1)
        }
    }

    /// Its first millisecond, UTC.
    pub fn start_ms(self) -> u64 {
        let days = days_from_civil(self.year, self.month, 1);
        u64::try_from(days).unwrap_or(0) * MS_PER_DAY
    }

    /// The first millisecond of the next month.
    pub fn end_ms(self) -> u64 {
        self.next().start_ms()
    }

    /// `December 2026`.
    pub fn label(self) -> String {
        const NAMES: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        let name = NAMES.get(self.month as usize - 1).unwrap_or(&"");
        format!("{name} {}", self.year)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Statement {
    /// `month` of `account`'s ledger, read whole from the store, and where
    /// the account's ledger stood when it was read.
    pub fn read(
        store: &tokun_storage::Store,
        account: tokun_storage::AccountId,
        month: Month,
    ) -> Result<(Statement, Option<(u64, Books)>), tokun_storage::StorageError> {
        let mut statement = Statement {
            month,
            opening: Books::ZERO,
            closing: Books::ZERO,
            lines: Group::ALL
                .into_iter()
                .map(|group| Line {
                    group,
                    entries: 0,
                    balance: Nanos::ZERO,
                })
                .collect(),
        };
        let Period {
            opening,
            closing,
            newest,
            ..
        } = store.period(
            account,
            month.start_ms(),
            month.end_ms(),
            |entry, change: Change| statement.add(entry, change),
        )?;
        statement.opening = opening;
        statement.closing = closing;
        Ok((statement, newest))
    }

    /// Counts one entry inside the month on its line.
    pub(super) fn add(&mut self, entry: &LedgerEntry, change: Change) {
        let group = Group::of(entry);
        if let Some(line) = self.lines.iter_mut().find(|l| l.group == group) {
            line.entries += 1;
            line.balance = line.balance.saturating_add(change.balance);
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.entries == 0)
    }
}

/// `GET /billing/statement?month=YYYY-MM` (this month without one).
pub async fn show(
    State(state): State<AppState>,
    who: Signed,
    Query(query): Query<StatementQuery>,
) -> Response {
    let this_month = Month::containing(tokun_providers::clock::unix_ms());
    let (month, error) = match query.month.trim() {
        "" => (this_month, None),
        text => match Month::parse(text) {
            Some(month) => (month, None),
            None => (this_month, Some("Enter a month like 2026-12")),
        },
    };
    if let Some(error) = error {
        let body = html! {
            h1 { "Statement" }
            (error_summary([("month", error)]))
            (picker(this_month, Some(error)))
        };
        return respond(StatusCode::BAD_REQUEST, page("Billing", Some(&who), body));
    }
    let now = tokun_providers::clock::unix_ms();
    let statements = state.console().statements();
    let statement = match statements.get(&state.services().store, who.account, month, now) {
        Ok(statement) => statement,
        Err(error) => return internal(error, Some(&who)),
    };
    let body = html! {
        h1 { "Statement for " (month.label()) }
        p.lead { "Months are UTC months: from " (datetime(month.start_ms())) " to " (datetime(month.end_ms())) "." }
        (picker(month, None))
        (month_nav(month, this_month, "/billing/statement?"))
        (statement_table(&statement, tokun_providers::clock::unix_ms()))
        p { a href="/billing" { "Back to billing" } }
    };
    respond(StatusCode::OK, page("Billing", Some(&who), body))
}

fn picker(month: Month, error: Option<&str>) -> Markup {
    html! {
        form.month-picker method="get" action="/billing/statement" {
            div.field.field-error[error.is_some()] {
                label for="month" { "Month (UTC)" }
                @if let Some(error) = error {
                    span.message id="month-error" { span.visually-hidden { "Error: " } (error) }
                }
                input #month type="month" name="month" value=(month) min="1970-01" max="9999-12"
                    aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| "month-error")];
            }
            button type="submit" { "Show" }
        }
    }
}

fn month_nav(month: Month, this_month: Month, base: &str) -> Markup {
    html! {
        nav.pager aria-label="Months" {
            @if let Some(previous) = month.previous() {
                a rel="prev" href=(format!("{base}month={previous}")) { "← " (previous.label()) }
            }
            @if month < this_month {
                a rel="next" href=(format!("{base}month={}", month.next())) { (month.next().label()) " →" }
            }
        }
    }
}

fn statement_table(statement: &Statement, now: u64) -> Markup {
    let month = statement.month;
    html! {
        div.table-wrap {
            table.statement {
                caption { "Balance for " (month.label()) " (UTC)" }
                thead { tr { th scope="col" { span.visually-hidden { "Line" } } th.num scope="col" { "Amount" } } }
                tbody {
                    tr.total {
                        th scope="row" { "Opening balance" small { "at " (datetime(month.start_ms())) } }
                        td.num #opening data-nanos=(statement.opening.balance.get()) { (usd(statement.opening.balance)) }
                    }
                    @if statement.is_empty() {
                        tr { td.empty colspan="2" { "No activity in " (month.label()) "." } }
                    }
                    @for line in statement.lines.iter().filter(|l| l.entries > 0) {
                        tr.line data-kind=(line.group.slug()) {
                            th scope="row" {
                                a href=(format!("/billing/entries?month={month}&kind={}", line.group.slug())) { (line.group.label()) }
                                small { (count(line.entries)) " " (if line.entries == 1 { "entry" } else { "entries" }) " · " (line.group.explanation()) }
                            }
                            td.num data-nanos=(line.balance.get()) { (signed(line.balance)) }
                        }
                    }
                    tr.total {
                        th scope="row" { "Closing balance" small {
                            @if month.end_ms() > now { "so far: the month ends " (datetime(month.end_ms())) }
                            @else { "at " (datetime(month.end_ms())) }
                        } }
                        td.num #closing data-nanos=(statement.closing.balance.get()) { (usd(statement.closing.balance)) }
                    }
                }
            }
        }
        @if !statement.closing.held.is_zero() {
            p.muted { "Of the closing balance, " (usd(statement.closing.held)) " was held by requests still running." }
        }
    }
}

/// `+$1.00`, `−$0.50`, `$0.00`.
pub(super) fn signed(amount: Nanos) -> String {
    if amount.get() > 0 {
        format!("+{}", usd(amount))
    } else {
        usd(amount)
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil,
/// the inverse of `format::ymd`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_and_step_in_utc() {
        let december = Month::parse("2026-12").unwrap();
        assert_eq!(december.to_string(), "2026-12");
        assert_eq!(december.next().to_string(), "2027-01");
        assert_eq!(december.next().previous(), Some(december));
        assert_eq!(Month::parse("1970-01").unwrap().previous(), None);
        for bad in [
            "", "2026", "2026-13", "2026-00", "26-12", "2026-1", "2026-1a", "1969-12",
        ] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
        assert_eq!(Month::parse("1970-01").unwrap().start_ms(), 0);
        // 2024-03-01 follows a leap day.
        let march = Month::parse("2024-03").unwrap();
        assert_eq!(march.start_ms() / MS_PER_DAY, 19_783);
        assert_eq!(Month::containing(march.start_ms()), march);
        assert_eq!(
            Month::containing(march.start_ms() - 1).to_string(),
            "2024-02"
        );
        for day in [0u64, 59, 19_782, 20_000, 2_932_896] {
            let (y, m, d) = ymd(day);
            assert_eq!(days_from_civil(y, m, d), day as i64);
        }
    }

    #[test]
    fn every_kind_has_one_group_and_slugs_read_back() {
        for group in Group::ALL {
            assert_eq!(Group::parse(group.slug()), Some(group));
        }
        assert_eq!(Group::parse("nope"), None);
    }
}
