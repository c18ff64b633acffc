//! The console's operations, each one function that both the console's pages
//! (`sealpost-webmail`) and the `sealpost` subcommands call (the subcommands run them in the
//! server, through its control socket, when it is running, or on the stopped store
//! otherwise). The pages render what these return; the subcommands print it.
//!
//! Also here because both sides need them: the eDiscovery search and export (`discovery`),
//! the health figures (`health`), the new-network notice (`notice`) and a delivery state in
//! words (`state_text`).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod discovery;
pub mod health;
pub mod notice;

use std::io::Write;
use std::sync::Arc;

use sealpost_auth::enrolment;
use sealpost_auth::websession;
use sealpost_auth::{Credentials, Lockout};
use sealpost_policy::{Content, LivePolicy, Policy, PolicyConfig, PolicyVersion};
use sealpost_storage::{
    now_ms, AccountId, AccountStatus, Actor, AuditEvent, AuditRecord, AuditSearch, Delivery, Error,
    NewAccount, RecipientState, RecipientStatus, Role, Store,
};

pub use health::{
    figures as health_figures, parse_network, DnsCheck, DnsFinding, Figures, HealthInfo, SpamStatus,
};

/// Ends every IMAP session of an account (the binary wires it to the IMAP server's registry);
/// returns how many there were.
pub type EndMailSessions = Arc<dyn Fn(AccountId) -> usize + Send + Sync>;

/// Called with the console's aliases after each change (the binary puts them in force for
/// SMTP).
pub type AliasesChanged =
    Arc<dyn Fn(&std::collections::BTreeMap<String, Vec<String>>) + Send + Sync>;

/// The store secret holding the console's aliases (JSON: alias → account addresses).
pub const CONSOLE_ALIASES_SECRET: &str = "aliases";

