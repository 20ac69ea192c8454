//! The `[auth]` section: how long a console session lasts, who will be an
//! administrator (read by the admin console, later), and `[auth.smtp]`, the
//! server that sends sign-in codes. Without `[auth.smtp]` codes are written
//! to the log (development only; the server warns at start). `[auth.oidc]`
//! adds "Sign in with …" through one OpenID Connect issuer; `[auth.passkeys]`
//! tunes passkey sign-in (on by default).

use std::time::Duration;

use super::raw::{RawAuth, RawOidc, RawPasskeys, RawSmtp};
use super::{ConfigError, Secret, SecretFn, invalid};

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How long a console session lasts (`session_days`, default 14).
    pub session: Duration,
    /// Emails (normalized) that will get the admin console.
    pub admin_emails: Vec<String>,
    /// Where sign-in codes are sent from; `None`: written to the log.
    pub smtp: Option<SmtpConfig>,
    /// Sign-in through an OpenID Connect issuer; `None`: off.
    pub oidc: Option<OidcAuth>,
    pub passkeys: PasskeysAuth,
}

/// `[auth.oidc]`: one issuer. The callback is
/// `<server.public_url>/login/oidc/callback`, registered with the issuer.
#[derive(Debug, Clone)]
pub struct OidcAuth {
    /// As the issuer spells itself (https, or http on a loopback host).
    pub issuer_url: String,
    pub client_id: String,
    /// `None` for a public client (PKCE alone).
    pub client_secret: Option<Secret>,
    /// The button says "Sign in with <display_name>"; default: the issuer's host.
    pub display_name: String,
}

/// `[auth.passkeys]`.
#[derive(Debug, Clone, Default)]
pub struct PasskeysAuth {
    /// `false` hides passkeys everywhere (default `true`).
    pub disabled: bool,
    /// The WebAuthn relying party id; default: the host of
    /// `server.public_url` (`localhost` without one or on a loopback
    /// address). Passkeys are bound to it: changing it orphans them.
    pub rp_id: Option<String>,
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
            oidc: None,
            passkeys: PasskeysAuth::default(),
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
        oidc: raw.oidc.map(|oidc| oidc_config(oidc, secret)).transpose()?,
        passkeys: passkeys_config(raw.passkeys)?,
    })
}

fn oidc_config(raw: RawOidc, secret: &SecretFn<'_>) -> Result<OidcAuth, ConfigError> {
    let issuer_url = raw.issuer_url.trim().to_owned();
    let Some(host) = issuer_host(&issuer_url) else {
        return Err(invalid(
            "auth.oidc.issuer_url",
            "must be an https:// URL (http:// only on localhost)",
        ));
    };
    let client_id = raw.client_id.trim().to_owned();
    if client_id.is_empty() {
        return Err(invalid("auth.oidc.client_id", "must not be empty"));
    }
    let display_name = match raw.display_name.as_deref().map(str::trim) {
        Some("") => return Err(invalid("auth.oidc.display_name", "must not be empty")),
        Some(name) => name.to_owned(),
        None => host,
    };
    Ok(OidcAuth {
        issuer_url,
        client_id,
        client_secret: secret("auth.oidc.client_secret", raw.client_secret)?,
        display_name,
    })
}

/// The host of an issuer URL that is https, or http on a loopback host.
fn issuer_host(url: &str) -> Option<String> {
    let (https, rest) = match url.split_once("://")? {
        ("https", rest) => (true, rest),
        ("http", rest) => (false, rest),
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    let plain = !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || c == '@');
    (plain && (https || loopback)).then(|| host.to_owned())
}

fn passkeys_config(raw: RawPasskeys) -> Result<PasskeysAuth, ConfigError> {
    let rp_id = raw.rp_id.map(|id| id.trim().to_lowercase());
    if let Some(id) = &rp_id {
        let domain = !id.is_empty()
            && id.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain {
            return Err(invalid(
                "auth.passkeys.rp_id",
                "must be a domain name like example.com (no scheme, no port)",
            ));
        }
    }
    Ok(PasskeysAuth {
        disabled: !raw.enabled.unwrap_or(true),
        rp_id,
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

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn parse(toml: &str) -> Result<Config, String> {
        Config::parse(toml, |_| Some("from-env".to_owned())).map_err(|e| e.to_string())
    }

    #[test]
    fn oidc_needs_https_except_on_loopback() {
        let config = parse(
            "[auth.oidc]\nissuer_url = \"https://accounts.example.com\"\nclient_id = \"tokun\"\nclient_secret = \"${SECRET}\"\n",
        )
        .unwrap();
        let oidc = config.auth.oidc.unwrap();
        assert_eq!(oidc.display_name, "accounts.example.com");
        assert_eq!(oidc.client_secret.unwrap().expose(), "from-env");
        let local = "[auth.oidc]\nissuer_url = \"http://127.0.0.1:9000\"\nclient_id = \"x\"\ndisplay_name = \"Fake\"\n";
        assert_eq!(
            parse(local).unwrap().auth.oidc.unwrap().display_name,
            "Fake"
        );
        for bad in [
            "http://accounts.example.com",
            "ftp://x",
            "https://",
            "accounts.example.com",
        ] {
            let toml = format!("[auth.oidc]\nissuer_url = \"{bad}\"\nclient_id = \"x\"\n");
            assert!(
                parse(&toml).unwrap_err().contains("auth.oidc.issuer_url"),
                "{bad}"
            );
        }
        let empty = "[auth.oidc]\nissuer_url = \"https://a.example\"\nclient_id = \" \"\n";
        assert!(parse(empty).unwrap_err().contains("auth.oidc.client_id"));
    }

    #[test]
    fn passkeys_are_on_by_default_and_the_rp_id_is_a_domain() {
        let config = parse("").unwrap();
        assert!(!config.auth.passkeys.disabled);
        assert_eq!(config.auth.passkeys.rp_id, None);
        let off = parse("[auth.passkeys]\nenabled = false\nrp_id = \"Example.com\"\n").unwrap();
        assert!(off.auth.passkeys.disabled);
        assert_eq!(off.auth.passkeys.rp_id.as_deref(), Some("example.com"));
        for bad in ["https://example.com", "example.com:443", "", "a..b"] {
            let toml = format!("[auth.passkeys]\nrp_id = \"{bad}\"\n");
            assert!(
                parse(&toml).unwrap_err().contains("auth.passkeys.rp_id"),
                "{bad}"
            );
        }
    }
}
