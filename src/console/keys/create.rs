//! Creating a key on `/keys`: reading and checking the form (each error
//! beside its field, GOV.UK style), the form itself, and the page that
//! shows the new secret once. Storing the key is the services' job.

use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, PreEscaped, html};
use tokun_storage::{KeyRecord, LimitReset, Nanos};

use super::super::format::MS_PER_DAY;
use super::super::layout::{Field, page, respond};
use super::list::{describe_limit, describe_models, expiry_text};
use crate::console::Signed;
use crate::services::KeyOptions;

/// Longest key name, in characters.
pub const NAME_CHARS: usize = 100;

/// What was typed into the create form, as typed.
#[derive(Debug, Default, Clone)]
pub struct Draft {
    pub csrf: String,
    pub name: String,
    pub spend_limit: String,
    pub reset: String,
    pub rpm: String,
    pub models: Vec<String>,
    pub expires: String,
    pub debug: bool,
}

/// What is wrong with a draft, per field (and for the form as a whole).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Errors {
    pub name: Option<&'static str>,
    pub spend_limit: Option<&'static str>,
    pub reset: Option<&'static str>,
    pub rpm: Option<&'static str>,
    pub models: Option<&'static str>,
    pub expires: Option<&'static str>,
    /// Not about one field: the account cannot create keys.
    pub form: Option<&'static str>,
}

impl Errors {
    pub fn any(&self) -> bool {
        self != &Errors::default()
    }

    /// `(field id, message)` for the error summary, in the form's order.
    pub fn summary(&self) -> Vec<(&'static str, &'static str)> {
        [
            ("name", self.name),
            ("spend_limit", self.spend_limit),
            ("reset-total", self.reset),
            ("rpm", self.rpm),
            ("models", self.models),
            ("expires", self.expires),
        ]
        .into_iter()
        .filter_map(|(field, error)| error.map(|e| (field, e)))
        .collect()
    }
}

impl Draft {
    /// Reads the form's pairs: `models` repeats, once per checked box.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Draft {
        let mut draft = Draft {
            reset: "total".into(),
            ..Draft::default()
        };
        for (key, value) in pairs {
            match key.as_str() {
                "csrf" => draft.csrf = value,
                "name" => draft.name = value,
                "spend_limit" => draft.spend_limit = value,
                "reset" => draft.reset = value,
                "rpm" => draft.rpm = value,
                "models" => draft.models.push(value),
                "expires" => draft.expires = value,
                "debug" => draft.debug = !value.is_empty(),
                _ => {}
            }
        }
        draft
    }

    /// The key's options, or what is wrong with the draft. `models` are the
    /// configured model ids; `now_ms` decides what "in the future" means.
    pub fn check(&self, models: &[String], now_ms: u64) -> Result<KeyOptions, Errors> {
        let mut errors = Errors::default();
        let name = self.name.trim();
        if name.is_empty() {
            errors.name = Some("Enter a name for the key");
        } else if name.chars().count() > NAME_CHARS {
            errors.name = Some("The name must be 100 characters or fewer");
        } else if name.chars().any(char::is_control) {
            errors.name = Some("The name must not contain control characters");
        }
        let spend_limit = match parse_limit(&self.spend_limit) {
            Ok(limit) => limit,
            Err(message) => {
                errors.spend_limit = Some(message);
                None
            }
        };
        let limit_reset = LimitReset::parse(self.reset.trim()).unwrap_or_else(|| {
            errors.reset = Some("Choose when the spend limit starts over");
            LimitReset::Total
        });
        let rpm = self.rpm.trim();
        let rpm_limit = match rpm.parse::<u32>() {
            _ if rpm.is_empty() => None,
            Ok(rpm) if rpm > 0 => Some(rpm),
            _ => {
                errors.rpm = Some("Requests per minute must be a whole number of at least 1");
                None
            }
        };
        if self.models.iter().any(|m| !models.contains(m)) {
            errors.models = Some("Choose models from the list");
        }
        let expires = self.expires.trim();
        let expires_ms = match parse_date(expires) {
            _ if expires.is_empty() => None,
            Some(at) if at > now_ms => Some(at),
            Some(_) => {
                errors.expires = Some("The expiry date must be in the future");
                None
            }
            None => {
                errors.expires = Some("Enter the expiry date as year-month-day, like 2027-01-31");
                None
            }
        };
        if errors.any() {
            return Err(errors);
        }
        Ok(KeyOptions {
            name: name.to_owned(),
            spend_limit,
            rpm_limit,
            allowed_models: self.models.clone(),
            debug: self.debug,
            limit_reset,
            expires_ms,
        })
    }
}

