//! The billing page (`/billing`): balance and held funds, the top-up form
//! (Stripe Checkout, through the same [`open_topup`] as `POST /v1/topups`),
//! the pages Checkout sends people back to, the payment history and the
//! low-balance alert threshold. The monthly statement and its entries are
//! in `statement.rs` (kept up to date by `statements.rs`), the alert's periodic check in `alerts.rs`. Money is
//! read from the account actor and the store; only Stripe's signed webhook
//! credits an account.

pub mod alerts;
pub mod entries;
pub mod statement;
pub mod statements;

pub use statements::Statements;

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tokun_storage::{Nanos, PaymentRecord, PaymentStatus};

use super::format::{datetime, usd};
use super::layout::{Field, error_summary, page, respond};
use super::{Form, Signed, error_page, internal};
use crate::state::AppState;
use crate::stripe::checkout::{AmountError, ReturnUrls, check_amount, open_topup};

/// The largest alert threshold: far above any balance worth watching.
const MAX_THRESHOLD: Nanos = Nanos::new(1_000_000 * tokun_storage::NANOS_PER_USD);

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TopupForm {
    csrf: String,
    amount: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AlertForm {
    csrf: String,
    threshold: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SessionQuery {
    session_id: String,
}

/// What the page shows besides the account's numbers: a form's typed
/// values, its errors and a note after a redirect.
#[derive(Debug, Default)]
struct View<'a> {
    amount: &'a str,
    amount_error: Option<String>,
    threshold: Option<&'a str>,
    threshold_error: Option<&'static str>,
    notice: Option<&'static str>,
}

/// `GET /billing`.
pub async fn show(
    State(state): State<AppState>,
    who: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    let notice = match query.as_deref() {
        Some("alert=saved") => Some("Your low-balance alert is saved."),
        Some("alert=below") => Some(
            "Your low-balance alert is saved. Your balance is already below it, so the \
             first email goes out the next time it falls below after a top-up.",
        ),
        Some("alert=off") => Some("The low-balance alert is off."),
        _ => None,
    };
    let view = View {
        notice,
        ..View::default()
    };
    render(&state, &who, StatusCode::OK, &view).await
}

/// `POST /billing/topup`: checks the amount, opens a Checkout Session and
/// sends the browser to it (303).
pub async fn topup(
    State(state): State<AppState>,
    who: Signed,
    headers: HeaderMap,
    Form(form): Form<TopupForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let Some(stripe) = state.stripe() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Top-ups are not configured on this server.",
            Some(&who),
        );
    };
    let amount = match check_amount(&form.amount, stripe) {
        Ok(amount) => amount,
        Err(error) => {
            let view = View {
                amount: &form.amount,
                amount_error: Some(amount_message(error)),
                ..View::default()
            };
            return render(&state, &who, StatusCode::BAD_REQUEST, &view).await;
        }
    };
    let origin = origin(&state, &headers);
    let returns = ReturnUrls {
        success: format!("{origin}/billing/success?session_id={{CHECKOUT_SESSION_ID}}"),
        cancel: format!("{origin}/billing/cancel"),
    };
    match open_topup(&state, who.account, amount, Some(&returns)).await {
        Ok(opened) => Redirect::to(&opened.url).into_response(),
        Err(error) => {
            let view = View {
                amount: &form.amount,
                amount_error: Some(error.object().message),
                ..View::default()
            };
            render(&state, &who, StatusCode::SERVICE_UNAVAILABLE, &view).await
        }
    }
}

/// `GET /billing/success?session_id=…`: where Checkout sends people after
/// paying. Shows "waiting" (and reloads every 2 s) until the webhook
/// credited the payment, then the amount credited. Only the account's own
/// sessions: any other id is a 404.
pub async fn success(
    State(state): State<AppState>,
    who: Signed,
    Query(query): Query<SessionQuery>,
) -> Response {
    let payment = match state.services().store.payment(&query.session_id) {
        Ok(payment) => payment,
        Err(error) => return internal(error, Some(&who)),
    };
    let Some(payment) = payment.filter(|p| p.account == Some(who.account)) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "There is no such payment on your account.",
            Some(&who),
        );
    };
    let waiting = payment.status == PaymentStatus::Open;
    let body = html! {
        h1 { "Top-up" }
        @if payment.status.is_credited() {
            p.notice role="status" {
                "Payment received: " strong.credited { (usd(payment.paid_amount)) }
                " was added to your balance."
            }
        } @else if waiting {
            p.waiting role="status" aria-live="polite" {
                "Waiting for payment confirmation… This page checks again every 2 seconds."
            }
            p.muted { "Stripe confirms most payments within seconds. You can leave this page: the credit arrives either way." }
        } @else {
            p { "This payment did not go through (" (status_label(payment.status)) "). Nothing was added to your balance." }
        }
        dl.facts {
            dt { "Amount" } dd { (usd(payment.amount)) }
            dt { "Started" } dd { (datetime(payment.created_ms)) }
            dt { "Status" } dd { (status_label(payment.status)) }
        }
        p { a href="/billing" { "Back to billing" } }
    };
    let mut response = respond(StatusCode::OK, page("Billing", Some(&who), body));
    if waiting {
        // A refresh without script; the page is cheap to render again.
        response
            .headers_mut()
            .insert(header::REFRESH, HeaderValue::from_static("2"));
    }
    response
}

