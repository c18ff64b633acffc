//! `sealpost retention …`, `sealpost hold …` and `sealpost ediscovery …`: retention rules and
//! the sweeper, legal holds, and the eDiscovery search and encrypted export.

use std::path::PathBuf;

use clap::Subcommand;

use super::{format_ms, parse_since, Run};
use crate::files::write_whole;
use crate::now_ms;

#[derive(Subcommand)]
pub(crate) enum RetentionCommand {
    /// The retention rules in force (set them in the policy: `[[retention]]`).
    Rules,
    /// Apply the rules now; every destruction is audited. The server also sweeps on its own.
    Run {
        /// List what would be destroyed, and destroy nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum HoldCommand {
    /// Every hold, open and released, with its custodians.
    List,
    /// Open a case; prints its id.
    Open {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Put an account under a hold, optionally only for mail with internal dates in a range.
    Add {
        hold: u64,
        address: String,
        /// From this date (as audit's --since).
        #[arg(long)]
        from: Option<String>,
        /// Before this date.
        #[arg(long)]
        until: Option<String>,
    },
    /// Take an account off a hold.
    Remove { hold: u64, address: String },
    /// Release a hold: retention takes its course again.
    Release { hold: u64 },
}

/// An eDiscovery search: every field given must match.
#[derive(clap::Args)]
pub(crate) struct DiscoveryArgs {
    /// Part of the sender's address or name.
    #[arg(long)]
    sender: Option<String>,
    /// Part of a To or Cc address or name.
    #[arg(long)]
    recipient: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    /// Words in the headers or text.
    #[arg(long)]
    text: Option<String>,
    /// Internal date at or after (as audit's --since).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    before: Option<String>,
    /// Only accounts under an open legal hold.
    #[arg(long)]
    held_only: bool,
}

impl DiscoveryArgs {
    fn query(&self) -> anyhow::Result<sealpost_console::discovery::DiscoveryQuery> {
        Ok(sealpost_console::discovery::DiscoveryQuery {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            subject: self.subject.clone(),
            text: self.text.clone(),
            since_ms: self.since.as_deref().map(parse_since).transpose()?,
            before_ms: self.before.as_deref().map(parse_since).transpose()?,
            held_only: self.held_only,
        })
    }
}

#[derive(Subcommand)]
pub(crate) enum DiscoveryCommand {
    /// What matches, counted (audited): account, folder, date, size, sender, subject.
    Search {
        #[command(flatten)]
        query: DiscoveryArgs,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Export what matches as a zip (one mbox, or one .eml a message) with a manifest of
    /// SHA-256 hashes, encrypted to an age recipient (audited).
    Export {
        #[command(flatten)]
        query: DiscoveryArgs,
        #[arg(long, value_enum, default_value = "eml")]
        format: DiscoveryFormat,
        /// The age recipient (`age1…`) the export is encrypted to.
        #[arg(long)]
        encrypt_to: String,
        /// The file to write (written under FILE.part, renamed when whole).
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DiscoveryFormat {
    Mbox,
    Eml,
}

pub(super) fn retention(command: RetentionCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        RetentionCommand::Rules => {
            let rules = run.store().retention_rules()?;
            if rules.is_empty() {
                writeln!(
                    run.err,
                    "no retention rules: nothing is destroyed by age, nothing kept past a user's delete"
                )?;
            }
            #[derive(serde::Serialize)]
            struct Rules<'a> {
                retention: &'a [sealpost_storage::RetentionRule],
            }
            write!(
                run.out,
                "{}",
                toml::to_string(&Rules { retention: &rules })?
            )?;
        }
        RetentionCommand::Run { dry_run, .. } => {
            let accounts: std::collections::HashMap<_, _> = run
                .store()
                .list_accounts()?
                .into_iter()
                .map(|a| (a.id, a.address))
                .collect();
            let gone = run.store().retention_sweep(now_ms(), dry_run, &run.actor)?;
            for d in &gone {
                let place = match (d.uid, d.kept) {
                    (Some(uid), _) => format!("uid {uid}"),
                    (None, Some(id)) => format!(
                        "kept {}",
                        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    ),
                    _ => String::new(),
                };
                writeln!(
                    run.out,
                    "{}  {}  {}  {place}  {} bytes  dated {}  rule {}",
                    if dry_run {
                        "would destroy"
                    } else {
                        "destroyed"
                    },
                    accounts.get(&d.account).map_or("?", String::as_str),
                    d.folder,
                    d.size,
                    format_ms(d.internal_date_ms),
                    d.rule
                )?;
            }
            writeln!(
                run.err,
                "{} messages {}",
                gone.len(),
                if dry_run {
                    "would be destroyed (dry run: nothing changed)"
                } else {
                    "destroyed"
                }
            )?;
        }
    }
    Ok(0)
}

pub(super) fn hold(command: HoldCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        HoldCommand::List => {
            let accounts: std::collections::HashMap<_, _> = run
                .store()
                .list_accounts()?
                .into_iter()
                .map(|a| (a.id, a.address))
                .collect();
            for hold in run.store().holds()? {
                let state = match hold.released_ms {
                    Some(at) => format!("released {}", format_ms(at)),
                    None => "open".into(),
                };
                writeln!(
                    run.out,
                    "hold {}  {}  ({state}; opened {} by {})  reason: {}",
                    hold.id,
                    hold.name,
                    format_ms(hold.opened_ms),
                    hold.opened_by,
                    hold.reason
                )?;
                for custodian in &hold.custodians {
                    let range = match (custodian.from_ms, custodian.until_ms) {
                        (None, None) => "all mail".to_string(),
                        (from, until) => format!(
                            "mail dated {} to {}",
                            from.map_or("the start".into(), format_ms),
                            until.map_or("now".into(), format_ms)
                        ),
                    };
                    writeln!(
                        run.out,
                        "    {}  {range}",
                        accounts
                            .get(&custodian.account)
                            .map_or("(deleted account)", String::as_str)
                    )?;
                }
            }
        }
        HoldCommand::Open { name, reason, .. } => {
            let id = run.store().open_hold(&name, &reason, &run.actor)?;
            writeln!(run.out, "hold {id} opened")?;
        }
        HoldCommand::Add {
            hold,
            address,
            from,
            until,
            ..
        } => {
            let account = run.find(&address)?;
            let from_ms = from.as_deref().map(parse_since).transpose()?;
            let until_ms = until.as_deref().map(parse_since).transpose()?;
            run.store()
                .hold_add_custodian(hold, account.id, from_ms, until_ms, &run.actor)?;
            writeln!(run.out, "{} is under hold {hold}", account.address)?;
        }
        HoldCommand::Remove { hold, address, .. } => {
            let account = run.find(&address)?;
            run.store()
                .hold_remove_custodian(hold, account.id, &run.actor)?;
            writeln!(run.out, "{} is off hold {hold}", account.address)?;
        }
        HoldCommand::Release { hold, .. } => {
            run.store().release_hold(hold, &run.actor)?;
            writeln!(
                run.out,
                "hold {hold} released; retention takes its course again"
            )?;
        }
    }
    Ok(0)
}

pub(super) fn ediscovery(command: DiscoveryCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    use sealpost_console::discovery;
    match command {
        DiscoveryCommand::Search { query, json, .. } => {
            let query = query.query()?;
            let (hits, truncated) = discovery::search_audited(
                run.store(),
                &run.actor,
                &query,
                discovery::DISCOVERY_HITS_MAX,
            )?;
            for hit in &hits {
                if json {
                    let line = serde_json::json!({
                        "account": hit.address, "folder": hit.folder, "internal_date_ms": hit.internal_date_ms,
                        "size": hit.size, "from": hit.from, "subject": hit.subject, "message_id": hit.message_id,
                        "kept": matches!(hit.place, discovery::Place::Kept(_)),
                    });
                    writeln!(run.out, "{line}")?;
                } else {
                    writeln!(
                        run.out,
                        "{}  {}  {}  {} bytes  from {}  {}",
                        hit.address,
                        hit.folder,
                        format_ms(hit.internal_date_ms),
                        hit.size,
                        hit.from,
                        hit.subject
                    )?;
                }
            }
            writeln!(
                run.err,
                "{}{} messages match",
                if truncated { "more than " } else { "" },
                hits.len()
            )?;
        }
        DiscoveryCommand::Export {
            query,
            format,
            encrypt_to,
            to,
            ..
        } => {
            let query = query.query()?;
            let kind = match format {
                DiscoveryFormat::Mbox => discovery::ExportKind::Mbox,
                DiscoveryFormat::Eml => discovery::ExportKind::Eml,
            };
            let exported = if run.via_server {
                discovery::export(
                    &run.console.store,
                    &run.actor,
                    &query,
                    kind,
                    &encrypt_to,
                    discovery::DISCOVERY_HITS_MAX,
                    &mut *run.out,
                )
                .map_err(|why| anyhow::anyhow!("{why}"))?
            } else {
                write_whole(&to, 0o600, |file| {
                    discovery::export(
                        run.store(),
                        &run.actor,
                        &query,
                        kind,
                        &encrypt_to,
                        discovery::DISCOVERY_HITS_MAX,
                        file,
                    )
                    .map_err(|why| anyhow::anyhow!("{why}"))
                })?
            };
            writeln!(
                run.err,
                "exported {} messages ({} bytes) to {}, encrypted to {}",
                exported.messages,
                exported.bytes,
                to.display(),
                encrypt_to.trim()
            )?;
        }
    }
    Ok(0)
}