/// A time in ms since the epoch as `YYYY-MM-DD HH:MM UTC` ("?" if out of range).
pub fn when(ms: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(ms / 1000) else {
        return "?".into();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

/// A recipient's delivery state in words, as the sender's status page and the trace show it.
pub fn state_text(state: &RecipientState) -> String {
    match &state.status {
        RecipientStatus::Pending => match &state.last_reply {
            Some(reply) => format!("waiting; last: {reply}"),
            None => "waiting; not tried yet".into(),
        },
        RecipientStatus::Delivered { at_ms, how } => {
            format!("delivered over verified TLS, {how}, {}", when(*at_ms))
        }
        RecipientStatus::Portal { at_ms, why } => {
            format!("kept for the pickup portal ({why}), {}", when(*at_ms))
        }
        RecipientStatus::Failed { at_ms, reply } => format!("failed: {reply}, {}", when(*at_ms)),
    }
}

/// Aliases one console map may hold.
pub const CONSOLE_ALIASES_MAX: usize = 10_000;

/// Largest quota an admin may set, in MB (16 TiB).
pub const QUOTA_MB_MAX: f64 = 16.0 * 1024.0 * 1024.0;

/// Accounts on one page of the list.
pub const ACCOUNTS_PER_PAGE: usize = 50;

/// Versions listed in the policy history, newest first.
pub const POLICY_VERSIONS_LISTED: u64 = 20;

/// Rows a message trace returns at most.
pub const TRACE_ROWS_MAX: usize = 500;

/// Records one audit export holds at most.
pub const AUDIT_EXPORT_RECORDS_MAX: usize = 1_000_000;

/// The store, and what a change must reach in a running server: its IMAP sessions, SMTP's
/// aliases, the rules in force and the sign-in counters. Without a server (`offline`) the
/// store alone changes, and the server takes it up when it starts.
#[derive(Clone)]
pub struct Console {
    pub store: Store,
    pub end_mail_sessions: EndMailSessions,
    pub aliases_changed: AliasesChanged,
    pub rules: Option<Arc<LivePolicy>>,
    pub lockout: Option<Arc<Lockout>>,
    /// Wakes the running server's queue (a retry goes at once).
    pub queue_waker: Option<Arc<tokio::sync::Notify>>,
}

impl Console {
    /// The console of a stopped server: nothing runs that a change must reach.
    pub fn offline(store: Store) -> Self {
        Self {
            store,
            end_mail_sessions: Arc::new(|_| 0),
            aliases_changed: Arc::new(|_| {}),
            rules: None,
            lockout: None,
            queue_waker: None,
        }
    }
}

/// What an admin may do to an account on its page (or `sealpost account …`).
#[derive(Clone, Debug)]
pub enum AccountAction {
    Disable,
    Enable,
    EndSessions,
    EnrolmentLink,
    ResetFactors,
    RevokeAppPasswords,
    /// Deletes only when `confirm` is the account's address.
    Delete {
        confirm: String,
    },
    AliasAdd(String),
    AliasRemove(String),
    /// A quota in MB as typed; empty lifts it.
    Quota(String),
}

/// What came of an action.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done(String),
    /// An enrolment link's path (`/enrol/…`).
    Link(String),
    Refused(String),
    Deleted(String),
}

pub type AliasMap = std::collections::BTreeMap<String, Vec<String>>;

/// The console's aliases as saved.
pub fn console_aliases(store: &Store) -> AliasMap {
    store
        .secret(CONSOLE_ALIASES_SECRET)
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Saves the console's aliases (audited by the secret's name, and with `event`) and puts
/// them in force.
fn save_aliases(
    console: &Console,
    map: &AliasMap,
    actor: &Actor,
    event: AuditEvent,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(map).map_err(|_| Error::InvalidInput { what: "aliases" })?;
    console
        .store
        .set_secret(CONSOLE_ALIASES_SECRET, &bytes, actor)?;
    console.store.audit(event)?;
    (console.aliases_changed)(map);
    Ok(())
}

/// Ends every web and IMAP session of the account (audited with `actor`).
fn end_all_sessions(console: &Console, id: AccountId, actor: &Actor) -> Result<usize, Error> {
    websession::end(&console.store, id, None, actor)?;
    Ok((console.end_mail_sessions)(id))
}

/// One page of accounts whose address or name contains the search, by address.
pub struct AccountsPage {
    pub accounts: Vec<sealpost_storage::Account>,
    /// 1-based, within 1..=pages.
    pub page: usize,
    pub pages: usize,
    /// Accounts matching in all.
    pub matched: usize,
}

/// Page `page` (from 1) of the accounts matching `search` (empty: all), `ACCOUNTS_PER_PAGE`
/// a page.
pub fn search_accounts(store: &Store, search: &str, page: usize) -> Result<AccountsPage, Error> {
    let mut accounts = store.list_accounts()?;
    let needle = search.trim().to_lowercase();
    if !needle.is_empty() {
        accounts.retain(|a| {
            a.address.contains(&needle) || a.display_name.to_lowercase().contains(&needle)
        });
    }
    accounts.sort_by(|a, b| a.address.cmp(&b.address));
    let matched = accounts.len();
    let pages = matched.div_ceil(ACCOUNTS_PER_PAGE).max(1);
    let page = page.clamp(1, pages);
    let accounts = accounts
        .into_iter()
        .skip((page - 1) * ACCOUNTS_PER_PAGE)
        .take(ACCOUNTS_PER_PAGE)
        .collect();
    Ok(AccountsPage {
        accounts,
        page,
        pages,
        matched,
    })
}

/// Creates an account without a password and returns it with a one-time enrolment link.
pub fn create_account(
    console: &Console,
    actor: &Actor,
    address: &str,
    display_name: &str,
    role: Role,
) -> Result<(AccountId, String), Error> {
    let id = console.store.create_account(
        &NewAccount {
            address,
            display_name,
            role,
            password: None,
        },
        actor,
    )?;
    let link = enrolment::issue(&console.store, id, actor, now_ms())?;
    Ok((id, link))
}

/// Does `action` to account `id` as `actor`; `me` is the acting admin's own account (which
/// may not be disabled or deleted from the console).
pub fn act_on_account(
    console: &Console,
    actor: &Actor,
    id: AccountId,
    action: AccountAction,
    me: Option<AccountId>,
) -> Result<Outcome, Error> {
    let store = &console.store;
    let account = store.account(id)?;
    let own = me == Some(id);
    let outcome = match action {
        AccountAction::Disable if own => {
            Outcome::Refused("You cannot disable your own account.".into())
        }
        AccountAction::Disable => {
            store.set_account_status(id, AccountStatus::Disabled, actor)?;
            let ended = end_all_sessions(console, id, actor)?;
            Outcome::Done(format!(
                "Disabled; its web sessions and {ended} mail sessions were ended."
            ))
        }
        AccountAction::Enable => {
            store.set_account_status(id, AccountStatus::Active, actor)?;
            Outcome::Done("Enabled.".into())
        }
        AccountAction::EndSessions => {
            let ended = end_all_sessions(console, id, actor)?;
            Outcome::Done(format!(
                "Its web sessions and {ended} mail sessions were ended."
            ))
        }
        AccountAction::EnrolmentLink => {
            Outcome::Link(enrolment::issue(store, id, actor, now_ms())?)
        }
        AccountAction::ResetFactors => {
            Credentials::update(store, id, |record| {
                record.totp = None;
                record.passkeys.clear();
                record.recovery.clear();
                Some(vec![AuditEvent::new(
                    actor,
                    "auth.factors.reset",
                    format!("account:{}", id.0),
                )])
            })?;
            end_all_sessions(console, id, actor)?;
            Outcome::Done(
                "Second factors removed and sessions ended; the next sign-in sets up a new one."
                    .into(),
            )
        }
        AccountAction::RevokeAppPasswords => {
            Credentials::update(store, id, |record| {
                let count = record.app_passwords.len();
                record.app_passwords.clear();
                Some(vec![AuditEvent::new(
                    actor,
                    "auth.app_password.revoke_all",
                    format!("account:{}", id.0),
                )
                .detail(format!("{count} app passwords"))])
            })?;
            Outcome::Done("Every app password was revoked.".into())
        }
        AccountAction::Delete { .. } if own => {
            Outcome::Refused("You cannot delete your own account.".into())
        }
        AccountAction::Delete { confirm } if confirm.trim().to_lowercase() != account.address => {
            Outcome::Refused("Not deleted: the address typed does not match.".into())
        }
        AccountAction::Delete { .. } => {
            end_all_sessions(console, id, actor)?;
            let mut map = console_aliases(store);
            let before = map.clone();
            for targets in map.values_mut() {
                targets.retain(|t| *t != account.address);
            }
            map.retain(|_, targets| !targets.is_empty());
            if map != before {
                let event = AuditEvent::new(
                    actor,
                    "alias.remove",
                    format!("account {}", account.address),
                )
                .detail("the account is deleted");
                save_aliases(console, &map, actor, event)?;
            }
            store.delete_account(id, actor)?;
            Outcome::Deleted(account.address.clone())
        }
        AccountAction::AliasAdd(alias) => {
            let alias = alias.trim().to_lowercase();
            let domain = store.config().primary_domain.clone();
            let mut map = console_aliases(store);
            if alias.len() > sealpost_storage::ADDRESS_BYTES_MAX
                || alias
                    .rsplit_once('@')
                    .is_none_or(|(local, d)| local.is_empty() || d != domain)
            {
                Outcome::Refused(format!("An alias is an address at {domain}."))
            } else if store.find_account(&alias)?.is_some() {
                Outcome::Refused(format!("{alias} is an account's own address."))
            } else if map.len() >= CONSOLE_ALIASES_MAX && !map.contains_key(&alias) {
                Outcome::Refused(format!("At most {CONSOLE_ALIASES_MAX} aliases."))
            } else {
                let targets = map.entry(alias.clone()).or_default();
                if !targets.contains(&account.address) {
                    targets.push(account.address.clone());
                }
                let event = AuditEvent::new(actor, "alias.add", format!("alias {alias}"))
                    .detail(format!("to {}", account.address));
                save_aliases(console, &map, actor, event)?;
                Outcome::Done(format!(
                    "{alias} now reaches {}, who may send as it.",
                    account.address
                ))
            }
        }
        AccountAction::AliasRemove(alias) => {
            let alias = alias.trim().to_lowercase();
            let mut map = console_aliases(store);
            if !map
                .get(&alias)
                .is_some_and(|targets| targets.contains(&account.address))
            {
                return Ok(Outcome::Refused(format!(
                    "{alias} does not reach {}.",
                    account.address
                )));
            }
            if let Some(targets) = map.get_mut(&alias) {
                targets.retain(|t| *t != account.address);
            }
            map.retain(|_, targets| !targets.is_empty());
            let event = AuditEvent::new(actor, "alias.remove", format!("alias {alias}"))
                .detail(format!("from {}", account.address));
            save_aliases(console, &map, actor, event)?;
            Outcome::Done(format!("{alias} no longer reaches {}.", account.address))
        }
        AccountAction::Quota(text) => match text.trim() {
            "" => {
                store.set_quota(id, None, actor)?;
                Outcome::Done("No quota: the account may store without a limit.".into())
            }
            text => match text.parse::<f64>() {
                Ok(mb) if mb.is_finite() && mb > 0.0 && mb <= QUOTA_MB_MAX => {
                    let bytes = (mb * 1_048_576.0) as u64;
                    store.set_quota(id, Some(bytes), actor)?;
                    Outcome::Done(format!("The quota is {bytes} bytes."))
                }
                _ => Outcome::Refused(format!(
                    "A quota is a number of MB above 0, at most {QUOTA_MB_MAX}."
                )),
            },
        },
    };
    Ok(outcome)
}

/// The aliases that reach `address`.
pub fn aliases_of(store: &Store, address: &str) -> Vec<String> {
    console_aliases(store)
        .into_iter()
        .filter(|(_, targets)| targets.iter().any(|t| t == address))
        .map(|(alias, _)| alias)
        .collect()
}

/// Lifts an account's sign-in lockout (audited); true if it was locked out. Lockouts live in
/// the running server only.
pub fn lift_lockout(console: &Console, actor: &Actor, login: &str) -> Result<bool, Error> {
    let lifted = console
        .lockout
        .as_ref()
        .is_some_and(|lockout| lockout.lift(login));
    let event = AuditEvent::new(actor, "auth.lockout.lift", format!("account {login}"))
        .detail(if lifted { "lifted" } else { "was not locked" });
    console.store.audit(event)?;
    Ok(lifted)
}

/// The policy version in force as saved (`None`: version 0, the rules of `sealpost.toml`).
pub fn saved_policy(store: &Store) -> Option<PolicyVersion> {
    let bytes = store.secret(PolicyVersion::CURRENT).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// The saved versions, newest first, at most `POLICY_VERSIONS_LISTED`.
pub fn policy_history(store: &Store) -> Vec<PolicyVersion> {
    let newest = saved_policy(store).map_or(0, |c| c.version);
    (1..=newest)
        .rev()
        .take(POLICY_VERSIONS_LISTED as usize)
        .filter_map(|v| {
            let bytes = store.secret(&PolicyVersion::history_name(v)).ok()??;
            serde_json::from_slice(&bytes).ok()
        })
        .collect()
}

/// The rules as the console shows and takes them.
pub fn policy_toml(config: &PolicyConfig) -> String {
    toml::to_string(config).unwrap_or_default()
}

/// Why a policy was not saved.
#[derive(Debug)]
pub enum PolicyRefusal {
    /// The text is not valid rules; nothing changed.
    Invalid(String),
    Store(Error),
}

/// Checks `rules` (TOML), saves them as the next version (kept, audited) and puts them in
/// force at once if the server runs; returns the version.
pub fn save_policy(console: &Console, actor: &Actor, rules: &str) -> Result<u64, PolicyRefusal> {
    let config = toml::from_str::<PolicyConfig>(rules).map_err(|e| {
        PolicyRefusal::Invalid(format!("the rules do not read as TOML: {}", e.message()))
    })?;
    let policy = Policy::new(config.clone()).map_err(PolicyRefusal::Invalid)?;
    let summary = format!(
        "{} domain rules, {} content rules ({} enabled), {} barred accounts",
        config.domains.len(),
        config.content.len(),
        config.content.iter().filter(|r| r.enabled).count(),
        config.barred_accounts.len()
    );
    let store = &console.store;
    let version = saved_policy(store).map_or(0, |c| c.version) + 1;
    let record = PolicyVersion {
        version,
        saved_ms: now_ms(),
        saved_by: actor.name.clone(),
        config,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|_| PolicyRefusal::Store(Error::InvalidInput { what: "policy" }))?;
    let saved = (|| {
        store.set_secret(&PolicyVersion::history_name(version), &bytes, actor)?;
        store.set_secret(PolicyVersion::CURRENT, &bytes, actor)?;
        store.set_retention_rules(&record.config.retention, actor)?;
        store.audit(
            AuditEvent::new(actor, "policy.change", format!("policy version {version}"))
                .detail(summary),
        )
    })();
    saved.map_err(PolicyRefusal::Store)?;
    if let Some(rules) = &console.rules {
        rules.replace(policy);
    }
    Ok(version)
}

/// What the rules find in a sample text (nothing is sent or stored).
pub fn try_policy(policy: &Policy, subject: &str, text: &str) -> Vec<String> {
    policy
        .scan(&Content {
            subject,
            text,
            attachment_names: Vec::new(),
        })
        .into_iter()
        .map(|f| format!("rule {} matches: {:?}", f.rule, f.action).to_lowercase())
        .collect()
}

/// A message trace's question; every field given must match.
#[derive(Clone, Debug, Default)]
pub struct TraceQuery {
    /// Part of the sending account's address.
    pub sender: Option<String>,
    /// Part of a recipient's address.
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    /// Sent at or after, in ms since the epoch.
    pub since_ms: Option<i64>,
    /// Sent before, in ms since the epoch.
    pub before_ms: Option<i64>,
}

/// One traced message: its sender's account, Message-ID and delivery record.
pub struct Traced {
    pub sender: String,
    pub message_id: String,
    pub delivery: Delivery,
}

/// Messages to outside recipients that match, from the delivery records (no content), at
/// most `TRACE_ROWS_MAX`.
pub fn trace(store: &Store, query: &TraceQuery) -> Result<Vec<Traced>, Error> {
    let lower = |v: &Option<String>| {
        v.as_deref()
            .map(|v| v.trim().to_lowercase())
            .filter(|v| !v.is_empty())
    };
    let (sender, recipient, message_id) = (
        lower(&query.sender),
        lower(&query.recipient),
        lower(&query.message_id),
    );
    let mut rows = Vec::new();
    for account in store.list_accounts()? {
        if sender
            .as_ref()
            .is_some_and(|s| !account.address.contains(s.as_str()))
        {
            continue;
        }
        for delivery in store.deliveries(account.id)? {
            if query.since_ms.is_some_and(|t| delivery.created_ms < t)
                || query.before_ms.is_some_and(|t| delivery.created_ms >= t)
            {
                continue;
            }
            if recipient.as_ref().is_some_and(|r| {
                !delivery
                    .lines
                    .iter()
                    .any(|l| l.address.contains(r.as_str()))
            }) {
                continue;
            }
            let id = sealpost_mime::Summary::from_bytes(&delivery.summary)
                .and_then(|s| sealpost_mime::Shown::of_imap(&s.envelope).message_id)
                .unwrap_or_default();
            if message_id
                .as_ref()
                .is_some_and(|m| !id.to_lowercase().contains(m.trim_matches(['<', '>'])))
            {
                continue;
            }
            rows.push(Traced {
                sender: account.address.clone(),
                message_id: id,
                delivery,
            });
            if rows.len() >= TRACE_ROWS_MAX {
                return Ok(rows);
            }
        }
    }
    Ok(rows)
}

fn csv_field(text: &str) -> String {
    // Quoted always; a leading formula character is defused for spreadsheets.
    let defused = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    format!("\"{}\"", defused.replace('"', "\"\""))
}

/// How an audit export is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    JsonLines,
}

/// One audit record as a JSON line (without the newline), its outcome spelled out.
pub fn audit_json_line(record: &AuditRecord) -> String {
    let mut line = serde_json::to_value(record).unwrap_or_default();
    if let Some(object) = line.as_object_mut() {
        object.insert(
            "outcome".into(),
            serde_json::Value::String(record.event.outcome.as_str().into()),
        );
    }
    line.to_string()
}

/// Writes the records `search` selects, oldest first (at most `AUDIT_EXPORT_RECORDS_MAX`),
/// and audits the export with `described` (the query) and the count; returns the count.
pub fn export_audit(
    store: &Store,
    actor: &Actor,
    search: &AuditSearch,
    described: &str,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<usize, Error> {
    let mut search = search.clone();
    search.limit = search.limit.min(AUDIT_EXPORT_RECORDS_MAX);
    search.older_than = None;
    let mut records = store.audit_search(&search)?.records;
    records.reverse();
    let event = AuditEvent::new(actor, "audit.export", "audit log").detail(format!(
        "{} records as {}; {described}",
        records.len(),
        match format {
            ExportFormat::JsonLines => "JSON lines",
            ExportFormat::Csv => "CSV",
        },
    ));
    store.audit(event)?;
    let io = |source| Error::Io {
        path: "(export)".into(),
        source,
    };
    match format {
        ExportFormat::JsonLines => {
            for record in &records {
                writeln!(out, "{}", audit_json_line(record)).map_err(io)?;
            }
        }
        ExportFormat::Csv => {
            write!(out, "seq,at_ms,actor,peer,action,object,outcome,detail\r\n").map_err(io)?;
            for r in &records {
                let e = &r.event;
                write!(
                    out,
                    "{},{},{},{},{},{},{},{}\r\n",
                    r.seq,
                    r.at_ms,
                    csv_field(&e.actor),
                    csv_field(&e.peer),
                    csv_field(&e.action),
                    csv_field(&e.object),
                    e.outcome.as_str(),
                    csv_field(&e.detail)
                )
                .map_err(io)?;
            }
        }
    }
    Ok(records.len())
}