/// An optional USD amount above zero, exact (`Nanos`' own parsing); a
/// leading `$` is allowed.
fn parse_limit(text: &str) -> Result<Option<Nanos>, &'static str> {
    let text = text.trim();
    let text = text.strip_prefix('$').unwrap_or(text).trim();
    if text.is_empty() {
        return Ok(None);
    }
    match Nanos::parse_usd(text) {
        Ok(limit) if limit.get() > 0 => Ok(Some(limit)),
        Ok(_) => Err("The spend limit must be more than $0"),
        Err(_) => Err("Enter the spend limit in US dollars, like 5 or 12.50"),
    }
}

/// `2027-01-31` → 00:00 UTC of that day, in Unix milliseconds.
pub fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.splitn(3, '-');
    let year: u64 = parts.next().filter(|p| p.len() == 4)?.parse().ok()?;
    let month: u64 = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    let day: u64 = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month {
        return None;
    }
    // Howard Hinnant's days_from_civil, for years from 1970 on.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    days.checked_mul(MS_PER_DAY)
}

/// The create form, filled with `draft` and its errors.
pub fn form(who: &Signed, draft: &Draft, errors: &Errors, models: &[String]) -> Markup {
    let resets = [
        ("total", "Total", "Never starts over"),
        ("daily", "Daily", "Starts over at 00:00 UTC"),
        ("monthly", "Monthly", "Starts over on the 1st, 00:00 UTC"),
    ];
    html! {
        form.create-key method="post" action="/keys" novalidate {
            input type="hidden" name="csrf" value=(who.csrf);
            @if let Some(error) = errors.form {
                p.form-error role="alert" { (error) }
            }
            (Field { name: "name", label: "Name", hint: Some("What the key is for, like “laptop” or “billing service”. Up to 100 characters."), kind: "text", value: &draft.name, error: errors.name, autocomplete: "off", inputmode: None, class: None }.render())
            (Field { name: "spend_limit", label: "Spend limit in US dollars (optional)", hint: Some("Requests are refused once the key has spent this much. Empty: no limit beyond your balance."), kind: "text", value: &draft.spend_limit, error: errors.spend_limit, autocomplete: "off", inputmode: Some("decimal"), class: Some("short") }.render())
            fieldset.field.field-error[errors.reset.is_some()] {
                legend { "The spend limit starts over" }
                @if let Some(error) = errors.reset {
                    span.message { span.visually-hidden { "Error: " } (error) }
                }
                div.choices {
                    @for (value, label, hint) in resets {
                        div.choice {
                            input type="radio" name="reset" id=(format!("reset-{value}")) value=(value) checked[draft.reset == value];
                            label for=(format!("reset-{value}")) { (label) span.hint { (hint) } }
                        }
                    }
                }
            }
            (Field { name: "rpm", label: "Requests per minute (optional)", hint: Some("A whole number. Empty: no per-key rate limit."), kind: "text", value: &draft.rpm, error: errors.rpm, autocomplete: "off", inputmode: Some("numeric"), class: Some("short") }.render())
            fieldset.field.field-error[errors.models.is_some()] id="models" {
                legend { "Allowed models" }
                span.hint { "Check none to allow every model, including ones added later." }
                @if let Some(error) = errors.models {
                    span.message { span.visually-hidden { "Error: " } (error) }
                }
                div.choices {
                    @for (i, model) in models.iter().enumerate() {
                        div.choice {
                            input type="checkbox" name="models" id=(format!("model-{i}")) value=(model) checked[draft.models.contains(model)];
                            label for=(format!("model-{i}")) { code { (model) } }
                        }
                    }
                }
            }
            (Field { name: "expires", label: "Expires (optional)", hint: Some("The key stops working at 00:00 UTC on this date."), kind: "date", value: &draft.expires, error: errors.expires, autocomplete: "off", inputmode: None, class: Some("short") }.render())
            div.field {
                div.choice {
                    input type="checkbox" name="debug" id="debug" value="on" checked[draft.debug] aria-describedby="debug-hint";
                    label for="debug" { "Request debugging" }
                }
                span.hint id="debug-hint" {
                    "When on, the bodies of this key’s requests and responses are kept for 7 days so you can inspect them. Off by default."
                }
            }
            button type="submit" { "Create key" }
        }
    }
}

