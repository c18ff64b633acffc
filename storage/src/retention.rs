//! Retention rules, legal holds, and the messages they keep after a user removed them.
//!
//! A rule names folders and accounts (empty: all) and a maximum age (after which the sweeper
//! destroys a message) and/or a minimum age (before which nothing destroys it). A legal hold
//! names accounts (custodians), each optionally narrowed to a range of internal dates; while a
//! message is held nothing destroys it. When destruction conflicts with a minimum age or a
//! hold, keeping wins. A user's expunge or folder delete of a kept message removes it from the
//! user's view (IMAP behaves as usual) and moves it to the `kept` table, where it waits, out of
//! the user's sight, until nothing keeps it and the sweeper destroys it. Deleting an account
//! that holds kept mail is refused. Every destruction by the sweeper is audited by message and
//! rule. Ages are measured from the message's internal date.

use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys::{self, BlobId};
use crate::mailbox::{open_record, seal_record, MailboxRecord};
use crate::now_ms;
use crate::store::AccountCrypto;
use crate::store::{Actor, Store};
use crate::types::{AccountId, InternalDate, MailboxId, SpecialUse};
use std::sync::Arc;

// The rule type lives below the store, where the policy crate sees it too.
pub use sealpost_types::{
    check_retention_rules, RetentionRule, RETENTION_DAYS_MAX, RETENTION_RULES_MAX,
};
/// Legal holds one store may hold (open and released).
pub const HOLDS_MAX: usize = 1_000;
/// Custodians one hold may name.
pub const CUSTODIANS_PER_HOLD_MAX: usize = 10_000;
/// Longest hold name or reason, in bytes.
pub const HOLD_TEXT_BYTES_MAX: usize = 1_000;

const DAY_MS: i64 = 24 * 3600 * 1000;
const RULES_SECRET: &str = "retention.rules";
/// Hold changes are read-modify-write of one secret: one at a time.
static HOLDS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
const HOLDS_SECRET: &str = "holds";

/// A legal hold: a case, its custodians, and whether it is released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: u64,
    pub name: String,
    pub reason: String,
    pub opened_ms: i64,
    pub opened_by: String,
    pub custodians: Vec<Custodian>,
    pub released_ms: Option<i64>,
    pub released_by: Option<String>,
}

/// An account under a hold, optionally only for messages with internal dates in a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Custodian {
    pub account: AccountId,
    /// Held from this internal date (ms), if given.
    pub from_ms: Option<i64>,
    /// Held before this internal date (ms), if given.
    pub until_ms: Option<i64>,
}

impl Hold {
    pub fn active(&self) -> bool {
        self.released_ms.is_none()
    }
}

/// A message the rules or a hold kept after its owner removed it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeptRecord {
    pub(crate) blob: BlobId,
    pub(crate) size: u64,
    pub(crate) internal_date: InternalDate,
    pub(crate) folder: String,
    pub(crate) special_use: Option<SpecialUse>,
    pub(crate) kept_ms: i64,
    pub(crate) summary: Vec<u8>,
}

/// A kept message as listed: its id, where it was, when it was removed.
#[derive(Clone, Debug)]
pub struct KeptMessage {
    pub id: [u8; 16],
    pub folder: String,
    pub size: u64,
    pub internal_date: InternalDate,
    pub kept_ms: i64,
    /// The stored summary (as `message_summaries` gives it).
    pub summary: Vec<u8>,
}

/// What the sweeper destroyed (or, in a dry run, would).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destruction {
    pub account: AccountId,
    /// `Some` for a message in a folder, `None` for a kept one.
    pub mailbox: Option<MailboxId>,
    pub uid: Option<u32>,
    pub kept: Option<[u8; 16]>,
    pub folder: String,
    pub size: u64,
    pub internal_date_ms: i64,
    /// The rule whose maximum age it passed, or "removed by its owner" for a kept message.
    pub rule: String,
}

/// What keeps messages of one account: the rules for it and its holds.
pub(crate) struct Keeping {
    rules: Vec<RetentionRule>,
    holds: Vec<Custodian>,
}

fn folder_matches(pattern: &str, folder: &str, special_use: Option<SpecialUse>) -> bool {
    let pattern = pattern.trim();
    pattern.eq_ignore_ascii_case(folder)
        || special_use.is_some_and(|u| {
            let name = match u {
                SpecialUse::Sent => "Sent",
                SpecialUse::Drafts => "Drafts",
                SpecialUse::Trash => "Trash",
                SpecialUse::Junk => "Junk",
                SpecialUse::Archive => "Archive",
                SpecialUse::Backup => "BACKUP",
            };
            pattern.trim_start_matches('\\').eq_ignore_ascii_case(name)
        })
}

