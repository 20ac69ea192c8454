//! The dashboard (`/`): available and held credit, spend today and over 7
//! and 30 days, the runway at the 7-day average, a 30-day spend chart by
//! model (inline SVG, with the same numbers as a table), and the latest
//! requests. Days are UTC days. Money is summed in `Nanos`; floats only
//! size the chart's bars. The sums come from `Store::daily_spend`
//! (`storage/src/usage_daily.rs`), per-day totals kept up to date from the
//! records written since the last load, so a load does not decode the
//! 30 days' records (10,000 took 11.6 ms to read; benches/README.md, console).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use tokun_storage::{DailySpend, Nanos, UsageRecord};

use super::format::{MS_PER_DAY, count, date, datetime, short_date, usd, usd_short};
use super::layout::{page, respond};
use super::{Signed, internal};
use crate::state::AppState;

/// Days in the chart.
const DAYS: usize = 30;
/// Models drawn in their own colour; the rest are summed as "other".
const SERIES: usize = 5;

/// Spend over the last 30 UTC days, by model.
#[derive(Debug, PartialEq, Eq)]
pub struct Spend {
    /// Day number (days since 1970-01-01) of the first of the 30 days.
    pub first_day: u64,
    /// The chart's series: the top models by spend, then "other" if any.
    pub series: Vec<String>,
    /// `[day][series]`, oldest day first.
    pub by_day: Vec<Vec<Nanos>>,
    pub requests: Vec<u64>,
    pub today: Nanos,
    pub week: Nanos,
    pub month: Nanos,
}

impl Spend {
    /// Sums `records` (any order) into the 30 days ending with `now_ms`'s
    /// day: what `from_daily` is tested against.
    #[cfg(test)]
    pub fn from_usage(records: &[UsageRecord], now_ms: u64) -> Spend {
        let first_day = (now_ms / MS_PER_DAY).saturating_sub(DAYS as u64 - 1);
        let mut daily = DailySpend {
            first_day,
            days: std::collections::BTreeMap::new(),
        };
        for record in records {
            let day = record.at_ms / MS_PER_DAY;
            if day < first_day {
                continue;
            }
            let day = daily.days.entry(day).or_default();
            let cost = day.by_model.entry(record.model.clone()).or_default();
            *cost = cost.saturating_add(record.cost);
            day.requests += 1;
        }
        Spend::from_daily(&daily, now_ms)
    }

    /// The 30 days ending with `now_ms`'s day, from per-day sums
    /// (`Store::daily_spend`, which the page reads instead of the records).
    pub fn from_daily(daily: &DailySpend, now_ms: u64) -> Spend {
        let today = now_ms / MS_PER_DAY;
        let first_day = today.saturating_sub(DAYS as u64 - 1);
        let mut per_model: HashMap<&str, [Nanos; DAYS]> = HashMap::new();
        let mut requests = vec![0u64; DAYS];
        for (day, spend) in daily.days.range(first_day..) {
            let slot = (day - first_day) as usize;
            if slot >= DAYS {
                continue;
            }
            for (model, cost) in &spend.by_model {
                let days = per_model
                    .entry(model.as_str())
                    .or_insert([Nanos::ZERO; DAYS]);
                days[slot] = days[slot].saturating_add(*cost);
            }
            requests[slot] += spend.requests;
        }
        let total = |days: &[Nanos]| days.iter().fold(Nanos::ZERO, |a, b| a.saturating_add(*b));
        let mut models: Vec<(&str, [Nanos; DAYS])> = per_model.into_iter().collect();
        models.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(b.0)));
        let mut series: Vec<String> = Vec::new();
        let mut by_day = vec![Vec::new(); DAYS];
        for (i, (model, days)) in models.iter().enumerate() {
            if i < SERIES {
                series.push((*model).to_owned());
                for (slot, cost) in days.iter().enumerate() {
                    by_day[slot].push(*cost);
                }
            } else {
                if i == SERIES {
                    series.push("other".to_owned());
                    by_day.iter_mut().for_each(|day| day.push(Nanos::ZERO));
                }
                for (slot, cost) in days.iter().enumerate() {
                    if let Some(other) = by_day[slot].last_mut() {
                        *other = other.saturating_add(*cost);
                    }
                }
            }
        }
        let day_totals: Vec<Nanos> = by_day.iter().map(|day| total(day)).collect();
        Spend {
            first_day,
            series,
            today: total(&day_totals[DAYS - 1..]),
            week: total(&day_totals[DAYS - 7..]),
            month: total(&day_totals),
            by_day,
            requests,
        }
    }

    fn day_total(&self, slot: usize) -> Nanos {
        self.by_day[slot]
            .iter()
            .fold(Nanos::ZERO, |a, b| a.saturating_add(*b))
    }
}

