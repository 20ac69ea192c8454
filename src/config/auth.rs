//! The `[auth]` section: how long a console session lasts, who will be an
//! administrator (read by the admin console, later), and `[auth.smtp]`, the
//! server that sends sign-in codes. Without `[auth.smtp]` codes are written
//! to the log (development only; the server warns at start).

use std::time::Duration;

use super::raw::{RawAuth, RawSmtp};
use super::{ConfigError, Secret, SecretFn, invalid};

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How long a console session lasts (`session_days`, default 14).
    pub session: Duration,
    /// Emails (normalized) that will get the admin console.
    pub admin_emails: Vec<String>,
    /// Where sign-in codes are sent from; `None`: written to the log.
    pub smtp: Option<SmtpConfig>,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The `From:` of every message, e.g. `tokun <no-reply@example.com>`.
    pub from: String,
    pub tls: SmtpTls,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text: a relay on localhost only.
    None,
    /// Plain connect, then `STARTTLS` (required); port 587 by default.
    StartTls,
    /// TLS from the first byte; port 465 by default.
    Tls,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session: Duration::from_secs(14 * 86_400),
            admin_emails: Vec::new(),
            smtp: None,
        }
    }
}

pub(super) fn auth_config(raw: RawAuth, secret: &SecretFn<'_>) -> Result<AuthConfig, ConfigError> {
    let days = raw.session_days.unwrap_or(14);
    if !(1..=400).contains(&days) {
        return Err(invalid("auth.session_days", "must be from 1 to 400"));
    }
    let mut admin_emails = Vec::with_capacity(raw.admin_emails.len());
    for (i, email) in raw.admin_emails.iter().enumerate() {
        if !crate::console::is_email(email) {
            return Err(invalid(
                format!("auth.admin_emails[{i}]"),
                format!("`{email}` is not an email address"),
            ));
        }
        admin_emails.push(email.trim().to_lowercase());
    }
    Ok(AuthConfig {
        session: Duration::from_secs(days * 86_400),
        admin_emails,
        smtp: raw.smtp.map(|smtp| smtp_config(smtp, secret)).transpose()?,
    })
}

fn smtp_config(raw: RawSmtp, secret: &SecretFn<'_>) -> Result<SmtpConfig, ConfigError> {
    let host = raw.host.trim().to_owned();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid("auth.smtp.host", "must be a host name"));
    }
    let tls = match raw.tls.as_deref() {
        None | Some("starttls") => SmtpTls::StartTls,
        Some("tls") => SmtpTls::Tls,
        Some("none") => SmtpTls::None,
        Some(other) => {
            return Err(invalid(
                "auth.smtp.tls",
                format!("`{other}` is not one of: none, starttls, tls"),
            ));
        }
    };
    let port = raw.port.unwrap_or(match tls {
        SmtpTls::None => 25,
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
    });
    if port == 0 {
        return Err(invalid("auth.smtp.port", "must be from 1 to 65535"));
    }
    let from = raw.from.trim().to_owned();
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(invalid(
            "auth.smtp.from",
            format!("`{from}` is not an address like `tokun <no-reply@example.com>`"),
        ));
    }
    let password = secret("auth.smtp.password", raw.password)?;
    if password.is_some() && raw.username.is_none() {
        return Err(invalid("auth.smtp.username", "is required with a password"));
    }
    Ok(SmtpConfig {
        host,
        port,
        username: raw.username,
        password,
        from,
        tls,
    })
}