impl Keeping {
    fn rules_for<'a>(
        &'a self,
        folder: &'a str,
        special_use: Option<SpecialUse>,
    ) -> impl Iterator<Item = &'a RetentionRule> + 'a {
        self.rules.iter().filter(move |rule| {
            rule.folders.is_empty()
                || rule
                    .folders
                    .iter()
                    .any(|f| folder_matches(f, folder, special_use))
        })
    }

    /// Why a message may not be destroyed now, if anything keeps it.
    pub(crate) fn keeps(
        &self,
        folder: &str,
        special_use: Option<SpecialUse>,
        date: InternalDate,
        now_ms: i64,
    ) -> Option<String> {
        let date_ms = date.unix_seconds.saturating_mul(1000);
        if let Some(hold) = self.holds.iter().find(|c| {
            c.from_ms.is_none_or(|from| date_ms >= from)
                && c.until_ms.is_none_or(|until| date_ms < until)
        }) {
            let _ = hold;
            return Some("a legal hold".into());
        }
        let age_ms = now_ms.saturating_sub(date_ms);
        self.rules_for(folder, special_use)
            .find(|rule| {
                rule.min_age_days
                    .is_some_and(|days| age_ms < i64::from(days) * DAY_MS)
            })
            .map(|rule| format!("retention rule {}", rule.name))
    }

    /// The rule whose maximum age the message has passed, if any (whether something keeps it
    /// is `keeps`).
    fn expired(
        &self,
        folder: &str,
        special_use: Option<SpecialUse>,
        date: InternalDate,
        now_ms: i64,
    ) -> Option<String> {
        let age_ms = now_ms.saturating_sub(date.unix_seconds.saturating_mul(1000));
        self.rules_for(folder, special_use)
            .find(|rule| {
                rule.max_age_days
                    .is_some_and(|days| age_ms >= i64::from(days) * DAY_MS)
            })
            .map(|rule| rule.name.clone())
    }

    fn held(&self) -> bool {
        !self.holds.is_empty()
    }
}

fn kept_key(account: AccountId, id: &[u8; 16]) -> Vec<u8> {
    let mut key = keys::account(account);
    key.extend_from_slice(id);
    key
}

fn kept_aad(key: &[u8]) -> Vec<u8> {
    [b"kept/".as_slice(), key].concat()
}

impl Store {
    /// The retention rules in force.
    pub fn retention_rules(&self) -> Result<Vec<RetentionRule>> {
        match self.secret(RULES_SECRET)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| Error::corrupt("the retention rules"))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Replaces the retention rules (checked first; audited).
    pub fn set_retention_rules(&self, rules: &[RetentionRule], actor: &Actor) -> Result<()> {
        check_retention_rules(rules).map_err(|_| Error::InvalidInput {
            what: "retention rules",
        })?;
        if self.retention_rules()? == rules {
            return Ok(());
        }
        let bytes = serde_json::to_vec(rules).map_err(|_| Error::InvalidInput {
            what: "retention rules",
        })?;
        self.set_secret(RULES_SECRET, &bytes, actor)?;
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        self.audit(
            AuditEvent::new(actor, "retention.rules", "retention rules").detail(format!(
                "{} rules: {}",
                rules.len(),
                names.join(", ")
            )),
        )?;
        Ok(())
    }

