//! The administrative subcommands: every page of the admin console as a command (accounts,
//! lockouts, policy, audit, queue, message tracing, health), plus DNS records, pickups and
//! the master key. Each calls the code the console's pages call (`sealpost_webmail::console`
//! and the store). When `sealpost serve` runs on the data folder, the command runs inside it
//! through the control socket (`control.rs`), so its live parts see the change at once;
//! otherwise it opens the store itself.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use sealpost_storage::{
    Account, AccountStatus, Actor, AuditSearch, Error as StoreError, MasterKey, NewAccount, Role,
    Store,
};
use sealpost_webmail::console::{
    self, AccountAction, Console, ExportFormat, Outcome, PolicyRefusal,
};

use crate::config::Loaded;
use crate::now_ms;

/// The console's commands, which also run against a running server.
#[derive(Subcommand)]
pub(crate) enum Admin {
    /// Manage accounts (the console's Accounts pages).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Accounts locked out by failed sign-ins (in a running server).
    #[command(subcommand)]
    Lockout(LockoutCommand),
    /// The sending, sign-in and portal policy (the console's Policies page).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Search, export and check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Look at and act on the outbound queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Was a message sent, did it arrive? From the delivery records, without content.
    Trace(TraceArgs),
    /// Listeners, certificate, store, queue, failures and DNS (the console's Health page).
    Health {
        #[arg(long)]
        data: PathBuf,
    },
    /// The DNS records to publish.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Messages kept for pickup through the portal.
    #[command(subcommand)]
    Pickup(PickupCommand),
    /// Retention rules in force, and the sweeper run now (or with --dry-run, what would go).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Legal holds: open a case, add or remove custodians, release it.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Search every account's mail (counts first), and export the result encrypted.
    #[command(subcommand)]
    Ediscovery(DiscoveryCommand),
    /// Messages the spam filter held: list, release into INBOX and BACKUP, delete.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// The TLS certificate: show it, obtain or renew it by ACME now, or reload its files.
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// Take an encrypted backup (`--to FILE`), while the server runs or not; `backup verify
    /// FILE --identity KEYFILE` checks one without restoring it.
    Backup(BackupArgs),
}

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
        #[arg(long)]
        data: PathBuf,
    },
    /// Deliver a held message into the account's INBOX and BACKUP, byte for byte.
    Release {
        address: String,
        id: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Delete a held message.
    Delete {
        address: String,
        id: String,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertificateCommand {
    /// The certificate in `[paths]`: names, issuer, expiry.
    Show {
        #[arg(long)]
        data: PathBuf,
    },
    /// Obtain a certificate from `[acme] directory` now and put it in force (the server
    /// must run: it answers the CA's challenge).
    Renew {
        #[arg(long)]
        data: PathBuf,
    },
    /// Read the certificate files again and put them in force (after replacing them by hand).
    Reload {
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum RetentionCommand {
    /// The retention rules in force (set them in the policy: `[[retention]]`).
    Rules {
        #[arg(long)]
        data: PathBuf,
    },
    /// Apply the rules now; every destruction is audited. The server also sweeps on its own.
    Run {
        /// List what would be destroyed, and destroy nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum HoldCommand {
    /// Every hold, open and released, with its custodians.
    List {
        #[arg(long)]
        data: PathBuf,
    },
    /// Open a case; prints its id.
    Open {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        data: PathBuf,
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
        #[arg(long)]
        data: PathBuf,
    },
    /// Take an account off a hold.
    Remove {
        hold: u64,
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Release a hold: retention takes its course again.
    Release {
        hold: u64,
        #[arg(long)]
        data: PathBuf,
    },
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
    fn query(&self) -> anyhow::Result<sealpost_webmail::discovery::DiscoveryQuery> {
        Ok(sealpost_webmail::discovery::DiscoveryQuery {
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
        #[arg(long)]
        data: PathBuf,
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
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DiscoveryFormat {
    Mbox,
    Eml,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    pub(crate) check: Option<BackupCheck>,
    /// The file to write (written under FILE.part, renamed when whole).
    #[arg(long)]
    pub(crate) to: Option<PathBuf>,
    /// Encrypt to this age recipient instead of `[backup] recipient`.
    #[arg(long)]
    recipient: Option<String>,
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum BackupCheck {
    /// Decrypt a backup and check every file against its manifest, writing nothing.
    Verify {
        file: PathBuf,
        /// The backup identity (`keys/backup.key` as `sealpost init` made it).
        #[arg(long)]
        identity: PathBuf,
    },
}

/// What a command runs with: the store through the console's operations, and where its
/// output goes (this process's, or frames back to the client of the control socket).
pub(crate) struct Run<'a> {
    pub(crate) loaded: &'a Loaded,
    pub(crate) console: &'a Console,
    /// The running server's health facts (listeners in use); `None` without a server.
    pub(crate) health: Option<&'a sealpost_webmail::HealthInfo>,
    pub(crate) runtime: Option<&'a tokio::runtime::Handle>,
    /// The running server's certificate in force (ACME renewal, reload).
    pub(crate) certs: Option<&'a std::sync::Arc<crate::acme::Certificates>>,
    /// Standard input, read whole by the client for the commands that take it.
    pub(crate) input: Option<String>,
    pub(crate) via_server: bool,
    pub(crate) actor: Actor,
    pub(crate) out: &'a mut dyn Write,
    pub(crate) err: &'a mut dyn Write,
}

impl Run<'_> {
    fn store(&self) -> &Store {
        &self.console.store
    }

    fn find(&self, address: &str) -> anyhow::Result<Account> {
        self.store()
            .find_account(address)?
            .with_context(|| format!("no account {address}"))
    }

    /// The first line of standard input, as a password: checked for strength against the
    /// account's own words (`context`) unless `allow_weak`; even then at least 8 characters.
    fn password(&self, context: &[&str], allow_weak: bool) -> anyhow::Result<String> {
        let input = self.input.as_deref().unwrap_or_default();
        let password = input.lines().next().unwrap_or_default().to_string();
        if password.chars().count() < 8 {
            bail!("the password must have at least 8 characters");
        }
        if !allow_weak {
            if let Err(weakness) = sealpost_auth::password::check(&password, context) {
                bail!("the password is too weak ({weakness}); choose another, or add --allow-weak-password for a test fixture or a migration");
            }
        }
        Ok(password)
    }
}

/// The `--data` folder of this process's arguments.
fn data_arg() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--data" {
            return args.next().map(PathBuf::from);
        }
        if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--data=")) {
            return Some(PathBuf::from(value));
        }
    }
    None
}

/// Whether the command reads standard input.
fn takes_input(command: &Admin) -> bool {
    matches!(
        command,
        Admin::Account(AccountCommand::Add {
            password_stdin: true,
            ..
        }) | Admin::Account(AccountCommand::Password { .. })
            | Admin::Policy(PolicyCommand::Set { .. })
    )
}

/// Standard input whole, at most `CONTROL_INPUT_BYTES_MAX`.
fn read_input() -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(crate::control::CONTROL_INPUT_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .context("reading standard input")?;
    if bytes.len() as u64 > crate::control::CONTROL_INPUT_BYTES_MAX {
        bail!(
            "standard input is over {} bytes",
            crate::control::CONTROL_INPUT_BYTES_MAX
        );
    }
    String::from_utf8(bytes).context("standard input is not UTF-8")
}

/// Runs a console command: in the server when it runs on the data folder, else on the store.
pub(crate) fn admin(command: Admin) -> anyhow::Result<ExitCode> {
    let data = data_arg().context("--data DIR is required")?;
    let command = match command {
        Admin::Audit(AuditCommand::Verify {
            expect_at_least,
            anchor,
            backup: Some(backup),
            identity: Some(identity),
            data,
        }) => {
            return audit_verify_against_backup(expect_at_least, anchor, &backup, &identity, data)
        }
        command => command,
    };
    let input = if takes_input(&command) {
        Some(read_input()?)
    } else {
        None
    };
    let output = match &command {
        Admin::Audit(AuditCommand::Export { output, .. }) => output.clone(),
        Admin::Backup(args) => Some(args.to.clone().context("--to FILE is required")?),
        Admin::Ediscovery(DiscoveryCommand::Export { to, .. }) => Some(to.clone()),
        _ => None,
    };
    if let Some(stream) = crate::control::connect(&data) {
        return crate::control::forward(stream, input, output.as_deref());
    }
    let (loaded, store) = open_store(&data)?;
    let console = Console::offline(store);
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let code = execute(
        command,
        &mut Run {
            loaded: &loaded,
            console: &console,
            health: None,
            runtime: None,
            certs: None,
            input,
            via_server: false,
            actor: Actor::cli(),
            out: &mut out,
            err: &mut err,
        },
    )?;
    out.flush()?;
    Ok(ExitCode::from(code))
}

/// Runs one command; returns its exit status.
pub(crate) fn execute(command: Admin, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        Admin::Account(command) => account(command, run),
        Admin::Lockout(command) => lockout(command, run),
        Admin::Policy(command) => policy(command, run),
        Admin::Audit(command) => audit(command, run),
        Admin::Queue(command) => queue(command, run),
        Admin::Trace(args) => trace(args, run),
        Admin::Health { .. } => health(run),
        Admin::Dns(DnsCommand::Records { .. }) => {
            crate::dkim::ensure_keys(run.store())?;
            write!(
                run.out,
                "{}",
                crate::dkim::dns_records(run.loaded, run.store())?
            )?;
            Ok(0)
        }
        Admin::Pickup(command) => pickup(command, run),
        Admin::Backup(args) => backup(args, run),
        Admin::Retention(command) => retention(command, run),
        Admin::Certificate(command) => certificate(command, run),
        Admin::Quarantine(command) => quarantine(command, run),
        Admin::Hold(command) => hold(command, run),
        Admin::Ediscovery(command) => ediscovery(command, run),
    }
}

fn quarantine(command: QuarantineCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
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

fn certificate(command: CertificateCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let cfg = &run.loaded.config;
    match command {
        CertificateCommand::Show { .. } => {
            let path = run.loaded.path(&cfg.paths.tls_certificate);
            let pem =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let der = rustls_pemfile::certs(&mut pem.as_slice())
                .next()
                .context("no certificate in the file")??;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let (names, not_after) =
                crate::serve::certificate_facts(&path).context("the certificate does not read")?;
            writeln!(run.out, "certificate {}", path.display())?;
            writeln!(run.out, "  names    {}", names.join(", "))?;
            writeln!(run.out, "  issuer   {}", cert.issuer())?;
            writeln!(run.out, "  serial   {}", cert.raw_serial_as_string())?;
            writeln!(run.out, "  expires  {}", format_ms(not_after))?;
        }
        CertificateCommand::Renew { .. } => {
            let (Some(certs), Some(runtime)) = (run.certs, run.runtime) else {
                bail!(
                    "the server is not running: start it (it answers the CA's challenge on its HTTPS port), then renew"
                );
            };
            let ends =
                runtime.block_on(crate::acme::obtain(run.loaded, &run.console.store, certs))?;
            writeln!(
                run.out,
                "certificate obtained, in force for new connections; valid until {}",
                format_ms(ends)
            )?;
        }
        CertificateCommand::Reload { .. } => {
            let Some(certs) = run.certs else {
                bail!("the server is not running: it reads the files when it starts");
            };
            certs.reload(run.loaded)?;
            run.store().audit(sealpost_storage::AuditEvent::new(
                &run.actor,
                "certificate.reload",
                cfg.server.hostname.clone(),
            ))?;
            writeln!(
                run.out,
                "certificate files read again; in force for new connections"
            )?;
        }
    }
    Ok(0)
}

fn retention(command: RetentionCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        RetentionCommand::Rules { .. } => {
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

fn hold(command: HoldCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        HoldCommand::List { .. } => {
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

fn ediscovery(command: DiscoveryCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    use sealpost_webmail::discovery;
    match command {
        DiscoveryCommand::Search { query, json, .. } => {
            let query = query.query()?;
            let (hits, truncated) = discovery::search_audited(run.store(), &run.actor, &query)?;
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
                    &mut *run.out,
                )
                .map_err(|why| anyhow::anyhow!("{why}"))?
            } else {
                write_whole(&to, 0o600, |file| {
                    discovery::export(run.store(), &run.actor, &query, kind, &encrypt_to, file)
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

/// A backup to `--to` (or, through the control socket, to the client, which writes the file).
fn backup(args: BackupArgs, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let to = args.to.context("--to FILE is required")?;
    let recipient = args
        .recipient
        .unwrap_or_else(|| run.loaded.config.backup.recipient.clone());
    let summary = if run.via_server {
        crate::backup::write(run.loaded, &run.console.store, &recipient, &mut *run.out)?
    } else {
        write_whole(&to, 0o600, |file| {
            crate::backup::write(run.loaded, run.store(), &recipient, file)
        })?
    };
    let anchor = summary.audit.map(|a| a.to_string()).unwrap_or_default();
    run.store().audit(
        sealpost_storage::AuditEvent::new(&run.actor, "backup.create", "store").detail(format!(
            "{} files, {} bytes; audit anchor {anchor}",
            summary.files, summary.bytes
        )),
    )?;
    writeln!(
        run.err,
        "backup of {} files ({} bytes) encrypted to {} into {}; audit anchor {anchor}",
        summary.files,
        summary.bytes,
        recipient.trim(),
        to.display()
    )?;
    Ok(0)
}

/// Where a file is written before it is renamed into place whole.
pub(crate) fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Writes `path` whole or not at all: `write` fills `path.part` (created with `mode`), which
/// is fsynced and renamed into place when `write` succeeds, and removed when it fails.
pub(crate) fn write_whole<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let partial = part_path(path);
    let _ = std::fs::remove_file(&partial);
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut buffered = std::io::BufWriter::new(file);
        let done = write(&mut buffered)?;
        buffered
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", partial.display()))?
            .sync_all()
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("renaming into {}", path.display()))?;
        Ok(done)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[derive(Subcommand)]
pub(crate) enum AccountCommand {
    /// Make an account. Without --password-stdin or --enrolment-link a password is generated
    /// and printed once.
    Add {
        address: String,
        #[arg(long, default_value = "staff")]
        role: Role,
        /// The display name (default: the local part of the address).
        #[arg(long)]
        name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "enrolment_link")]
        password_stdin: bool,
        /// No password: print a one-time link for the owner to choose one (as the console).
        #[arg(long)]
        enrolment_link: bool,
        /// Accept a password the strength check refuses (test fixtures, migrations).
        #[arg(long)]
        allow_weak_password: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// List accounts, or search them (address or name) a page of 50 at a time.
    List {
        /// Only accounts whose address or name contains this.
        #[arg(long)]
        search: Option<String>,
        /// This page of 50 (from 1) instead of every account.
        #[arg(long)]
        page: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// One account: status, role, second factors, sessions, app passwords, aliases, quota.
    Show {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// A one-time link for the account's owner to choose the password (as the console's
    /// "New enrolment link"); prints the path to append to the site's address.
    EnrolmentLink {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Set the account's storage limit in MB (as the console's quota), or lift it with --none.
    Quota {
        address: String,
        /// MB, decimals allowed.
        #[arg(long, conflicts_with = "none", allow_hyphen_values = true)]
        mb: Option<String>,
        #[arg(long)]
        none: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// Make an alias (an address at the primary domain) reach the account, which may send as it.
    AliasAdd {
        address: String,
        alias: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Stop an alias reaching the account.
    AliasRemove {
        address: String,
        alias: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Stop an account from logging in and end its sessions (web and IMAP); its mail stays.
    Disable {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Let a disabled account log in again.
    Enable {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// End every web and IMAP session of the account.
    EndSessions {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Remove the account's second factors (passkeys, authenticator app, recovery codes) and
    /// end its sessions; the next sign-in sets up a new one.
    ResetFactors {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Set a new password, read from the first line of standard input.
    Password {
        address: String,
        /// Accept a password the strength check refuses (test fixtures, migrations).
        #[arg(long)]
        allow_weak_password: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// Issue an app password for a mail client (shown once). Users issue their own on the
    /// web after a strong sign-in; this is for an admin setting up a device or a migration.
    AppPassword {
        address: String,
        /// What the user will recognise it by ("Outlook on the clinic PC").
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "both")]
        scope: ScopeArg,
        #[arg(long)]
        data: PathBuf,
    },
    /// List an account's app passwords: id, name, scope, created, last use and address.
    AppPasswords {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Revoke an app password by its id (from `app-passwords`).
    RevokeAppPassword {
        address: String,
        id: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Revoke every app password of the account.
    RevokeAppPasswords {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Delete an account and destroy its keys: its mail can never be read again.
    Delete {
        address: String,
        /// Confirms that the account's mail is to be destroyed.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        data: PathBuf,
    },
}

/// Which mail protocols an app password opens.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ScopeArg {
    Imap,
    Smtp,
    Both,
}

impl From<ScopeArg> for sealpost_auth::Scope {
    fn from(scope: ScopeArg) -> Self {
        match scope {
            ScopeArg::Imap => sealpost_auth::Scope::Imap,
            ScopeArg::Smtp => sealpost_auth::Scope::Smtp,
            ScopeArg::Both => sealpost_auth::Scope::Both,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum LockoutCommand {
    /// Accounts locked out now, with their failed sign-ins.
    List {
        #[arg(long)]
        data: PathBuf,
    },
    /// Lift an account's lockout (audited).
    Lift {
        address: String,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// The policy in force (or a saved version) as TOML, which `set` takes back.
    Show {
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        data: PathBuf,
    },
    /// Check the policy on standard input (TOML) and save it as the next version, in force at
    /// once in a running server. Nothing changes if it does not check.
    Set {
        #[arg(long)]
        data: PathBuf,
    },
    /// The saved versions, newest first: who saved each and when.
    History {
        #[arg(long)]
        data: PathBuf,
    },
    /// Which content rules of the policy in force a sample text matches (nothing is sent).
    Try {
        #[arg(long, default_value = "")]
        subject: String,
        #[arg(long, default_value = "")]
        text: String,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the keyed chain and report the first broken link; with what was kept outside
    /// the store (a record count, anchors from the server's log or a backup's manifest), also
    /// a chain cut or rewritten below it. Exits 1 if broken or short.
    Verify {
        /// Report a chain of fewer records than N (a count seen earlier: a previous verify,
        /// the server's log, a backup's anchor).
        #[arg(long, value_name = "N")]
        expect_at_least: Option<u64>,
        /// An anchor SEQ:LINK, as the server logs it every hour ("audit anchor") and backups
        /// keep it: the chain must still hold record SEQ with that link. Repeatable.
        #[arg(long, value_name = "SEQ:LINK")]
        anchor: Vec<String>,
        /// Check the chain against the anchor in this backup's manifest (the backup is
        /// decrypted with --identity and checked whole on the way).
        #[arg(long, value_name = "FILE", requires = "identity")]
        backup: Option<PathBuf>,
        /// The backup identity (`keys/backup.key` as `sealpost init` made it).
        #[arg(long, value_name = "KEYFILE", requires = "backup")]
        identity: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
    },
    /// Search the log as the console does (every word of every field given), newest first;
    /// JSON lines.
    Search {
        #[command(flatten)]
        filter: AuditFilter,
        /// Records at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        data: PathBuf,
    },
    /// Write records, oldest first: the whole log as JSON lines, or with a filter or --format
    /// csv what the console's export writes (at most 1,000,000 records, audited).
    Export {
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
    },
}

/// The console's audit search fields.
#[derive(clap::Args, Default)]
pub(crate) struct AuditFilter {
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    object: Option<String>,
    /// Words anywhere in the record.
    #[arg(long)]
    text: Option<String>,
    /// Records at or after this time: RFC 3339 (2026-01-31T08:00:00Z), a date (2026-01-31,
    /// midnight UTC) or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Records before this time (as --since).
    #[arg(long)]
    before: Option<String>,
}

impl AuditFilter {
    fn search(&self, limit: usize) -> anyhow::Result<AuditSearch> {
        Ok(AuditSearch {
            actor: self.actor.clone(),
            action: self.action.clone(),
            object: self.object.clone(),
            text: self.text.clone(),
            since_ms: self.since.as_deref().map(parse_since).transpose()?,
            before_ms: self.before.as_deref().map(parse_since).transpose()?,
            limit,
            ..AuditSearch::default()
        })
    }

    fn narrows(&self) -> bool {
        self.actor.is_some()
            || self.action.is_some()
            || self.object.is_some()
            || self.text.is_some()
            || self.before.is_some()
    }

    fn described(&self) -> String {
        [
            ("actor", &self.actor),
            ("action", &self.action),
            ("object", &self.object),
            ("text", &self.text),
            ("since", &self.since),
            ("before", &self.before),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join("&")
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
pub(crate) enum QueueCommand {
    /// List messages waiting for outside delivery.
    List {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// One entry: its envelope and where each recipient's delivery stands, and why.
    Show {
        id: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Try an entry again now (at the next look at the queue).
    Retry {
        id: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Delete an entry: its recipients get nothing more. Audited.
    Delete {
        id: String,
        #[arg(long)]
        data: PathBuf,
    },
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
    #[arg(long)]
    data: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum PickupCommand {
    /// What a pickup link leads to (the portal's view); with --message, the message itself
    /// on standard output (audited).
    Show {
        token: String,
        #[arg(long)]
        message: bool,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum DnsCommand {
    /// Print MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records for the primary domain.
    Records {
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Make a new master key and re-wrap every key with it (mail is not re-encrypted).
    /// Stop `sealpost serve` first.
    Rotate {
        #[arg(long)]
        data: PathBuf,
    },
}

/// Opens the store of a data folder, finishing an interrupted key rotation if one is found.
pub(crate) fn open_store(data: &Path) -> anyhow::Result<(Loaded, Store)> {
    let loaded = Loaded::from_data_dir(data)?;
    let key_path = loaded.master_key_path();
    let master = MasterKey::load(&key_path)?;
    match Store::open(loaded.store_config(), master) {
        Err(StoreError::WrongMasterKey { .. }) if pending_key_path(&key_path).exists() => {
            let pending = pending_key_path(&key_path);
            let store = Store::open(loaded.store_config(), MasterKey::load(&pending)?)?;
            finish_rotation(&key_path)?;
            eprintln!("sealpost: finished an interrupted master key rotation");
            Ok((loaded, store))
        }
        other => Ok((loaded, other?)),
    }
}

fn pending_key_path(key_path: &Path) -> PathBuf {
    key_path.with_extension("key.new")
}

/// Puts the new key in place: the old one is kept beside it, renamed, for old backups.
fn finish_rotation(key_path: &Path) -> anyhow::Result<PathBuf> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let retired = key_path.with_extension(format!("key.retired-{stamp}"));
    std::fs::rename(key_path, &retired)
        .with_context(|| format!("renaming {}", key_path.display()))?;
    std::fs::rename(pending_key_path(key_path), key_path)
        .with_context(|| format!("renaming into {}", key_path.display()))?;
    if let Some(dir) = key_path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(retired)
}

/// Prints what came of a console action; a refusal exits 1.
fn outcome(run: &mut Run<'_>, address: &str, outcome: Outcome) -> anyhow::Result<u8> {
    match outcome {
        Outcome::Done(text) => writeln!(run.out, "{address}: {text}")?,
        Outcome::Link(path) => writeln!(run.out, "{path}")?,
        Outcome::Deleted(address) => writeln!(run.out, "deleted {address} and destroyed its keys")?,
        Outcome::Refused(text) => {
            writeln!(run.err, "sealpost: {address}: {text}")?;
            return Ok(1);
        }
    }
    Ok(0)
}

fn status_word(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Disabled => "disabled",
    }
}

fn account(command: AccountCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let act = |run: &mut Run<'_>, address: &str, action: AccountAction| -> anyhow::Result<u8> {
        let account = run.find(address)?;
        let done = console::act_on_account(run.console, &run.actor, account.id, action, None)?;
        outcome(run, &account.address, done)
    };
    match command {
        AccountCommand::Add {
            address,
            role,
            name,
            password_stdin,
            enrolment_link,
            allow_weak_password,
            ..
        } => {
            let local = address.split('@').next().unwrap_or_default().to_string();
            let display_name = name.clone().unwrap_or(local);
            if enrolment_link {
                let (id, link) = console::create_account(
                    run.console,
                    &run.actor,
                    &address,
                    &display_name,
                    role,
                )?;
                let account = run.store().account(id)?;
                writeln!(
                    run.out,
                    "created account {} ({}, role {}) without a password",
                    account.address,
                    account.id,
                    account.role.as_str()
                )?;
                writeln!(run.out, "enrolment link: {link}")?;
                writeln!(
                    run.out,
                    "(append it to the site's address; it works once, for 7 days)"
                )?;
                return Ok(0);
            }
            let password = if password_stdin {
                run.password(
                    &[&address, name.as_deref().unwrap_or("")],
                    allow_weak_password,
                )?
            } else {
                crate::init::generate_password()
            };
            let id = run.store().create_account(
                &NewAccount {
                    address: &address,
                    display_name: &display_name,
                    role,
                    password: Some(&password),
                },
                &run.actor,
            )?;
            let account = run.store().account(id)?;
            writeln!(
                run.out,
                "created account {} ({}, role {})",
                account.address,
                account.id,
                account.role.as_str()
            )?;
            if !password_stdin {
                writeln!(run.out, "password: {password}")?;
                writeln!(
                    run.out,
                    "(shown once; set another with `sealpost account password {} --data …`)",
                    account.address
                )?;
            }
        }
        AccountCommand::List {
            search, page, json, ..
        } => {
            let (accounts, footer) = match (&search, page) {
                (None, None) => (run.store().list_accounts()?, None),
                _ => {
                    let found = console::search_accounts(
                        run.store(),
                        search.as_deref().unwrap_or(""),
                        page.unwrap_or(1),
                    )?;
                    let footer = format!(
                        "page {} of {}; {} accounts match",
                        found.page, found.pages, found.matched
                    );
                    (found.accounts, Some(footer))
                }
            };
            for account in accounts {
                let status = status_word(account.status);
                if json {
                    let line = serde_json::json!({
                        "id": account.id.0, "address": account.address, "name": account.display_name,
                        "role": account.role.as_str(), "status": status, "created_at_ms": account.created_at_ms,
                    });
                    writeln!(run.out, "{line}")?;
                } else {
                    writeln!(
                        run.out,
                        "{:>6}  {:<40} {:<6} {:<8} {}",
                        account.id.0,
                        account.address,
                        account.role.as_str(),
                        status,
                        account.display_name
                    )?;
                }
            }
            if let Some(footer) = footer {
                writeln!(run.err, "{footer}")?;
            }
        }
        AccountCommand::Show { address, .. } => {
            let account = run.find(&address)?;
            let store = run.store();
            let credentials = sealpost_auth::Credentials::load(store, account.id)?;
            let sessions = sealpost_auth::websession::list(store, account.id)?.len();
            let aliases = console::aliases_of(store, &account.address);
            let quota = store.quota(account.id)?;
            let used = store.quota_usage(account.id)?;
            let out = &mut *run.out;
            writeln!(out, "account {} ({})", account.address, account.id)?;
            writeln!(out, "  name            {}", account.display_name)?;
            writeln!(out, "  role            {}", account.role.as_str())?;
            writeln!(out, "  status          {}", status_word(account.status))?;
            writeln!(
                out,
                "  created         {}",
                format_ms(account.created_at_ms)
            )?;
            writeln!(
                out,
                "  second factors  {} passkeys, authenticator app {}, {} recovery codes",
                credentials.passkeys.len(),
                if credentials.totp.is_some() {
                    "yes"
                } else {
                    "no"
                },
                credentials.recovery.len()
            )?;
            writeln!(out, "  app passwords   {}", credentials.app_passwords.len())?;
            writeln!(out, "  web sessions    {sessions}")?;
            writeln!(out, "  aliases         {}", aliases.join(", "))?;
            match quota {
                Some(quota) => writeln!(out, "  storage         {used} of {quota} bytes")?,
                None => writeln!(out, "  storage         {used} bytes, no quota")?,
            }
        }
        AccountCommand::EnrolmentLink { address, .. } => {
            return act(run, &address, AccountAction::EnrolmentLink)
        }
        AccountCommand::Quota {
            address, mb, none, ..
        } => {
            let text = match (mb, none) {
                (_, true) => String::new(),
                (Some(mb), false) if !mb.trim().is_empty() => mb,
                _ => bail!("give --mb with a number above 0, or --none"),
            };
            return act(run, &address, AccountAction::Quota(text));
        }
        AccountCommand::AliasAdd { address, alias, .. } => {
            return act(run, &address, AccountAction::AliasAdd(alias))
        }
        AccountCommand::AliasRemove { address, alias, .. } => {
            return act(run, &address, AccountAction::AliasRemove(alias))
        }
        AccountCommand::Disable { address, .. } => {
            return act(run, &address, AccountAction::Disable)
        }
        AccountCommand::Enable { address, .. } => return act(run, &address, AccountAction::Enable),
        AccountCommand::EndSessions { address, .. } => {
            return act(run, &address, AccountAction::EndSessions)
        }
        AccountCommand::ResetFactors { address, .. } => {
            return act(run, &address, AccountAction::ResetFactors)
        }
        AccountCommand::RevokeAppPasswords { address, .. } => {
            return act(run, &address, AccountAction::RevokeAppPasswords)
        }
        AccountCommand::Delete { address, yes, .. } => {
            let account = run.find(&address)?;
            if !yes {
                bail!(
                    "deleting {} destroys its keys and all its mail for good; add --yes to confirm",
                    account.address
                );
            }
            let confirm = account.address.clone();
            return act(run, &address, AccountAction::Delete { confirm });
        }
        AccountCommand::Password {
            address,
            allow_weak_password,
            ..
        } => {
            let account = run.find(&address)?;
            let password = run.password(
                &[&account.address, &account.display_name],
                allow_weak_password,
            )?;
            run.store()
                .set_password(account.id, &password, &run.actor)?;
            writeln!(run.out, "password changed for {}", account.address)?;
        }
        AccountCommand::AppPassword {
            address,
            name,
            scope,
            ..
        } => {
            let account = run.find(&address)?;
            let password = sealpost_auth::credentials::issue_app_password(
                run.store(),
                account.id,
                &name,
                scope.into(),
                &run.actor,
            )
            .map_err(|why| anyhow::anyhow!("{why}"))?;
            writeln!(
                run.out,
                "app password for {} ({name}): {password}",
                account.address
            )?;
            writeln!(
                run.out,
                "(shown once; the mail client takes it as its password, spaces or not)"
            )?;
        }
        AccountCommand::AppPasswords { address, .. } => {
            let account = run.find(&address)?;
            let credentials = sealpost_auth::Credentials::load(run.store(), account.id)?;
            for app in &credentials.app_passwords {
                let used = match (app.last_used_ms, &app.last_address) {
                    (Some(at), Some(from)) => format!("last used {} from {from}", format_ms(at)),
                    _ => "never used".to_string(),
                };
                writeln!(
                    run.out,
                    "{}  {:<32} {:<13} created {}  {used}",
                    app.id,
                    app.name,
                    app.scope.as_str(),
                    format_ms(app.created_ms)
                )?;
            }
        }
        AccountCommand::RevokeAppPassword { address, id, .. } => {
            let account = run.find(&address)?;
            if !sealpost_auth::credentials::revoke_app_password(
                run.store(),
                account.id,
                &id,
                &run.actor,
            )? {
                bail!("{} has no app password {id}", account.address);
            }
            writeln!(run.out, "revoked app password {id} of {}", account.address)?;
        }
    }
    Ok(0)
}

fn lockout(command: LockoutCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let Some(lockout) = run.console.lockout.clone() else {
        writeln!(
            run.err,
            "sealpost: the server is not running; lockouts last only while it runs, so none is in force"
        )?;
        return Ok(match command {
            LockoutCommand::List { .. } => 0,
            LockoutCommand::Lift { .. } => 1,
        });
    };
    match command {
        LockoutCommand::List { .. } => {
            for (login, failures) in lockout.locked_accounts() {
                writeln!(run.out, "{login}  {failures} failed sign-ins")?;
            }
        }
        LockoutCommand::Lift { address, .. } => {
            if console::lift_lockout(run.console, &run.actor, &address)? {
                writeln!(run.out, "{address}'s lockout is lifted")?;
            } else {
                writeln!(run.out, "{address} was not locked out")?;
            }
        }
    }
    Ok(0)
}

/// The policy in force: the server's, or without one the saved version (or version 0).
fn policy_in_force(run: &Run<'_>) -> anyhow::Result<sealpost_policy::PolicyConfig> {
    if let Some(rules) = &run.console.rules {
        return Ok(rules.current().config().clone());
    }
    Ok(match console::saved_policy(run.store()) {
        Some(saved) => saved.config,
        None => crate::serve::version_zero(&run.loaded.config),
    })
}

fn policy(command: PolicyCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        PolicyCommand::Show { version: None, .. } => {
            let config = policy_in_force(run)?;
            match console::saved_policy(run.store()) {
                Some(saved) => writeln!(
                    run.err,
                    "version {} in force, saved by {} on {}",
                    saved.version,
                    saved.saved_by,
                    format_ms(saved.saved_ms)
                )?,
                None => writeln!(run.err, "version 0 in force: the rules of sealpost.toml")?,
            }
            write!(run.out, "{}", console::policy_toml(&config))?;
        }
        PolicyCommand::Show {
            version: Some(version),
            ..
        } => {
            let name = sealpost_policy::PolicyVersion::history_name(version);
            let saved: sealpost_policy::PolicyVersion = run
                .store()
                .secret(&name)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .with_context(|| format!("no saved policy version {version}"))?;
            write!(run.out, "{}", console::policy_toml(&saved.config))?;
        }
        PolicyCommand::Set { .. } => {
            let rules = run.input.clone().unwrap_or_default();
            match console::save_policy(run.console, &run.actor, &rules) {
                Ok(version) => {
                    let when = if run.via_server {
                        "in force from now on"
                    } else {
                        "in force when the server starts"
                    };
                    writeln!(run.out, "saved as version {version}; {when}")?;
                }
                Err(PolicyRefusal::Invalid(why)) => {
                    writeln!(
                        run.err,
                        "sealpost: not saved: {why}; the policy in force did not change"
                    )?;
                    return Ok(1);
                }
                Err(PolicyRefusal::Store(error)) => return Err(error.into()),
            }
        }
        PolicyCommand::History { .. } => {
            for version in console::policy_history(run.store()) {
                writeln!(
                    run.out,
                    "version {}  {}  {}",
                    version.version,
                    format_ms(version.saved_ms),
                    version.saved_by
                )?;
            }
        }
        PolicyCommand::Try { subject, text, .. } => {
            let policy = match &run.console.rules {
                Some(rules) => rules.current(),
                None => std::sync::Arc::new(
                    sealpost_policy::Policy::new(policy_in_force(run)?)
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                ),
            };
            let findings = console::try_policy(&policy, &subject, &text);
            if findings.is_empty() {
                writeln!(run.out, "no rule matches")?;
            }
            for finding in findings {
                writeln!(run.out, "{finding}")?;
            }
        }
    }
    Ok(0)
}

/// `audit verify --backup FILE`: the backup is read here (the identity stays with whoever
/// runs the command), its anchor then checked like `--anchor`, in the server if it runs.
fn audit_verify_against_backup(
    expect_at_least: Option<u64>,
    mut anchors: Vec<String>,
    backup: &Path,
    identity: &Path,
    data: PathBuf,
) -> anyhow::Result<ExitCode> {
    let anchor = crate::backup::audit_anchor(backup, identity)?;
    eprintln!(
        "backup {} is intact; its audit anchor: {anchor}",
        backup.display()
    );
    anchors.push(anchor.to_string());
    let data_text = data.to_str().context("--data is not UTF-8")?.to_string();
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        "--data".into(),
        data_text,
    ];
    for anchor in &anchors {
        args.extend(["--anchor".to_string(), anchor.clone()]);
    }
    if let Some(n) = expect_at_least {
        args.extend(["--expect-at-least".to_string(), n.to_string()]);
    }
    if crate::control::connect(&data).is_some() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = crate::control::run_in_server(&data, &args)?;
        std::io::stdout().write_all(&out)?;
        return Ok(ExitCode::from(code));
    }
    admin(Admin::Audit(AuditCommand::Verify {
        expect_at_least,
        anchor: anchors,
        backup: None,
        identity: None,
        data,
    }))
}

/// `audit verify`: the chain, then what was kept outside the store.
fn audit_verify(
    expect_at_least: Option<u64>,
    anchors: &[String],
    run: &mut Run<'_>,
) -> anyhow::Result<u8> {
    let anchors = anchors
        .iter()
        .map(|text| {
            sealpost_storage::AuditAnchor::parse(text).with_context(|| {
                format!("--anchor {text}: expected SEQ:LINK (a number, a colon, 64 hex digits)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = run.store().audit_verify_against(&anchors)?;
    let mut code = 0;
    match &report.first_break {
        None => {
            writeln!(
                run.out,
                "audit chain intact: {} records verified",
                report.records_verified
            )?;
            if report.keyed_from > 1 {
                writeln!(
                    run.out,
                    "records 1..={} were written before the chain was keyed: linked by SHA-256 only",
                    report.keyed_from - 1
                )?;
            }
        }
        Some(broken) => {
            writeln!(
                run.out,
                "audit chain BROKEN at record {}: {} ({} records before it verified)",
                broken.seq, broken.reason, report.records_verified
            )?;
            code = 1;
        }
    }
    if let Some(expected) = expect_at_least {
        if report.records_verified < expected {
            writeln!(
                run.out,
                "audit chain SHORTER than expected: {} records verified, at least {expected} expected: records were removed",
                report.records_verified
            )?;
            code = 1;
        }
    }
    for anchor in &anchors {
        match report
            .anchors_failed
            .iter()
            .find(|failed| failed.seq == anchor.seq)
        {
            None => writeln!(run.out, "anchor {} holds", anchor.seq)?,
            Some(failed) => {
                writeln!(
                    run.out,
                    "anchor {} does NOT hold: {}",
                    anchor.seq, failed.reason
                )?;
                code = 1;
            }
        }
    }
    Ok(code)
}

fn audit(command: AuditCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        AuditCommand::Verify {
            expect_at_least,
            anchor,
            backup: None,
            ..
        } => audit_verify(expect_at_least, &anchor, run),
        AuditCommand::Verify {
            backup: Some(_), ..
        } => {
            // The client reads the backup and sends its anchor as --anchor (see `admin`).
            bail!(
                "--backup is read by the command itself, not in the server: give --anchor SEQ:LINK"
            )
        }
        AuditCommand::Search { filter, limit, .. } => {
            let page = run.store().audit_search(
                &filter.search(limit.min(sealpost_storage::AUDIT_COUNT_EXACT_MAX))?,
            )?;
            for record in &page.records {
                writeln!(run.out, "{}", console::audit_json_line(record))?;
            }
            writeln!(
                run.err,
                "{}{} records match",
                if page.matched_exact { "" } else { "more than " },
                page.matched
            )?;
            Ok(0)
        }
        AuditCommand::Export {
            filter,
            format,
            output,
            ..
        } => {
            let mut file;
            let writer: &mut dyn Write = match (&output, run.via_server) {
                (Some(path), false) => {
                    file = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("creating {}", path.display()))?,
                    );
                    &mut file
                }
                _ => &mut *run.out,
            };
            let count = if filter.narrows() || matches!(format, FormatArg::Csv) {
                let search = filter.search(console::AUDIT_EXPORT_RECORDS_MAX)?;
                let format = match format {
                    FormatArg::Csv => ExportFormat::Csv,
                    FormatArg::Jsonl => ExportFormat::JsonLines,
                };
                console::export_audit(
                    &run.console.store,
                    &run.actor,
                    &search,
                    &filter.described(),
                    format,
                    writer,
                )?
            } else {
                whole_log(&run.console.store, &filter, writer)?
            };
            writer.flush()?;
            if output.is_some() {
                writeln!(run.err, "exported {count} records")?;
            }
            Ok(0)
        }
    }
}

/// The whole log from `--since` as JSON lines, each with its time spelled out (an archive:
/// no bound on the count).
fn whole_log(store: &Store, filter: &AuditFilter, writer: &mut dyn Write) -> anyhow::Result<usize> {
    let since_ms = filter
        .since
        .as_deref()
        .map(parse_since)
        .transpose()?
        .unwrap_or(i64::MIN);
    let mut count = 0usize;
    store.audit_records(since_ms, &mut |record| {
        let mut line = serde_json::to_value(&record).map_err(|_| StoreError::InvalidInput {
            what: "audit record",
        })?;
        if let Some(object) = line.as_object_mut() {
            object.insert(
                "at".to_string(),
                serde_json::Value::String(format_ms(record.at_ms)),
            );
            object.insert(
                "outcome".to_string(),
                serde_json::Value::String(record.event.outcome.as_str().to_string()),
            );
        }
        writeln!(writer, "{line}").map_err(|source| StoreError::Io {
            path: PathBuf::from("(output)"),
            source,
        })?;
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// The queue entry named `id` (its hex id as `queue list` prints it).
fn find_queued(store: &Store, id: &str) -> anyhow::Result<sealpost_storage::QueuedMessage> {
    store
        .queued()?
        .into_iter()
        .find(|entry| entry.id.to_string() == id.trim().to_lowercase())
        .with_context(|| format!("no queue entry {id} (see sealpost queue list)"))
}

fn queue(command: QueueCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
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
                    console::state_text(state)
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

fn trace(args: TraceArgs, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let query = console::TraceQuery {
        sender: args.sender,
        recipient: args.recipient,
        message_id: args.message_id,
        since_ms: args.since.as_deref().map(parse_since).transpose()?,
        before_ms: args.before.as_deref().map(parse_since).transpose()?,
    };
    let found = console::trace(run.store(), &query)?;
    for traced in &found {
        let lines: Vec<serde_json::Value> = traced
            .delivery
            .lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "recipient": line.address,
                    "outcome": console::state_text(&sealpost_storage::RecipientState {
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
        console::TRACE_ROWS_MAX
    )?;
    Ok(0)
}

fn health(run: &mut Run<'_>) -> anyhow::Result<u8> {
    let built;
    let info = match run.health {
        Some(info) => info,
        None => {
            built = crate::serve::health_facts(run.loaded, run.store(), None)?;
            &built
        }
    };
    let figures = console::health_figures(run.store()).context("the store could not be read")?;
    let dns = match run.runtime {
        Some(handle) => handle.block_on((info.dns_check)()),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the DNS check")?
            .block_on((info.dns_check)()),
    };
    let out = &mut *run.out;
    writeln!(
        out,
        "server: {}",
        if run.via_server {
            "running"
        } else {
            "not running"
        }
    )?;
    for (name, address) in &info.listeners {
        writeln!(out, "listener {name:<22} {address}")?;
    }
    match &info.certificate {
        Some((names, not_after)) => {
            let days = (not_after - now_ms()) / (24 * 3600 * 1000);
            let state = if days < 0 {
                "EXPIRED".to_string()
            } else {
                format!("{days} days left")
            };
            writeln!(
                out,
                "certificate for {} valid until {} ({state})",
                names.join(", "),
                format_ms(*not_after)
            )?;
        }
        None => writeln!(out, "certificate: could not be read")?,
    }
    writeln!(out, "spam filter: {}", (info.spam_status)())?;
    writeln!(out, "store {} bytes", figures.store_bytes)?;
    if let Some((bytes, over_ms)) = figures.growth {
        writeln!(
            out,
            "store growth {bytes:+} bytes in {:.1} days",
            over_ms as f64 / 86_400_000.0
        )?;
    }
    writeln!(out, "queue {} waiting", figures.queue_depth)?;
    if let Some(oldest) = figures.oldest_queued_ms {
        writeln!(out, "queue oldest since {}", format_ms(oldest))?;
    }
    for (domain, count) in &figures.failures {
        writeln!(out, "delivery failures (7 days) {domain}: {count}")?;
    }
    writeln!(
        out,
        "refused sign-ins (24 hours) {}",
        figures.sign_in_failures_total
    )?;
    for (who, count) in &figures.sign_in_failures {
        writeln!(out, "refused sign-ins (24 hours) {who}: {count}")?;
    }
    let mut missing = 0;
    for finding in &dns {
        let state = match &finding.state {
            Ok(true) => "published".to_string(),
            Ok(false) => {
                missing += 1;
                format!("differs: DNS answers {}", finding.answer)
            }
            Err(why) => {
                missing += 1;
                format!("missing ({why})")
            }
        };
        writeln!(out, "dns {}: {state}", finding.record)?;
    }
    if missing > 0 {
        writeln!(
            out,
            "{missing} DNS records to publish or fix (`sealpost dns records` prints them)"
        )?;
    }
    Ok(0)
}

fn pickup(command: PickupCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
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

pub(crate) fn key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Rotate { data } => {
            let (loaded, store) = open_store(&data)?;
            let key_path = loaded.master_key_path();
            let pending = pending_key_path(&key_path);
            if pending.exists() {
                bail!(
                    "{} exists: a rotation is in progress or failed; inspect it before rotating again",
                    pending.display()
                );
            }
            let new_master = MasterKey::create_file(&pending)?;
            let count = store.rotate_master_key(new_master, &Actor::cli())?;
            drop(store);
            let retired = finish_rotation(&key_path)?;
            println!("master key rotated: {count} account key sets re-wrapped; mail was not re-encrypted");
            println!("new key: {}", key_path.display());
            println!(
                "old key: {} (needed only for backups made before now: move it offline or destroy it)",
                retired.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_since(text: &str) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.saturating_mul(1000));
    }
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((at.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        return Ok(date.midnight().assume_utc().unix_timestamp() * 1000);
    }
    bail!("--since {text:?}: expected RFC 3339 (2026-01-31T08:00:00Z), a date (2026-01-31) or Unix seconds")
}

pub(crate) fn format_ms(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_accepts_rfc3339_dates_and_unix_seconds() {
        assert_eq!(parse_since("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_since("2023-11-14").unwrap(), 1_699_920_000_000);
        assert!(parse_since("yesterday").is_err());
    }
}