/// "≈ N days at your 7-day average", from integer nanos.
pub fn runway(available: Nanos, week: Nanos) -> String {
    if week.get() <= 0 {
        return "No spend in the last 7 days".to_owned();
    }
    if available.get() <= 0 {
        return "No credit left".to_owned();
    }
    let days = i128::from(available.get()) * 7 / i128::from(week.get());
    match days {
        3_651.. => "More than 10 years at your 7-day average".to_owned(),
        0 => "Less than a day at your 7-day average".to_owned(),
        1 => "≈ 1 day at your 7-day average".to_owned(),
        days => format!(
            "≈ {} days at your 7-day average",
            count(u64::try_from(days).unwrap_or(u64::MAX))
        ),
    }
}

/// `GET /`.
pub async fn show(State(state): State<AppState>, who: Signed) -> Response {
    let view = match state.services().accounts.view(who.account).await {
        Ok(view) => view,
        Err(error) => return internal(error, Some(&who)),
    };
    let now = tokun_providers::clock::unix_ms();
    let store = &state.services().store;
    let from = (now / MS_PER_DAY).saturating_sub(DAYS as u64 - 1) * MS_PER_DAY;
    // Per-day sums kept up to date incrementally, not the 30 days' records.
    let daily = store.daily_spend(who.account, from / MS_PER_DAY, now);
    let latest = store.latest_usage(who.account, 10);
    let (daily, latest) = match (daily, latest) {
        (Ok(daily), Ok(latest)) => (daily, latest),
        (Err(error), _) | (_, Err(error)) => return internal(error, Some(&who)),
    };
    let spend = Spend::from_daily(&daily, now);
    let available = view.balance.saturating_sub(view.held);
    let body = html! {
        (super::policy_banner::banner(store, &who))
        h1 { "Dashboard" }
        p.lead { "Signed in as " (display_name(&who)) ". Days are UTC days." }
        dl.cards {
            div.card.wide { dt { "Available credit" } dd { (usd_short(available)) small { (runway(available, spend.week)) } } }
            div.card { dt { "Held by running requests" } dd { (usd_short(view.held)) small { (view.open_holds) " open " (if view.open_holds == 1 { "hold" } else { "holds" }) } } }
            div.card { dt { "Spent today" } dd data-nanos=(spend.today.get()) { (usd(spend.today)) } }
            div.card { dt { "Last 7 days" } dd data-nanos=(spend.week.get()) { (usd(spend.week)) } }
            div.card { dt { "Last 30 days" } dd data-nanos=(spend.month.get()) { (usd(spend.month)) } }
        }
        h2 { "Spend per day, last 30 days" }
        @if spend.series.is_empty() {
            // An empty chart is a blank box: say it in words instead.
            p.muted { "No spend in the last 30 days." }
        } @else {
            (chart(&spend))
            (chart_table(&spend))
        }
        h2 { "Latest requests" }
        (latest_table(&latest))
    };
    respond(StatusCode::OK, page("Dashboard", Some(&who), body))
}

fn display_name(who: &Signed) -> &str {
    if who.profile.display_name.is_empty() {
        &who.email
    } else {
        &who.profile.display_name
    }
}

