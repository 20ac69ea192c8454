//! Sends sign-in codes and other console mail (low-balance alerts): by SMTP
//! (lettre, rustls) when `[auth.smtp]` is configured, otherwise into the
//! server log, a code as `sign-in code for <email>: <code>` (development
//! only). Every code handed to the mailer is also offered to in-process
//! watchers ([`Mailer::watch`]), and every message, codes included, to
//! [`Mailer::watch_mail`]'s:
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

/// A message as handed to the mailer, for in-process watchers.
#[derive(Clone, Debug)]
pub struct SentMail {
    pub to: String,
    pub subject: String,
    pub body: String,
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
    /// Watchers of every message sent (tests), likewise.
    mail: broadcast::Sender<SentMail>,
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
            mail: broadcast::channel(64).0,
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

    /// Receives every message sent from now on, codes included
    /// (in-process only).
    pub fn watch_mail(&self) -> broadcast::Receiver<SentMail> {
        self.mail.subscribe()
    }

    /// Sends `code` to `email`.
    pub async fn send_code(&self, email: &str, code: &str) -> Result<(), MailError> {
        let _ = self.sent.send(SentCode {
            email: email.to_owned(),
            code: code.to_owned(),
        });
        let subject = format!("{code} is your tokun sign-in code");
        let body = format!(
            "Your tokun sign-in code is {code}.\n\n\
             It works once, for 10 minutes. If you did not ask for it, ignore this message.\n"
        );
        self.offer(email, &subject, &body);
        let Some(smtp) = &self.smtp else {
            tracing::info!("sign-in code for {email}: {code}");
            return Ok(());
        };
        smtp.deliver(email, subject, body).await
    }

    /// Sends a plain-text message; without SMTP it is written to the log.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        self.offer(to, subject, body);
        let Some(smtp) = &self.smtp else {
            tracing::info!(
                to,
                subject,
                "no [auth.smtp]: this mail goes to the log:\n{body}"
            );
            return Ok(());
        };
        smtp.deliver(to, subject.to_owned(), body.to_owned()).await
    }

    fn offer(&self, to: &str, subject: &str, body: &str) {
        let _ = self.mail.send(SentMail {
            to: to.to_owned(),
            subject: subject.to_owned(),
            body: body.to_owned(),
        });
    }
}

impl Smtp {
    async fn deliver(&self, to: &str, subject: String, body: String) -> Result<(), MailError> {
        let mailbox: Mailbox = to.parse().map_err(|_| MailError::Address(to.to_owned()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(mailbox)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|error| MailError::Address(error.to_string()))?;
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(MailError::Smtp(error.to_string())),
            Err(_) => Err(MailError::Timeout),
        }
    }

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
