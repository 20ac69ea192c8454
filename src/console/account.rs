//! The account page (`/account`): the email, the display name and time zone
//! (checked, errors in place), the sign-in history, and "sign out
//! everywhere", which ends every session of the account at once. Its
//! Passkeys section is `passkey::section`; the data export and account
//! deletion are `account/export.rs` and `account/delete.rs`.

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tokun_storage::{Profile, SignInRecord};

pub(super) mod delete;
pub(super) mod export;

use super::format::datetime;
use super::layout::{Field, error_summary, page, respond};
use super::{Form, Signed, internal, session};
use crate::state::AppState;

/// Sign-ins listed on the page.
const HISTORY: usize = 20;
/// Longest display name, in characters.
const NAME_CHARS: usize = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProfileForm {
    csrf: String,
    display_name: String,
    time_zone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// What is wrong with a submitted profile, per field.
#[derive(Debug, Default, PartialEq, Eq)]
struct Errors {
    display_name: Option<&'static str>,
    time_zone: Option<&'static str>,
}

/// `GET /account`.
pub async fn show(
    State(state): State<AppState>,
    who: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    let notice = match query.as_deref() {
        Some("saved=1") => Some("Your changes are saved."),
        Some("passkey=added") => Some("Your passkey is added. Next time, sign in with it alone."),
        Some("passkey=removed") => Some("The passkey is removed: it no longer signs you in."),
        _ => None,
    };
    let profile = who.profile.clone();
    render(&state, &who, &profile, &Errors::default(), notice)
}

/// `POST /account`: saves the display name and time zone.
pub async fn update(
    State(state): State<AppState>,
    who: Signed,
    Form(form): Form<ProfileForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let display_name = form.display_name.trim().to_owned();
    let time_zone = form.time_zone.trim().to_owned();
    let errors = Errors {
        display_name: check_display_name(&display_name),
        time_zone: check_time_zone(&time_zone),
    };
    let submitted = Profile {
        display_name,
        time_zone,
        ..who.profile.clone()
    };
    if errors != Errors::default() {
        return render(&state, &who, &submitted, &errors, None);
    }
    // Read again: a sign-in may have moved the times since the page loaded.
    let store = &state.services().store;
    let saved = store.profile(who.account).and_then(|current| {
        let profile = Profile {
            display_name: submitted.display_name,
            time_zone: submitted.time_zone,
            ..current
        };
        store.put_profile(who.account, &profile)
    });
    if let Err(error) = saved {
        return internal(error, Some(&who));
    }
    Redirect::to("/account?saved=1").into_response()
}

/// `POST /account/sessions/revoke-all`: signs out every browser.
pub async fn revoke_all(
    State(state): State<AppState>,
    who: Signed,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = who.check(&form.csrf) {
        return *refused;
    }
    let store = &state.services().store;
    let revoked = store.delete_sessions_of(who.account);
    if let Err(error) = revoked {
        return internal(error, Some(&who));
    }
    if let Err(error) = store.flush_people().await {
        return internal(error, Some(&who));
    }
    let clear = session::clear_cookie(&state);
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
}

fn check_display_name(name: &str) -> Option<&'static str> {
    if name.chars().count() > NAME_CHARS {
        Some("Display name must be 100 characters or fewer")
    } else if name.chars().any(char::is_control) {
        Some("Display name must not contain control characters")
    } else {
        None
    }
}

/// `UTC`, or an IANA name like `Europe/Paris`, `America/Argentina/Salta` or
/// `Etc/GMT+5`, shaped so and known to the bundled IANA database (jiff's).
fn check_time_zone(zone: &str) -> Option<&'static str> {
    let segment_ok = |segment: &str| {
        segment
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
    };
    let parts: Vec<&str> = zone.split('/').collect();
    let ok = zone == "UTC"
        || (zone.len() <= 64
            && parts.len() >= 2
            && parts.iter().all(|part| segment_ok(part))
            && parts[0].starts_with(|c: char| c.is_ascii_uppercase()));
    let ok = ok && jiff::tz::TimeZone::get(zone).is_ok();
    (!ok).then_some("Enter a time zone like Europe/Paris, America/New_York or UTC")
}

