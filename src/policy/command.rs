//! `tokun policy announce`: the same announcement as `POST /admin/policy`,
//! made on the store directly (like `tokun accounts`, with no server using
//! it). A running server mails it at its next start; with one running, use
//! the admin API, which also wakes the mailing at once.

use anyhow::bail;
use tokun_storage::ACTOR_CLI;

use super::{Announcement, announce, name};
use crate::cli::{PolicyCommand, StoreArgs};
use crate::commands::load_config;
use crate::services::{Services, StartMode};

pub async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Announce {
            effective,
            summary,
            url,
            store,
        } => {
            let announcement = Announcement {
                effective,
                summary,
                url,
            };
            announce_on(&store, announcement).await
        }
    }
}

async fn announce_on(store: &StoreArgs, announcement: Announcement) -> anyhow::Result<()> {
    let config = load_config(store)?;
    let (services, _) = Services::start(&config, StartMode::Command).await?;
    let now = tokun_providers::clock::unix_ms();
    let result = announce(&services.store, ACTOR_CLI, announcement, now).await;
    services.stop().await;
    let record = match result {
        Ok(record) => record,
        Err(error) => bail!("{error}"),
    };
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(
        &mut out,
        format!(
            "{}\teffective {}\nsigned-in people see it on their dashboard; each account is \
             emailed once (when [auth.smtp] is configured) once a server runs\n",
            name(record.id),
            record.effective
        )
        .as_bytes(),
    )?;
    Ok(())
}
