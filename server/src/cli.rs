//! The administrative subcommands: accounts, audit log, master key.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use sealpost_storage::{Account, AccountStatus, Actor, Error as StoreError, MasterKey, NewAccount, Role, Store};

use crate::config::Loaded;

#[derive(Subcommand)]
pub(crate) enum AccountCommand {
    /// Make an account. Without --password-stdin a password is generated and printed once.
    Add {
        address: String,
        #[arg(long, default_value = "staff")]
        role: Role,
        /// The display name (default: the local part of the address).
        #[arg(long)]
        name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Accept a password the strength check refuses (test fixtures, migrations).
        #[arg(long)]
        allow_weak_password: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// List accounts.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
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
        #[arg(long, conflicts_with = "none")]
        mb: Option<f64>,
        #[arg(long)]
        none: bool,
        #[arg(long)]
        data: PathBuf,
    },
    /// Stop an account from logging in; its mail stays.
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
pub(crate) enum AuditCommand {
    /// Walk the hash chain and report the first broken link. Exits 1 if broken.
    Verify {
        #[arg(long)]
        data: PathBuf,
    },
    /// Search the log as the console does (every word of every field given), newest first;
    /// JSON lines.
    Search {
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        object: Option<String>,
        /// Words anywhere in the record.
        #[arg(long)]
        text: Option<String>,
        /// Records at or after this time (as for export).
        #[arg(long)]
        since: Option<String>,
        /// Records at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        data: PathBuf,
    },
    /// Write records as JSON lines.
    Export {
        /// Only records at or after this time: RFC 3339 (2026-01-31T08:00:00Z), a date
        /// (2026-01-31, midnight UTC) or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum QueueCommand {
    /// List messages waiting for outside delivery. Stop `sealpost serve` first.
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

/// The queue entry named `id` (its hex id as `queue list` prints it).
fn find_queued(store: &Store, id: &str) -> anyhow::Result<sealpost_storage::QueuedMessage> {
    store
        .queued()?
        .into_iter()
        .find(|entry| entry.id.to_string() == id.trim().to_lowercase())
        .with_context(|| format!("no queue entry {id} (see sealpost queue list)"))
}

pub(crate) fn queue(command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::Show { id, data } => {
            let (_, store) = open_store(&data)?;
            let entry = find_queued(&store, &id)?;
            let account = store.account(entry.account)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "queue entry {}", entry.id)?;
            writeln!(out, "  account       {}", account.address)?;
            writeln!(out, "  from          <{}>", entry.envelope.from)?;
            writeln!(out, "  size          {} bytes", entry.size)?;
            writeln!(out, "  queued        {}", format_ms(entry.created_ms))?;
            writeln!(out, "  attempts      {}", entry.attempts)?;
            writeln!(out, "  next attempt  {}", format_ms(entry.next_attempt_ms))?;
            for (recipient, state) in entry.envelope.recipients.iter().zip(&entry.states) {
                let status = match &state.status {
                    sealpost_storage::RecipientStatus::Pending => "pending".to_string(),
                    sealpost_storage::RecipientStatus::Delivered { at_ms, how } => {
                        format!("delivered {} via {how}", format_ms(*at_ms))
                    }
                    sealpost_storage::RecipientStatus::Portal { at_ms, why } => {
                        format!("held for the pickup portal {} ({why})", format_ms(*at_ms))
                    }
                    sealpost_storage::RecipientStatus::Failed { at_ms, reply } => {
                        format!("failed {} ({reply})", format_ms(*at_ms))
                    }
                };
                writeln!(out, "  to <{}>: {status}", recipient.address)?;
                if let Some(reply) = &state.last_reply {
                    writeln!(out, "      last: {reply}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { id, data } => {
            let (_, store) = open_store(&data)?;
            let entry = find_queued(&store, &id)?;
            store.queue_retry(entry.account, entry.id, &Actor::cli())?;
            println!("queue entry {} will be tried at the next look at the queue", entry.id);
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Delete { id, data } => {
            let (_, store) = open_store(&data)?;
            let entry = find_queued(&store, &id)?;
            store.queue_delete(entry.account, entry.id, &Actor::cli())?;
            println!("queue entry {} deleted", entry.id);
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::List { json, data } => {
            let (_, store) = open_store(&data)?;
            let accounts: std::collections::HashMap<_, _> =
                store.list_accounts()?.into_iter().map(|a| (a.id, a.address)).collect();
            let queued = store.queued()?;
            let mut out = std::io::stdout().lock();
            for entry in &queued {
                let account = accounts.get(&entry.account).map_or("?", String::as_str);
                let recipients: Vec<&str> = entry.envelope.recipients.iter().map(|r| r.address.as_str()).collect();
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
            Ok(ExitCode::SUCCESS)
        }
    }
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

pub(crate) fn pickup(command: PickupCommand) -> anyhow::Result<ExitCode> {
    match command {
        PickupCommand::Show { token, message, data } => {
            let (_, store) = open_store(&data)?;
            let Some(pickup) = store
                .pickup(&token)?
                .filter(|p| p.state == sealpost_storage::PickupState::Live)
            else {
                println!("no pickup for that link (unknown, expired or withdrawn)");
                return Ok(ExitCode::FAILURE);
            };
            if message {
                let raw = store.read_pickup(&token)?.context("the pickup went away")?;
                store.audit(
                    sealpost_storage::AuditEvent::new(&Actor::cli(), "pickup.read", format!("queue {}", pickup.queue))
                        .detail(format!("for {}", pickup.recipient)),
                )?;
                std::io::stdout().lock().write_all(&raw)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("pickup for <{}> from <{}>", pickup.recipient, pickup.sender);
            println!("  size     {} bytes", pickup.size);
            println!("  created  {}", format_ms(pickup.created_ms));
            println!("  expires  {}", format_ms(pickup.expires_ms));
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum DnsCommand {
    /// Print MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records for the primary domain.
    Records {
        #[arg(long)]
        data: PathBuf,
    },
}

pub(crate) fn dns(command: DnsCommand) -> anyhow::Result<ExitCode> {
    match command {
        DnsCommand::Records { data } => {
            let (loaded, store) = open_store(&data)?;
            crate::dkim::ensure_keys(&store)?;
            print!("{}", crate::dkim::dns_records(&loaded, &store)?);
            Ok(ExitCode::SUCCESS)
        }
    }
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
    std::fs::rename(key_path, &retired).with_context(|| format!("renaming {}", key_path.display()))?;
    std::fs::rename(pending_key_path(key_path), key_path)
        .with_context(|| format!("renaming into {}", key_path.display()))?;
    if let Some(dir) = key_path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(retired)
}

/// The password on standard input's first line, checked for strength against the account's
/// own words (`context`) unless `allow_weak`; even then at least 8 characters.
fn read_password_line(context: &[&str], allow_weak: bool) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
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

fn find(store: &Store, address: &str) -> anyhow::Result<Account> {
    store
        .find_account(address)?
        .with_context(|| format!("no account {address}"))
}

pub(crate) fn account(command: AccountCommand) -> anyhow::Result<ExitCode> {
    match command {
        AccountCommand::Add {
            address,
            role,
            name,
            password_stdin,
            allow_weak_password,
            data,
        } => {
            let (_, store) = open_store(&data)?;
            let generated = !password_stdin;
            let password = if password_stdin {
                read_password_line(&[&address, name.as_deref().unwrap_or("")], allow_weak_password)?
            } else {
                crate::init::generate_password()
            };
            let local = address.split('@').next().unwrap_or_default().to_string();
            let display_name = name.unwrap_or(local);
            let id = store.create_account(
                &NewAccount {
                    address: &address,
                    display_name: &display_name,
                    role,
                    password: Some(&password),
                },
                &Actor::cli(),
            )?;
            let account = store.account(id)?;
            println!(
                "created account {} ({}, role {})",
                account.address,
                account.id,
                account.role.as_str()
            );
            if generated {
                println!("password: {password}");
                println!(
                    "(shown once; set another with `sealpost account password {} --data …`)",
                    account.address
                );
            }
        }
        AccountCommand::List { json, data } => {
            let (_, store) = open_store(&data)?;
            let mut out = std::io::stdout().lock();
            for account in store.list_accounts()? {
                let status = match account.status {
                    AccountStatus::Active => "active",
                    AccountStatus::Disabled => "disabled",
                };
                if json {
                    let line = serde_json::json!({
                        "id": account.id.0, "address": account.address, "name": account.display_name,
                        "role": account.role.as_str(), "status": status, "created_at_ms": account.created_at_ms,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{:>6}  {:<40} {:<6} {:<8} {}",
                        account.id.0,
                        account.address,
                        account.role.as_str(),
                        status,
                        account.display_name
                    )?;
                }
            }
        }
        AccountCommand::EnrolmentLink { address, data } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
            )
            .unwrap_or(i64::MAX);
            let path = sealpost_auth::enrolment::issue(&store, account.id, &Actor::cli(), now)?;
            println!("{path}");
        }
        AccountCommand::Quota {
            address,
            mb,
            none,
            data,
        } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            let bytes = match (mb, none) {
                (_, true) => None,
                (Some(mb), false) if mb.is_finite() && mb > 0.0 => Some((mb * 1_048_576.0) as u64),
                _ => anyhow::bail!("give --mb with a number above 0, or --none"),
            };
            store.set_quota(account.id, bytes, &Actor::cli())?;
            match bytes {
                Some(bytes) => println!("quota of {} is {bytes} bytes", account.address),
                None => println!("{} has no quota", account.address),
            }
        }
        AccountCommand::Disable { address, data } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            store.set_account_status(account.id, AccountStatus::Disabled, &Actor::cli())?;
            println!("disabled {}", account.address);
        }
        AccountCommand::Enable { address, data } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            store.set_account_status(account.id, AccountStatus::Active, &Actor::cli())?;
            println!("enabled {}", account.address);
        }
        AccountCommand::Password {
            address,
            allow_weak_password,
            data,
        } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            let password = read_password_line(&[&account.address, &account.display_name], allow_weak_password)?;
            store.set_password(account.id, &password, &Actor::cli())?;
            println!("password changed for {}", account.address);
        }
        AccountCommand::AppPassword {
            address,
            name,
            scope,
            data,
        } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            let password =
                sealpost_auth::credentials::issue_app_password(&store, account.id, &name, scope.into(), &Actor::cli())
                    .map_err(|why| anyhow::anyhow!("{why}"))?;
            println!("app password for {} ({name}): {password}", account.address);
            println!("(shown once; the mail client takes it as its password, spaces or not)");
        }
        AccountCommand::AppPasswords { address, data } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            let credentials = sealpost_auth::Credentials::load(&store, account.id)?;
            for app in &credentials.app_passwords {
                let used = match (app.last_used_ms, &app.last_address) {
                    (Some(at), Some(from)) => format!("last used {} from {from}", format_ms(at)),
                    _ => "never used".to_string(),
                };
                println!(
                    "{}  {:<32} {:<13} created {}  {used}",
                    app.id,
                    app.name,
                    app.scope.as_str(),
                    format_ms(app.created_ms)
                );
            }
        }
        AccountCommand::RevokeAppPassword { address, id, data } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            if !sealpost_auth::credentials::revoke_app_password(&store, account.id, &id, &Actor::cli())? {
                bail!("{} has no app password {id}", account.address);
            }
            println!("revoked app password {id} of {}", account.address);
        }
        AccountCommand::Delete { address, yes, data } => {
            let (_, store) = open_store(&data)?;
            let account = find(&store, &address)?;
            if !yes {
                bail!(
                    "deleting {} destroys its keys and all its mail for good; add --yes to confirm",
                    account.address
                );
            }
            store.delete_account(account.id, &Actor::cli())?;
            println!("deleted {} and destroyed its keys", account.address);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { data } => {
            let (_, store) = open_store(&data)?;
            let report = store.audit_verify()?;
            match report.first_break {
                None => {
                    println!("audit chain intact: {} records verified", report.records_verified);
                    Ok(ExitCode::SUCCESS)
                }
                Some(broken) => {
                    println!(
                        "audit chain BROKEN at record {}: {} ({} records before it verified)",
                        broken.seq, broken.reason, report.records_verified
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Search {
            actor,
            action,
            object,
            text,
            since,
            limit,
            data,
        } => {
            let since_ms = since.as_deref().map(parse_since).transpose()?;
            let (_, store) = open_store(&data)?;
            let page = store.audit_search(&sealpost_storage::AuditSearch {
                actor,
                action,
                object,
                text,
                since_ms,
                limit: limit.min(sealpost_storage::AUDIT_COUNT_EXACT_MAX),
                ..sealpost_storage::AuditSearch::default()
            })?;
            let mut out = std::io::stdout().lock();
            for record in &page.records {
                let mut line =
                    serde_json::to_value(record).map_err(|_| StoreError::InvalidInput { what: "audit record" })?;
                if let Some(object) = line.as_object_mut() {
                    object.insert(
                        "outcome".into(),
                        serde_json::Value::String(record.event.outcome.as_str().into()),
                    );
                }
                writeln!(out, "{line}")?;
            }
            eprintln!(
                "{}{} records match",
                if page.matched_exact { "" } else { "more than " },
                page.matched
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { since, output, data } => {
            let since_ms = since.as_deref().map(parse_since).transpose()?.unwrap_or(i64::MIN);
            let (_, store) = open_store(&data)?;
            let mut writer: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut count = 0u64;
            store.audit_records(since_ms, &mut |record| {
                let mut line =
                    serde_json::to_value(&record).map_err(|_| StoreError::InvalidInput { what: "audit record" })?;
                if let Some(object) = line.as_object_mut() {
                    object.insert("at".to_string(), serde_json::Value::String(format_ms(record.at_ms)));
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
            writer.flush()?;
            if output.is_some() {
                eprintln!("exported {count} records");
            }
            Ok(ExitCode::SUCCESS)
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

fn format_ms(ms: i64) -> String {
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
        assert_eq!(parse_since("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("2023-11-14").unwrap(), 1_699_920_000_000);
        assert!(parse_since("yesterday").is_err());
    }
}
