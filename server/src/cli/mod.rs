//! The administrative subcommands: every page of the admin console as a command (accounts,
//! lockouts, policy, audit, queue, message tracing, health), plus DNS records, pickups and
//! the master key. Each calls the code the console's pages call (`sealpost_console`
//! and the store). When `sealpost serve` runs on the data folder, the command runs inside it
//! through the control socket (`control.rs`), so its live parts see the change at once;
//! otherwise it opens the store itself.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use sealpost_console::{Console, Outcome};
use sealpost_storage::{Account, Actor, Store};

use crate::config::Loaded;

mod account;
mod audit;
mod compliance;
mod policy;
mod quarantine;
mod queue;
mod server;

use account::{account, lockout, AccountCommand, LockoutCommand};
use audit::{audit, audit_verify_against_backup, AuditCommand};
use compliance::{ediscovery, hold, retention, DiscoveryCommand, HoldCommand, RetentionCommand};
use policy::{policy, PolicyCommand};
use quarantine::{quarantine, QuarantineCommand};
use queue::{pickup, queue, trace, PickupCommand, QueueCommand, TraceArgs};
use server::{backup, certificate, dns, health, CertificateCommand, DnsCommand};
pub(crate) use server::{BackupArgs, BackupCheck};

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
    Health,
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

/// What a command runs with: the store through the console's operations, and where its
/// output goes (this process's, or frames back to the client of the control socket).
pub(crate) struct Run<'a> {
    pub(crate) loaded: &'a Loaded,
    pub(crate) console: &'a Console,
    /// The running server's health facts (listeners in use); `None` without a server.
    pub(crate) health: Option<&'a sealpost_console::HealthInfo>,
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

/// Whether the command reads standard input.
fn takes_input(command: &Admin) -> bool {
    matches!(
        command,
        Admin::Account(AccountCommand::Add {
            password_stdin: true,
            ..
        }) | Admin::Account(AccountCommand::Password { .. })
            | Admin::Policy(PolicyCommand::Set)
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
pub(crate) fn admin(command: Admin, data: &Path) -> anyhow::Result<ExitCode> {
    let command = match command {
        Admin::Audit(AuditCommand::Verify {
            expect_at_least,
            anchor,
            backup: Some(backup),
            identity: Some(identity),
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
    if let Some(stream) = crate::control::connect(data) {
        return crate::control::forward(stream, input, output.as_deref());
    }
    let (loaded, store) = crate::key::open_store(data)?;
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
        Admin::Health => health(run),
        Admin::Dns(command) => dns(command, run),
        Admin::Pickup(command) => pickup(command, run),
        Admin::Backup(args) => backup(args, run),
        Admin::Retention(command) => retention(command, run),
        Admin::Certificate(command) => certificate(command, run),
        Admin::Quarantine(command) => quarantine(command, run),
        Admin::Hold(command) => hold(command, run),
        Admin::Ediscovery(command) => ediscovery(command, run),
    }
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