    /// Every legal hold, open and released, oldest first.
    pub fn holds(&self) -> Result<Vec<Hold>> {
        match self.secret(HOLDS_SECRET)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| Error::corrupt("the legal holds"))
            }
            None => Ok(Vec::new()),
        }
    }

    fn save_holds(&self, holds: &[Hold], actor: &Actor, event: AuditEvent) -> Result<()> {
        let bytes = serde_json::to_vec(holds).map_err(|_| Error::InvalidInput { what: "holds" })?;
        self.set_secret(HOLDS_SECRET, &bytes, actor)?;
        self.audit(event)?;
        Ok(())
    }

    /// Opens a case; returns its id.
    pub fn open_hold(&self, name: &str, reason: &str, actor: &Actor) -> Result<u64> {
        let _guard = HOLDS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut holds = self.holds()?;
        if holds.len() >= HOLDS_MAX {
            return Err(Error::LimitExceeded {
                what: "legal holds",
                actual: holds.len() as u64,
                max: HOLDS_MAX as u64,
            });
        }
        if name.trim().is_empty()
            || name.len() > HOLD_TEXT_BYTES_MAX
            || reason.len() > HOLD_TEXT_BYTES_MAX
        {
            return Err(Error::InvalidInput {
                what: "a hold's name (1 to 1000 bytes) or reason (at most 1000 bytes)",
            });
        }
        let id = holds.iter().map(|h| h.id).max().unwrap_or(0) + 1;
        holds.push(Hold {
            id,
            name: name.trim().to_string(),
            reason: reason.trim().to_string(),
            opened_ms: now_ms(),
            opened_by: actor.name.clone(),
            custodians: Vec::new(),
            released_ms: None,
            released_by: None,
        });
        let event = AuditEvent::new(actor, "hold.open", format!("hold {id}")).detail(name.trim());
        self.save_holds(&holds, actor, event)?;
        Ok(id)
    }

    /// Adds an account to an open hold, optionally only for internal dates in `[from, until)`.
    pub fn hold_add_custodian(
        &self,
        hold: u64,
        account: AccountId,
        from_ms: Option<i64>,
        until_ms: Option<i64>,
        actor: &Actor,
    ) -> Result<()> {
        let _guard = HOLDS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let address = self.account(account)?.address;
        let mut holds = self.holds()?;
        let case = holds
            .iter_mut()
            .find(|h| h.id == hold && h.active())
            .ok_or(Error::InvalidInput {
                what: "no open hold with that id",
            })?;
        if case.custodians.len() >= CUSTODIANS_PER_HOLD_MAX {
            return Err(Error::LimitExceeded {
                what: "custodians of a hold",
                actual: case.custodians.len() as u64,
                max: CUSTODIANS_PER_HOLD_MAX as u64,
            });
        }
        case.custodians.retain(|c| c.account != account);
        case.custodians.push(Custodian {
            account,
            from_ms,
            until_ms,
        });
        let range = match (from_ms, until_ms) {
            (None, None) => "all mail".to_string(),
            (from, until) => format!("internal dates from {from:?} until {until:?} (ms)"),
        };
        let event = AuditEvent::new(actor, "hold.custodian.add", format!("hold {hold}"))
            .detail(format!("account:{} {address}; {range}", account.0));
        self.save_holds(&holds, actor, event)
    }

    /// Takes an account off an open hold.
    pub fn hold_remove_custodian(
        &self,
        hold: u64,
        account: AccountId,
        actor: &Actor,
    ) -> Result<()> {
        let _guard = HOLDS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut holds = self.holds()?;
        let case = holds
            .iter_mut()
            .find(|h| h.id == hold && h.active())
            .ok_or(Error::InvalidInput {
                what: "no open hold with that id",
            })?;
        case.custodians.retain(|c| c.account != account);
        let event = AuditEvent::new(actor, "hold.custodian.remove", format!("hold {hold}"))
            .detail(format!("account:{}", account.0));
        self.save_holds(&holds, actor, event)
    }

    /// Releases a hold: retention takes its course again for what only it kept.
    pub fn release_hold(&self, hold: u64, actor: &Actor) -> Result<()> {
        let _guard = HOLDS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut holds = self.holds()?;
        let case = holds
            .iter_mut()
            .find(|h| h.id == hold && h.active())
            .ok_or(Error::InvalidInput {
                what: "no open hold with that id",
            })?;
        case.released_ms = Some(now_ms());
        case.released_by = Some(actor.name.clone());
        let event = AuditEvent::new(actor, "hold.release", format!("hold {hold}"))
            .detail(case.name.clone());
        self.save_holds(&holds, actor, event)
    }

    /// Whether an open hold names the account.
    pub fn is_held(&self, account: AccountId) -> Result<bool> {
        Ok(self.keeping(account)?.held())
    }

    /// What keeps the account's messages: the rules for its address and its open holds.
    pub(crate) fn keeping(&self, account: AccountId) -> Result<Keeping> {
        let all = self.retention_rules()?;
        // The directory record is opened only when a rule names accounts (on every expunge).
        let address = if all.iter().any(|r| !r.accounts.is_empty()) {
            self.account(account).map(|a| a.address).unwrap_or_default()
        } else {
            String::new()
        };
        let rules = all
            .into_iter()
            .filter(|rule| {
                rule.accounts.is_empty()
                    || rule
                        .accounts
                        .iter()
                        .any(|a| a.trim().eq_ignore_ascii_case(&address))
            })
            .collect();
        let holds = self
            .holds()?
            .into_iter()
            .filter(Hold::active)
            .flat_map(|h| h.custodians)
            .filter(|c| c.account == account)
            .collect();
        Ok(Keeping { rules, holds })
    }

    /// Stages a removed message as kept (its body stays referenced).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stage_kept(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        folder: &MailboxRecord,
        blob: BlobId,
        size: u64,
        internal_date: InternalDate,
        summary: Vec<u8>,
        batch: &mut Batch,
    ) -> Result<()> {
        let id: [u8; 16] = rand::random();
        let key = kept_key(account, &id);
        let record = KeptRecord {
            blob,
            size,
            internal_date,
            folder: folder.name.clone(),
            special_use: folder.special_use,
            kept_ms: now_ms(),
            summary,
        };
        batch.put(
            Table::Kept,
            key.clone(),
            seal_record(crypto, &kept_aad(&key), &record)?,
        );
        Ok(())
    }

    fn kept_records(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
    ) -> Result<Vec<([u8; 16], KeptRecord)>> {
        let prefix = keys::account(account);
        let mut out = Vec::new();
        self.inner.engine.scan(
            Table::Kept,
            &prefix,
            &keys::prefix_end(&prefix),
            &mut |key, value| {
                let id: [u8; 16] = key
                    .get(8..24)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Error::corrupt("a kept message key"))?;
                out.push((id, open_record(crypto, &kept_aad(key), value)?));
                Ok(Scan::Continue)
            },
        )?;
        Ok(out)
    }

    /// The account's kept messages (removed by their owner, kept by a rule or a hold).
    pub fn kept_messages(&self, account: AccountId) -> Result<Vec<KeptMessage>> {
        let crypto = self.account_crypto(account)?;
        Ok(self
            .kept_records(&crypto, account)?
            .into_iter()
            .map(|(id, r)| KeptMessage {
                id,
                folder: r.folder,
                size: r.size,
                internal_date: r.internal_date,
                kept_ms: r.kept_ms,
                summary: r.summary,
            })
            .collect())
    }

    /// A kept message's bytes.
    pub fn read_kept(&self, account: AccountId, id: &[u8; 16]) -> Result<Vec<u8>> {
        let (crypto, record) = self.kept_record(account, id)?;
        self.read_blob(&crypto, account, &record.blob)
    }

    /// A kept message's search text (lower-cased headers and text).
    pub fn kept_search_text(&self, account: AccountId, id: &[u8; 16]) -> Result<Vec<u8>> {
        let (crypto, record) = self.kept_record(account, id)?;
        self.blob_search_text(&crypto, account, &record.blob)
    }

    fn kept_record(
        &self,
        account: AccountId,
        id: &[u8; 16],
    ) -> Result<(Arc<AccountCrypto>, KeptRecord)> {
        let crypto = self.account_crypto(account)?;
        let key = kept_key(account, id);
        let sealed = self
            .inner
            .engine
            .get(Table::Kept, &key)?
            .ok_or(Error::InvalidInput {
                what: "no kept message with that id",
            })?;
        let record = open_record(&crypto, &kept_aad(&key), &sealed)?;
        Ok((crypto, record))
    }

    /// Why the account may not be deleted now, if anything keeps its mail: an open hold, or
    /// a message within a rule's minimum age.
    pub(crate) fn deletion_refusal(&self, account: AccountId, now: i64) -> Result<Option<String>> {
        let keeping = self.keeping(account)?;
        if keeping.held() {
            return Ok(Some("the account is under a legal hold".into()));
        }
        let crypto = self.account_crypto(account)?;
        let mut kept = 0usize;
        let mut why = None;
        for (mailbox, record) in self.mailbox_records(account)? {
            for (_, message) in self.message_records(&crypto, account, mailbox)? {
                if let Some(reason) =
                    keeping.keeps(&record.name, record.special_use, message.internal_date, now)
                {
                    kept += 1;
                    why.get_or_insert(reason);
                }
            }
        }
        for (_, record) in self.kept_records(&crypto, account)? {
            if let Some(reason) = keeping.keeps(
                &record.folder,
                record.special_use,
                record.internal_date,
                now,
            ) {
                kept += 1;
                why.get_or_insert(reason);
            }
        }
        Ok(why.map(|why| {
            format!("{kept} messages must be kept ({why}); disable the account instead")
        }))
    }

    /// Applies the retention rules as of `now_ms`: destroys every message past a rule's
    /// maximum age and every kept message that nothing keeps any more, unless a minimum age
    /// or a hold keeps it; each destruction audited by message and rule. With `dry_run`,
    /// only lists what would go.
    pub fn retention_sweep(
        &self,
        now_ms: i64,
        dry_run: bool,
        actor: &Actor,
    ) -> Result<Vec<Destruction>> {
        let mut all = Vec::new();
        for account in self.list_accounts()? {
            let id = account.id;
            let keeping = self.keeping(id)?;
            let crypto = self.account_crypto(id)?;
            // Without a maximum age for this account, no message in a folder can be due.
            let folders = if keeping.rules.iter().any(|r| r.max_age_days.is_some()) {
                self.mailbox_records(id)?
            } else {
                Vec::new()
            };
            for (mailbox, _) in folders {
                let _lock = self.inner.mailbox_locks.lock(id, mailbox.0);
                let _blobs = self.inner.blob_locks.lock(id, 0);
                let mut record = self.mailbox_record(id, mailbox)?;
                let mut batch = Batch::default();
                let mut blobs = crate::message::BlobChanges::default();
                let mut events = Vec::new();
                let mut expunged = Vec::new();
                for (uid, message) in self.message_records(&crypto, id, mailbox)? {
                    let Some(rule) = keeping.expired(
                        &record.name,
                        record.special_use,
                        message.internal_date,
                        now_ms,
                    ) else {
                        continue;
                    };
                    if keeping
                        .keeps(
                            &record.name,
                            record.special_use,
                            message.internal_date,
                            now_ms,
                        )
                        .is_some()
                    {
                        continue;
                    }
                    let destruction = Destruction {
                        account: id,
                        mailbox: Some(mailbox),
                        uid: Some(uid),
                        kept: None,
                        folder: record.name.clone(),
                        size: message.size,
                        internal_date_ms: message.internal_date.unix_seconds.saturating_mul(1000),
                        rule: rule.clone(),
                    };
                    if !dry_run {
                        let modseq = crate::message::stage_expunge(
                            id,
                            mailbox,
                            &mut record,
                            uid,
                            &message,
                            &mut batch,
                        );
                        self.release_blob(&crypto, id, &message.blob, &mut blobs)?;
                        expunged.push(crate::notify::MailboxEvent::Expunged { uid, modseq });
                        events.push(
                            AuditEvent::new(
                                actor,
                                "retention.destroy",
                                format!("account:{} mailbox:{} uid:{uid}", id.0, mailbox.0),
                            )
                            .detail(format!(
                                "rule {rule}; {} bytes; internal date {}",
                                message.size, message.internal_date.unix_seconds
                            )),
                        );
                    }
                    all.push(destruction);
                }
                if !events.is_empty() {
                    blobs.stage(&crypto, id, &mut batch)?;
                    self.stage_mailbox(&crypto, id, mailbox, &record, &mut batch)?;
                    self.commit_audited(batch, events)?;
                    self.inner.notifier.publish(id, mailbox, &expunged);
                }
            }
            let _blobs = self.inner.blob_locks.lock(id, 0);
            let mut batch = Batch::default();
            let mut blobs = crate::message::BlobChanges::default();
            let mut events = Vec::new();
            for (kept_id, kept) in self.kept_records(&crypto, id)? {
                if keeping
                    .keeps(&kept.folder, kept.special_use, kept.internal_date, now_ms)
                    .is_some()
                {
                    continue;
                }
                let hex: String = kept_id.iter().map(|b| format!("{b:02x}")).collect();
                all.push(Destruction {
                    account: id,
                    mailbox: None,
                    uid: None,
                    kept: Some(kept_id),
                    folder: kept.folder.clone(),
                    size: kept.size,
                    internal_date_ms: kept.internal_date.unix_seconds.saturating_mul(1000),
                    rule: "removed by its owner".into(),
                });
                if !dry_run {
                    batch.delete(Table::Kept, kept_key(id, &kept_id));
                    self.release_blob(&crypto, id, &kept.blob, &mut blobs)?;
                    events.push(
                        AuditEvent::new(actor, "retention.destroy", format!("account:{} kept:{hex}", id.0)).detail(
                            format!(
                                "removed by its owner, nothing keeps it now; {} bytes; internal date {}",
                                kept.size, kept.internal_date.unix_seconds
                            ),
                        ),
                    );
                }
            }
            if !events.is_empty() {
                blobs.stage(&crypto, id, &mut batch)?;
                self.commit_audited(batch, events)?;
            }
        }
        Ok(all)
    }
}