fn render(
    state: &AppState,
    who: &Signed,
    profile: &Profile,
    errors: &Errors,
    notice: Option<&str>,
) -> Response {
    let history = match state.services().store.signins(who.account, HISTORY) {
        Ok(history) => history,
        Err(error) => return internal(error, Some(who)),
    };
    let passkeys = match super::passkey::section(state, who) {
        Ok(passkeys) => passkeys,
        Err(error) => return internal(error, Some(who)),
    };
    let status = if errors == &Errors::default() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let summary = [
        errors.display_name.map(|e| ("display_name", e)),
        errors.time_zone.map(|e| ("time_zone", e)),
    ];
    let body = html! {
        h1 { "Account" }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        (error_summary(summary.into_iter().flatten()))
        dl.facts {
            dt { "Email" } dd { (who.email) }
            @if let Some(first) = who.profile.first_signin_ms {
                dt { "First signed in" } dd { (datetime(first)) }
            }
            @if let Some(last) = who.profile.last_signin_ms {
                dt { "Last signed in" } dd { (datetime(last)) }
            }
        }
        h2 { "Profile" }
        form method="post" action="/account" novalidate {
            input type="hidden" name="csrf" value=(who.csrf);
            (Field { name: "display_name", label: "Display name", hint: Some("Shown in the console. Up to 100 characters."), kind: "text", value: &profile.display_name, error: errors.display_name, autocomplete: "name", inputmode: None, class: None }.render())
            (Field { name: "time_zone", label: "Time zone", hint: Some("An IANA name like Europe/Paris, or UTC."), kind: "text", value: &profile.time_zone, error: errors.time_zone, autocomplete: "off", inputmode: None, class: None }.render())
            button type="submit" { "Save" }
        }
        @if let Some(passkeys) = passkeys { (passkeys) }
        h2 { "Recent sign-ins" }
        (history_table(&history))
        h2 { "Sessions" }
        p { "Signed in on a computer you no longer use? Sign out of every browser, this one included." }
        form method="post" action="/account/sessions/revoke-all" {
            input type="hidden" name="csrf" value=(who.csrf);
            button.danger type="submit" { "Sign out everywhere" }
        }
        (export::section())
        (delete::section(who, "", None))
    };
    respond(status, page("Account", Some(who), body))
}

fn history_table(history: &[SignInRecord]) -> Markup {
    html! {
        div.table-wrap {
            table {
                caption.visually-hidden { "The last 20 sign-ins, newest first" }
                thead { tr {
                    th scope="col" { "Time" }
                    th scope="col" { "How" }
                    th scope="col" { "Address" }
                    th scope="col" { "Browser" }
                } }
                tbody {
                    @for signin in history {
                        tr {
                            td { (datetime(signin.at_ms)) }
                            td { (method_label(&signin.method)) }
                            td { (signin.ip) }
                            td { (signin.user_agent) }
                        }
                    }
                }
            }
        }
    }
}

fn method_label(method: &str) -> &str {
    match method {
        "email" => "Email code",
        "oidc" => "Single sign-on",
        "passkey" => "Passkey",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones_are_iana_shaped() {
        for ok in [
            "UTC",
            "Europe/Paris",
            "America/Argentina/Salta",
            "Etc/GMT+5",
            "America/New_York",
        ] {
            assert_eq!(check_time_zone(ok), None, "{ok}");
        }
        for bad in [
            "",
            "utc",
            "Paris",
            "Europe/",
            "/Paris",
            "europe/paris",
            "Europe/Pa ris",
            "Mars/Olympus_Mons",
            "Europe/<b>",
        ] {
            assert!(check_time_zone(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn display_names_are_bounded_and_printable() {
        assert_eq!(check_display_name("Ann <script>"), None);
        assert_eq!(check_display_name(&"é".repeat(100)), None);
        assert!(check_display_name(&"a".repeat(101)).is_some());
        assert!(check_display_name("a\u{7}b").is_some());
    }
}