/// The 30 days as stacked bars, one colour per series (some spend).
fn chart(spend: &Spend) -> Markup {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 200.0;
    const LEFT: f64 = 84.0;
    // Room for the last day's label, centred under its bar.
    const RIGHT: f64 = 14.0;
    const BOTTOM: f64 = 22.0;
    const TOP: f64 = 8.0;
    let plot = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT - RIGHT) / DAYS as f64;
    let max = (0..DAYS)
        .map(|d| spend.day_total(d))
        .max()
        .unwrap_or(Nanos::ZERO);
    let scale = |amount: Nanos| {
        if max.get() <= 0 {
            0.0
        } else {
            amount.get() as f64 / max.get() as f64 * plot
        }
    };
    let mut bars = Vec::new();
    for (d, amounts) in spend.by_day.iter().enumerate() {
        let mut y = TOP + plot;
        for (i, amount) in amounts.iter().enumerate() {
            if amount.get() <= 0 {
                continue;
            }
            let height = scale(*amount).max(1.0);
            y -= height;
            bars.push(Bar {
                class: format!("s{}", i.min(5)),
                x: LEFT + d as f64 * slot + 2.0,
                y,
                height,
                title: format!(
                    "{} · {}: {}",
                    short_date(spend.first_day + d as u64),
                    spend.series.get(i).map_or("", String::as_str),
                    usd(*amount)
                ),
            });
        }
    }
    let description = format!(
        "{} spent over 30 days, {} at most in one day.",
        usd(spend.month),
        usd(max)
    );
    html! {
        figure.chart {
            div.chart-scroll {
                svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby="chart-title chart-desc" {
                    title id="chart-title" { "Spend per day over the last 30 days, by model" }
                    desc id="chart-desc" { (description) }
                    line.axis x1=(fmt(LEFT)) y1=(fmt(TOP + plot)) x2=(fmt(WIDTH - RIGHT)) y2=(fmt(TOP + plot)) {}
                    text x=(fmt(LEFT - 6.0)) y=(fmt(TOP + 10.0)) text-anchor="end" { (usd_short(max)) }
                    text x=(fmt(LEFT - 6.0)) y=(fmt(TOP + plot)) text-anchor="end" { "$0" }
                    @for bar in &bars {
                        rect class=(bar.class) x=(fmt(bar.x)) y=(fmt(bar.y)) width=(fmt(slot - 4.0)) height=(fmt(bar.height)) {
                            title { (bar.title) }
                        }
                    }
                    @for d in (1..DAYS).step_by(7) {
                        text x=(fmt(LEFT + (d as f64 + 0.5) * slot)) y=(fmt(HEIGHT - 6.0)) text-anchor="middle" { (short_date(spend.first_day + d as u64)) }
                    }
                }
            }
            ul.legend aria-hidden="true" {
                @for (i, name) in spend.series.iter().enumerate() {
                    li { span class=(format!("swatch s{}", i.min(5))) {} (name) }
                }
            }
        }
    }
}

/// One coloured segment of a day's bar, in SVG units.
struct Bar {
    class: String,
    x: f64,
    y: f64,
    height: f64,
    title: String,
}

fn fmt(value: f64) -> String {
    format!("{value:.1}")
}

/// The chart's numbers, for screen readers and anyone who wants them.
fn chart_table(spend: &Spend) -> Markup {
    html! {
        details {
            summary { "The chart as a table" }
            div.table-wrap {
                table {
                    caption { "Spend per day (UTC), by model" }
                    thead { tr {
                        th scope="col" { "Day" }
                        @for name in &spend.series { th.num scope="col" { (name) } }
                        th.num scope="col" { "Total" }
                        th.num scope="col" { "Requests" }
                    } }
                    tbody {
                        @for d in (0..DAYS).rev() {
                            tr {
                                th scope="row" { (date(spend.first_day + d as u64)) }
                                @for amount in &spend.by_day[d] { td.num { (usd(*amount)) } }
                                td.num { (usd(spend.day_total(d))) }
                                td.num { (count(spend.requests[d])) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn latest_table(latest: &[UsageRecord]) -> Markup {
    html! {
        @if latest.is_empty() {
            p.muted { "No requests yet. Make one with an API key and it shows up here." }
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Time" }
                        th scope="col" { "Model" }
                        th.num scope="col" { "Tokens in" }
                        th.num scope="col" { "Tokens out" }
                        th.num scope="col" { "Cost" }
                        th.num scope="col" { "Latency" }
                        th.num scope="col" { "Status" }
                    } }
                    tbody {
                        @for record in latest {
                            tr {
                                td { (datetime(record.at_ms)) }
                                td { (record.model) }
                                td.num { (count(record.prompt_tokens)) }
                                td.num { (count(record.completion_tokens)) }
                                td.num { (usd(record.cost)) @if record.estimated { " (est.)" } }
                                td.num { (count(record.latency_ms)) " ms" }
                                td.num { (record.status) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
