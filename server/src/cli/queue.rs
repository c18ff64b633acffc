//! `sealpost queue …`, `sealpost trace` and `sealpost pickup …`: the outbound queue, message
//! tracing from the delivery records, and messages kept for the pickup portal.

use anyhow::Context;
use clap::Subcommand;
use sealpost_storage::Store;

use super::{format_ms, parse_since, Run};

#[derive(Subcommand)]
pub(crate) enum QueueCommand {
    /// List messages waiting for outside delivery.
    List {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// One entry: its envelope and where each recipient's delivery stands, and why.
    Show { id: String },
    /// Try an entry again now (at the next look at the queue).
    Retry { id: String },
    /// Delete an entry: its recipients get nothing more. Audited.
    Delete { id: String },
}

/// A message trace: every field given must match.
#[derive(clap::Args)]
pub(crate) struct TraceArgs {
    /// Part of the sending account's address.
    #[arg(long)]
    sender: Option<String>,
    /// Part of a recipient's address.
    #[arg(long)]
    recipient: Option<String>,
    #[arg(long)]
    message_id: Option<String>,
    /// Sent at or after (as audit's --since).
    #[arg(long)]
    since: Option<String>,
    /// Sent before.
    #[arg(long)]
    before: Option<String>,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub(crate) enum PickupCommand {
    /// What a pickup link leads to (the portal's view); with --message, the message itself
    /// on standard output (audited).
    Show {
        token: String,
        #[arg(long)]
        message: bool,
    },
}

/// The queue entry named `id` (its hex id as `queue list` prints it).
fn find_queued(store: &Store, id: &str) -> anyhow::Result<sealpost_storage::QueuedMessage> {
    store
        .queued()?
        .into_iter()
        .find(|entry| entry.id.to_string() == id.trim().to_lowercase())
        .with_context(|| format!("no queue entry {id} (see sealpost queue list)"))
}

pub(super) fn queue(command: QueueCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        QueueCommand::Show { id, .. } => {
            let entry = find_queued(run.store(), &id)?;
            let account = run.store().account(entry.account)?;
            let out = &mut *run.out;
            writeln!(out, "queue entry {}", entry.id)?;
            writeln!(out, "  account       {}", account.address)?;
            writeln!(out, "  from          <{}>", entry.envelope.from)?;
            writeln!(out, "  size          {} bytes", entry.size)?;
            writeln!(out, "  queued        {}", format_ms(entry.created_ms))?;
            writeln!(out, "  attempts      {}", entry.attempts)?;
            writeln!(out, "  next attempt  {}", format_ms(entry.next_attempt_ms))?;
            for (recipient, state) in entry.envelope.recipients.iter().zip(&entry.states) {
                writeln!(
                    out,
                    "  to <{}>: {}",
                    recipient.address,
                    sealpost_console::state_text(state)
                )?;
            }
        }
        QueueCommand::Retry { id, .. } => {
            let entry = find_queued(run.store(), &id)?;
            run.store()
                .queue_retry(entry.account, entry.id, &run.actor)?;
            if let Some(waker) = run.console.queue_waker.as_ref() {
                waker.notify_one();
            }
            writeln!(
                run.out,
                "queue entry {} will be tried at the next look at the queue",
                entry.id
            )?;
        }
        QueueCommand::Delete { id, .. } => {
            let entry = find_queued(run.store(), &id)?;
            run.store()
                .queue_delete(entry.account, entry.id, &run.actor)?;
            writeln!(run.out, "queue entry {} deleted", entry.id)?;
        }
        QueueCommand::List { json, .. } => {
            let accounts: std::collections::HashMap<_, _> = run
                .store()
                .list_accounts()?
                .into_iter()
                .map(|a| (a.id, a.address))
                .collect();
            let queued = run.store().queued()?;
            let out = &mut *run.out;
            for entry in &queued {
                let account = accounts.get(&entry.account).map_or("?", String::as_str);
                let recipients: Vec<&str> = entry
                    .envelope
                    .recipients
                    .iter()
                    .map(|r| r.address.as_str())
                    .collect();
                if json {
                    let line = serde_json::json!({
                        "id": entry.id.to_string(), "account": account, "from": entry.envelope.from,
                        "recipients": recipients, "size": entry.size, "created_at_ms": entry.created_ms,
                        "notify": entry.envelope.recipients.iter().map(|r| &r.notify).collect::<Vec<_>>(),
                        "orcpt": entry.envelope.recipients.iter().map(|r| &r.orcpt).collect::<Vec<_>>(),
                        "env_id": entry.envelope.env_id, "ret": entry.envelope.ret,
                        "states": entry.states,
                        "attempts": entry.attempts, "next_attempt_at_ms": entry.next_attempt_ms,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{}  {}  {} bytes  from <{}> to {}  attempts {}",
                        entry.id,
                        format_ms(entry.created_ms),
                        entry.size,
                        entry.envelope.from,
                        recipients.join(", "),
                        entry.attempts
                    )?;
                }
            }
            if !json {
                writeln!(out, "{} queued", queued.len())?;
            }
        }
    }
    Ok(0)
}

pub(super) fn trace(args: TraceArgs, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let query = sealpost_console::TraceQuery {
        sender: args.sender,
        recipient: args.recipient,
        message_id: args.message_id,
        since_ms: args.since.as_deref().map(parse_since).transpose()?,
        before_ms: args.before.as_deref().map(parse_since).transpose()?,
    };
    let found = sealpost_console::trace(run.store(), &query)?;
    for traced in &found {
        let lines: Vec<serde_json::Value> = traced
            .delivery
            .lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "recipient": line.address,
                    "outcome": sealpost_console::state_text(&sealpost_storage::RecipientState {
                        status: line.status.clone(),
                        last_reply: None,
                    }),
                    "opened_at_ms": line.opened_ms,
                    "withdrawn_at_ms": line.revoked_ms,
                })
            })
            .collect();
        if args.json {
            let line = serde_json::json!({
                "sent_at_ms": traced.delivery.created_ms, "sender": traced.sender,
                "message_id": traced.message_id, "recipients": lines,
            });
            writeln!(run.out, "{line}")?;
        } else {
            writeln!(
                run.out,
                "{}  {}  {}",
                format_ms(traced.delivery.created_ms),
                traced.sender,
                traced.message_id
            )?;
            for line in &lines {
                writeln!(
                    run.out,
                    "    {}: {}",
                    line["recipient"].as_str().unwrap_or_default(),
                    line["outcome"].as_str().unwrap_or_default()
                )?;
            }
        }
    }
    writeln!(
        run.err,
        "{} messages to outside recipients found (at most {})",
        found.len(),
        sealpost_console::TRACE_ROWS_MAX
    )?;
    Ok(0)
}

pub(super) fn pickup(command: PickupCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        PickupCommand::Show { token, message, .. } => {
            let Some(pickup) = run
                .store()
                .pickup(&token)?
                .filter(|p| p.state == sealpost_storage::PickupState::Live)
            else {
                writeln!(
                    run.out,
                    "no pickup for that link (unknown, expired or withdrawn)"
                )?;
                return Ok(1);
            };
            if message {
                let raw = run
                    .store()
                    .read_pickup(&token)?
                    .context("the pickup went away")?;
                run.store().audit(
                    sealpost_storage::AuditEvent::new(
                        &run.actor,
                        "pickup.read",
                        format!("queue {}", pickup.queue),
                    )
                    .detail(format!("for {}", pickup.recipient)),
                )?;
                run.out.write_all(&raw)?;
                return Ok(0);
            }
            writeln!(
                run.out,
                "pickup for <{}> from <{}>",
                pickup.recipient, pickup.sender
            )?;
            writeln!(run.out, "  size     {} bytes", pickup.size)?;
            writeln!(run.out, "  created  {}", format_ms(pickup.created_ms))?;
            writeln!(run.out, "  expires  {}", format_ms(pickup.expires_ms))?;
            Ok(0)
        }
    }
}
