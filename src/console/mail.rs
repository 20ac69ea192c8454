//! Sends sign-in codes: by SMTP (lettre, rustls) when `[auth.smtp]` is
//! configured, otherwise into the server log as
//! `sign-in code for <email>: <code>` (development only). Every code handed
//! to the mailer is also offered to in-process watchers ([`Mailer::watch`]):
//! a broadcast that holds nothing when nobody listens, reachable only from
//! Rust in the same process (the integration tests), never over HTTP.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::broadcast;

use crate::config::{AuthConfig, SmtpConfig, SmtpTls};

/// How long one SMTP send may take before the person is told to retry.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// A code as handed to the mailer, for in-process watchers.
#[derive(Clone, Debug)]
pub struct SentCode {
    pub email: String,
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the address cannot receive mail: {0}")]
    Address(String),
    #[error("SMTP failed: {0}")]
    Smtp(String),
    #[error("SMTP timed out")]
    Timeout,
}

#[derive(Clone)]
pub struct Mailer {
    smtp: Option<Smtp>,
    /// Watchers of sent codes (tests); see the module docs.
    sent: broadcast::Sender<SentCode>,
}

#[derive(Clone)]
struct Smtp {
    transport: Arc<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &AuthConfig) -> Mailer {
        let smtp = config.smtp.as_ref().and_then(|smtp| {
            Smtp::new(smtp)
                .inspect_err(|error| {
                    tracing::error!(%error, "auth.smtp is unusable; sign-in codes go to the log")
                })
                .ok()
        });
        Mailer {
            smtp,
            sent: broadcast::channel(64).0,
        }
    }

    /// Whether codes go to the log (no SMTP): said once at start.
    pub fn logs_codes(&self) -> bool {
        self.smtp.is_none()
    }

    /// Receives every code sent from now on (in-process only).
    pub fn watch(&self) -> broadcast::Receiver<SentCode> {
        self.sent.subscribe()
    }

    /// Sends `code` to `email`.
    pub async fn send_code(&self, email: &str, code: &str) -> Result<(), MailError> {
        let _ = self.sent.send(SentCode {
            email: email.to_owned(),
            code: code.to_owned(),
        });
        let Some(smtp) = &self.smtp else {
            tracing::info!("sign-in code for {email}: {code}");
            return Ok(());
        };
        let to: Mailbox = email
            .parse()
            .map_err(|_| MailError::Address(email.to_owned()))?;
        let message = Message::builder()
            .from(smtp.from.clone())
            .to(to)
            .subject(format!("{code} is your tokun sign-in code"))
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "Your tokun sign-in code is {code}.\n\n\
                 It works once, for 10 minutes. If you did not ask for it, ignore this message.\n"
            ))
            .map_err(|error| MailError::Address(error.to_string()))?;
        match tokio::time::timeout(SEND_TIMEOUT, smtp.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(MailError::Smtp(error.to_string())),
            Err(_) => Err(MailError::Timeout),
        }
    }
}

impl Smtp {
    fn new(config: &SmtpConfig) -> Result<Smtp, MailError> {
        let smtp = |e: lettre::transport::smtp::Error| MailError::Smtp(e.to_string());
        let host = config.host.as_str();
        let mut builder = match config.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(smtp)?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(smtp)?,
        }
        .port(config.port)
        .timeout(Some(SEND_TIMEOUT));
        if let Some(username) = &config.username {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        let from = config
            .from
            .parse()
            .map_err(|_| MailError::Address(config.from.clone()))?;
        Ok(Smtp {
            transport: Arc::new(builder.build()),
            from,
        })
    }
}
