//! `sealpost quarantine …`: messages the spam filter held (list, release, delete).

use anyhow::Context;
use clap::Subcommand;

use super::{format_ms, Run};

#[derive(Subcommand)]
pub(crate) enum QuarantineCommand {
    /// Held messages (of one account, or all): id, account, sender, verdict, held, expires;
    /// subjects only with --subjects (a subject can be PHI). Audited.
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        subjects: bool,
        #[arg(long)]
        json: bool,
    },
    /// Deliver a held message into the account's INBOX and BACKUP, byte for byte.
    Release { address: String, id: String },
    /// Delete a held message.
    Delete { address: String, id: String },
}

pub(super) fn quarantine(command: QuarantineCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    use sealpost_storage::{quarantine_id_hex, quarantine_id_parse};
    match command {
        QuarantineCommand::List {
            account,
            subjects,
            json,
            ..
        } => {
            let accounts = match &account {
                Some(address) => vec![run.find(address)?],
                None => run.store().list_accounts()?,
            };
            let mut count = 0;
            for account in &accounts {
                for held in run.store().quarantined(account.id)? {
                    count += 1;
                    let subject = if subjects {
                        held.subject.clone()
                    } else {
                        "(not shown)".into()
                    };
                    if json {
                        let line = serde_json::json!({
                            "id": quarantine_id_hex(&held.id), "account": account.address, "sender": held.sender,
                            "subject": subject, "verdict": held.verdict, "held_at_ms": held.held_ms,
                            "expires_at_ms": held.expires_ms, "size": held.size,
                        });
                        writeln!(run.out, "{line}")?;
                    } else {
                        writeln!(
                            run.out,
                            "{}  {}  from {}  {}  held {}  expires {}  {subject}",
                            quarantine_id_hex(&held.id),
                            account.address,
                            held.sender,
                            held.verdict,
                            format_ms(held.held_ms),
                            format_ms(held.expires_ms)
                        )?;
                    }
                }
            }
            run.store().audit(
                sealpost_storage::AuditEvent::new(&run.actor, "quarantine.search", "quarantine")
                    .detail(format!(
                        "{count} held; account {}",
                        account.as_deref().unwrap_or("any")
                    )),
            )?;
            writeln!(run.err, "{count} held messages")?;
        }
        QuarantineCommand::Release { address, id, .. } => {
            let account = run.find(&address)?;
            let id = quarantine_id_parse(&id).context("a quarantine id is 32 hex digits")?;
            run.store()
                .release_quarantined(account.id, &id, &run.actor)?;
            writeln!(
                run.out,
                "released into {}'s INBOX and BACKUP",
                account.address
            )?;
        }
        QuarantineCommand::Delete { address, id, .. } => {
            let account = run.find(&address)?;
            let id = quarantine_id_parse(&id).context("a quarantine id is 32 hex digits")?;
            run.store()
                .delete_quarantined(account.id, &id, &run.actor)?;
            writeln!(run.out, "deleted")?;
        }
    }
    Ok(0)
}
