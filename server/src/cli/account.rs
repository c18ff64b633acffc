//! `sealpost account …` and `sealpost lockout …`: the console's Accounts pages and its
//! lockout list as commands.

use anyhow::bail;
use clap::Subcommand;
use sealpost_console::AccountAction;
use sealpost_storage::{AccountStatus, NewAccount, Role};

use super::{format_ms, outcome, Run};

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
    },
    /// One account: status, role, second factors, sessions, app passwords, aliases, quota.
    Show { address: String },
    /// A one-time link for the account's owner to choose the password (as the console's
    /// "New enrolment link"); prints the path to append to the site's address.
    EnrolmentLink { address: String },
    /// Set the account's storage limit in MB (as the console's quota), or lift it with --none.
    Quota {
        address: String,
        /// MB, decimals allowed.
        #[arg(long, conflicts_with = "none", allow_hyphen_values = true)]
        mb: Option<String>,
        #[arg(long)]
        none: bool,
    },
    /// Make an alias (an address at the primary domain) reach the account, which may send as it.
    AliasAdd { address: String, alias: String },
    /// Stop an alias reaching the account.
    AliasRemove { address: String, alias: String },
    /// Stop an account from logging in and end its sessions (web and IMAP); its mail stays.
    Disable { address: String },
    /// Let a disabled account log in again.
    Enable { address: String },
    /// End every web and IMAP session of the account.
    EndSessions { address: String },
    /// Remove the account's second factors (passkeys, authenticator app, recovery codes) and
    /// end its sessions; the next sign-in sets up a new one.
    ResetFactors { address: String },
    /// Set a new password, read from the first line of standard input.
    Password {
        address: String,
        /// Accept a password the strength check refuses (test fixtures, migrations).
        #[arg(long)]
        allow_weak_password: bool,
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
    },
    /// List an account's app passwords: id, name, scope, created, last use and address.
    AppPasswords { address: String },
    /// Revoke an app password by its id (from `app-passwords`).
    RevokeAppPassword { address: String, id: String },
    /// Revoke every app password of the account.
    RevokeAppPasswords { address: String },
    /// Delete an account and destroy its keys: its mail can never be read again.
    Delete {
        address: String,
        /// Confirms that the account's mail is to be destroyed.
        #[arg(long)]
        yes: bool,
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
    List,
    /// Lift an account's lockout (audited).
    Lift { address: String },
}

fn status_word(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Disabled => "disabled",
    }
}

pub(super) fn account(command: AccountCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let act = |run: &mut Run<'_>, address: &str, action: AccountAction| -> anyhow::Result<u8> {
        let account = run.find(address)?;
        let done =
            sealpost_console::act_on_account(run.console, &run.actor, account.id, action, None)?;
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
                let (id, link) = sealpost_console::create_account(
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
                    let found = sealpost_console::search_accounts(
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
            let aliases = sealpost_console::aliases_of(store, &account.address);
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

pub(super) fn lockout(command: LockoutCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let Some(lockout) = run.console.lockout.clone() else {
        writeln!(
            run.err,
            "sealpost: the server is not running; lockouts last only while it runs, so none is in force"
        )?;
        return Ok(match command {
            LockoutCommand::List => 0,
            LockoutCommand::Lift { .. } => 1,
        });
    };
    match command {
        LockoutCommand::List => {
            for (login, failures) in lockout.locked_accounts() {
                writeln!(run.out, "{login}  {failures} failed sign-ins")?;
            }
        }
        LockoutCommand::Lift { address, .. } => {
            if sealpost_console::lift_lockout(run.console, &run.actor, &address)? {
                writeln!(run.out, "{address}'s lockout is lifted")?;
            } else {
                writeln!(run.out, "{address} was not locked out")?;
            }
        }
    }
    Ok(0)
}