/// `GET /billing/cancel`: Checkout was left without paying.
pub async fn cancel(who: Signed) -> Response {
    let body = html! {
        h1 { "Top-up cancelled" }
        p { "You left the payment page before paying. Nothing was charged." }
        p { a href="/billing" { "Back to billing" } }
    };
    respond(StatusCode::OK, page("Billing", Some(&who), body))
}

/// `POST /billing/alert`: saves (or clears) the low-balance threshold.
pub async fn alert(
    State(state): State<AppState>,
    who: Signed,
    Form(form): Form<AlertForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let text = form.threshold.trim();
    let threshold = match parse_threshold(text) {
        Ok(threshold) => threshold,
        Err(message) => {
            let view = View {
                threshold: Some(&form.threshold),
                threshold_error: Some(message),
                ..View::default()
            };
            return render(&state, &who, StatusCode::BAD_REQUEST, &view).await;
        }
    };
    let store = &state.services().store;
    let books = match store.books(who.account) {
        Ok(books) => books,
        Err(error) => return internal(error, Some(&who)),
    };
    // Already below: that fall is not news to someone looking at the page.
    let below = threshold.is_some_and(|t| books.balance < t);
    // Read again: a sign-in may have changed the profile since the page loaded.
    let saved = store.profile(who.account).and_then(|mut profile| {
        profile.low_balance = threshold;
        profile.low_balance_alerted = below;
        store.put_profile(who.account, &profile)
    });
    if let Err(error) = saved {
        return internal(error, Some(&who));
    }
    if let Err(error) = store.flush_people().await {
        return internal(error, Some(&who));
    }
    let to = match (threshold, below) {
        (None, _) => "/billing?alert=off",
        (Some(_), true) => "/billing?alert=below",
        (Some(_), false) => "/billing?alert=saved",
    };
    Redirect::to(to).into_response()
}

/// A threshold in dollars (up to nine decimals), or none when empty.
fn parse_threshold(text: &str) -> Result<Option<Nanos>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    let message =
        "Enter an amount in dollars like 5 or 2.50, or leave it empty to turn the alert off";
    let amount = Nanos::parse_usd(text).map_err(|_| message)?;
    if amount.is_negative() || amount.is_zero() {
        return Err("Enter an amount above $0, or leave it empty to turn the alert off");
    }
    if amount > MAX_THRESHOLD {
        return Err("Enter an amount of $1,000,000 or less");
    }
    Ok(Some(amount))
}

fn amount_message(error: AmountError) -> String {
    match error {
        AmountError::NotDecimal => "Enter an amount in dollars, like 10 or 10.50".to_owned(),
        AmountError::NotWholeCents => "Enter a whole number of cents, like 10.50".to_owned(),
        AmountError::OutOfRange { min, max } => {
            format!("Enter an amount between {} and {}", usd(min), usd(max))
        }
    }
}