/// The page that shows a new key's secret, once: a copy button where the
/// browser has a clipboard, and the secret in a read-only field that is
/// selected on focus either way.
pub fn secret_page(who: &Signed, record: &KeyRecord, secret: &str) -> Response {
    let body = html! {
        h1 { "Your new key" }
        div.warning role="alert" {
            strong { "Copy this key now. " }
            "It will not be shown again: tokun keeps only a hash of it. If you lose it, revoke it and create another."
        }
        div.field.secret {
            label for="secret" { "Secret key for “" (record.name) "”" }
            div.secret-row {
                input id="secret" name="secret" type="text" readonly value=(secret)
                    autocomplete="off" spellcheck="false" aria-describedby="copy-status";
                button.secondary id="copy" type="button" hidden { "Copy" }
            }
            span.hint id="copy-status" role="status" aria-live="polite" {}
        }
        dl.facts {
            dt { "Prefix" } dd { code { (record.prefix) "…" } }
            dt { "Spend limit" } dd { (describe_limit(record, None)) }
            dt { "Requests per minute" } dd { (record.rpm_limit.map_or_else(|| "No limit".to_owned(), |r| r.to_string())) }
            dt { "Models" } dd { (describe_models(&record.allowed_models)) }
            dt { "Expires" } dd { (expiry_text(record.expires_ms)) }
            dt { "Debugging" } dd { @if record.debug { "On" } @else { "Off" } }
        }
        p { "Use it as " code { "Authorization: Bearer " (record.prefix) "…" } " with the OpenAI-compatible API." }
        p { a.button href="/keys" { "I have copied it: back to my keys" } }
        script { (PreEscaped(COPY_SCRIPT)) }
    };
    respond(StatusCode::OK, page("Keys", Some(who), body))
}

/// Selects the secret on focus; shows the Copy button only where the
/// clipboard API exists, and says what happened after a click.
const COPY_SCRIPT: &str = r#"(function () {
  var input = document.getElementById("secret");
  var button = document.getElementById("copy");
  var status = document.getElementById("copy-status");
  input.addEventListener("focus", function () { input.select(); });
  input.addEventListener("click", function () { input.select(); });
  if (!navigator.clipboard || !window.isSecureContext) {
    status.textContent = "Select the key and copy it (Ctrl+C, or ⌘C on a Mac).";
    return;
  }
  button.hidden = false;
  button.addEventListener("click", function () {
    navigator.clipboard.writeText(input.value).then(function () {
      status.textContent = "Copied to the clipboard.";
    }, function () {
      input.focus();
      status.textContent = "Copying failed: the key is selected, press Ctrl+C (⌘C) to copy it.";
    });
  });
})();"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["echo-mini".into(), "gpt-4o".into()]
    }

    #[test]
    fn dates_are_utc_midnights() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(19_782 * MS_PER_DAY));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("24-01-01"), None);
        assert_eq!(parse_date("2024-1-01"), None);
        assert_eq!(parse_date("tomorrow"), None);
    }

    #[test]
    fn a_full_draft_becomes_options() {
        let draft = Draft::from_pairs(vec![
            ("name".into(), "  laptop ".into()),
            ("spend_limit".into(), "$12.50".into()),
            ("reset".into(), "daily".into()),
            ("rpm".into(), "30".into()),
            ("models".into(), "echo-mini".into()),
            ("models".into(), "gpt-4o".into()),
            ("expires".into(), "2030-01-01".into()),
            ("debug".into(), "on".into()),
        ]);
        let options = draft.check(&models(), 0).unwrap();
        assert_eq!(options.name, "laptop");
        assert_eq!(options.spend_limit, Some(Nanos::new(12_500_000_000)));
        assert_eq!(options.limit_reset, LimitReset::Daily);
        assert_eq!(options.rpm_limit, Some(30));
        assert_eq!(options.allowed_models, models());
        assert_eq!(options.expires_ms, parse_date("2030-01-01"));
        assert!(options.debug);
    }

    #[test]
    fn bad_drafts_say_what_is_wrong_per_field() {
        let draft = Draft::from_pairs(vec![
            ("name".into(), "a\u{7}b".into()),
            ("spend_limit".into(), "0".into()),
            ("reset".into(), "weekly".into()),
            ("rpm".into(), "-3".into()),
            ("models".into(), "nope".into()),
            ("expires".into(), "2020-01-01".into()),
        ]);
        let errors = draft
            .check(&models(), parse_date("2026-12-07").unwrap())
            .unwrap_err();
        assert!(errors.name.is_some());
        assert!(errors.spend_limit.is_some());
        assert!(errors.reset.is_some());
        assert!(errors.rpm.is_some());
        assert!(errors.models.is_some());
        assert!(errors.expires.is_some());
        assert_eq!(errors.summary().len(), 6);
        let long = Draft {
            name: "é".repeat(101),
            reset: "total".into(),
            spend_limit: "1e3".into(),
            ..Draft::default()
        };
        let errors = long.check(&models(), 0).unwrap_err();
        assert!(errors.name.is_some() && errors.spend_limit.is_some());
        let empty = Draft::from_pairs(vec![]);
        assert_eq!(
            empty.check(&models(), 0).unwrap_err().name,
            Some("Enter a name for the key")
        );
    }
}