/// Where people reach this server: `server.public_url`, else the `Host`
/// they used (it only decides where their own browser is sent back to).
fn origin(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = state.config().server.public_url.as_deref() {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn render(state: &AppState, who: &Signed, status: StatusCode, view: &View<'_>) -> Response {
    let account = match state.services().accounts.view(who.account).await {
        Ok(account) => account,
        Err(error) => return internal(error, Some(who)),
    };
    let mut payments = match state.services().store.payments_for(who.account) {
        Ok(payments) => payments,
        Err(error) => return internal(error, Some(who)),
    };
    payments.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then(b.session_id.cmp(&a.session_id))
    });
    let threshold_text = who.profile.low_balance.map(|t| t.to_string());
    let threshold = view
        .threshold
        .or(threshold_text.as_deref())
        .unwrap_or_default();
    let summary = [
        view.amount_error.as_deref().map(|e| ("amount", e)),
        view.threshold_error.map(|e| ("threshold", e)),
    ];
    let available = account.balance.saturating_sub(account.held);
    let body = html! {
        h1 { "Billing" }
        @if let Some(notice) = view.notice { p.notice role="status" { (notice) } }
        (error_summary(summary.into_iter().flatten()))
        dl.cards {
            div.card { dt { "Balance" } dd #balance { (usd(account.balance)) } }
            div.card { dt { "Held by running requests" } dd { (usd(account.held)) } }
            div.card { dt { "Available" } dd { (usd(available)) } }
        }
        h2 { "Top up" }
        (topup_form(state, who, view))
        h2 { "Payments" }
        (payments_table(&payments))
        h2 { "Monthly statement" }
        p { "Opening balance, top-ups, usage and adjustments for any month, each line linked to its ledger entries. "
            a href="/billing/statement" { "See this month’s statement" } }
        h2 { "Low-balance alert" }
        form method="post" action="/billing/alert" novalidate {
            input type="hidden" name="csrf" value=(who.csrf);
            (Field { name: "threshold", label: "Email me when my balance falls below (USD)",
                hint: Some("One email each time the balance falls below it. Leave empty to turn the alert off."),
                kind: "text", value: threshold, error: view.threshold_error, autocomplete: "off",
                inputmode: Some("decimal"), class: Some("amount") }.render())
            button type="submit" { "Save alert" }
        }
        @if let Some(t) = who.profile.low_balance {
            p.muted { "Alert set at " (usd(t)) " for " (who.email) "." }
        }
    };
    respond(status, page("Billing", Some(who), body))
}

fn topup_form(state: &AppState, who: &Signed, view: &View<'_>) -> Markup {
    let Some(stripe) = state.stripe() else {
        return html! {
            p.muted { "Top-ups are not configured on this server. Ask its operator to add credit." }
        };
    };
    let (min, max) = (stripe.config().min_topup, stripe.config().max_topup);
    let hint = format!(
        "Between {} and {}. You pay on Stripe’s page; the credit arrives when Stripe confirms.",
        usd(min),
        usd(max)
    );
    html! {
        form method="post" action="/billing/topup" novalidate {
            input type="hidden" name="csrf" value=(who.csrf);
            (Field { name: "amount", label: "Amount in US dollars", hint: Some(&hint), kind: "text",
                value: view.amount, error: view.amount_error.as_deref(), autocomplete: "off",
                inputmode: Some("decimal"), class: Some("amount") }.render())
            button type="submit" { "Continue to payment" }
        }
    }
}

fn payments_table(payments: &[PaymentRecord]) -> Markup {
    html! {
        @if payments.is_empty() {
            p.muted { "No payments yet." }
        } @else {
            div.table-wrap {
                table.payments {
                    caption.visually-hidden { "Payments, newest first" }
                    thead { tr {
                        th scope="col" { "Created" }
                        th.num scope="col" { "Amount" }
                        th scope="col" { "Status" }
                        th.num scope="col" { "Refunded" }
                    } }
                    tbody {
                        @for payment in payments {
                            tr {
                                td { (datetime(payment.created_ms)) }
                                td.num { (usd(payment.amount)) }
                                td { (status_label(payment.status)) }
                                td.num {
                                    @if payment.refunded_amount.is_zero() { "—" }
                                    @else { (usd(payment.refunded_amount)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn status_label(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Open => "Waiting for payment",
        PaymentStatus::Paid => "Paid",
        PaymentStatus::Failed => "Failed",
        PaymentStatus::Expired => "Expired",
        PaymentStatus::Refunded => "Refunded",
        PaymentStatus::PartiallyRefunded => "Partly refunded",
        PaymentStatus::Orphaned => "Needs attention",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_exact_dollars() {
        assert_eq!(parse_threshold(""), Ok(None));
        assert_eq!(parse_threshold("2.5"), Ok(Some(Nanos::new(2_500_000_000))));
        assert_eq!(parse_threshold("0.000000001"), Ok(Some(Nanos::new(1))));
        for bad in ["-1", "0", "abc", "1e3", "1.0000000001", "1000000.01", "$5"] {
            assert!(parse_threshold(bad).is_err(), "{bad}");
        }
    }
}
