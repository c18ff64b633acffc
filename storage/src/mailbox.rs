//! Mailboxes: sealed records under `account ‖ mailbox id`, with the account's counters in
//! slot 0. Names live only inside the sealed records.

use serde::{Deserialize, Serialize};

use crate::engine::{Batch, Durability, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::notify::MailboxEvent;
use crate::store::{AccountCrypto, Store};
use crate::types::{AccountId, Mailbox, MailboxId, SpecialUse};

/// The hierarchy delimiter of mailbox names.
pub const MAILBOX_DELIMITER: char = '/';

/// The mailboxes every new account gets.
pub(crate) const DEFAULT_MAILBOXES: [(&str, Option<SpecialUse>); 7] = [
    ("INBOX", None),
    ("Sent", Some(SpecialUse::Sent)),
    ("Drafts", Some(SpecialUse::Drafts)),
    ("Trash", Some(SpecialUse::Trash)),
    ("Junk", Some(SpecialUse::Junk)),
    ("Archive", Some(SpecialUse::Archive)),
    ("BACKUP", Some(SpecialUse::Backup)),
];

/// A mailbox to make.
pub(crate) struct NewMailbox<'a> {
    pub(crate) name: &'a str,
    pub(crate) special_use: Option<SpecialUse>,
    /// The default mailboxes start subscribed; those a client creates do not (it subscribes).
    pub(crate) subscribed: bool,
}

impl<'a> NewMailbox<'a> {
    fn plain(name: &'a str) -> Self {
        Self {
            name,
            special_use: None,
            subscribed: false,
        }
    }
}

/// Names that stay subscribed after their mailbox is deleted (RFC 3501 6.3.6: a server
/// "MUST NOT unilaterally remove an existing mailbox name from the subscription list"), at
/// most this many per account (each up to mailbox_name_bytes_max, and LIST (SUBSCRIBED) lists
/// every level above each); past it, the oldest is forgotten.
pub const LOST_SUBSCRIPTIONS_MAX: usize = 100;

#[derive(Serialize, Deserialize)]
pub(crate) struct AccountState {
    next_mailbox_id: u32,
    last_uid_validity: u32,
    /// Subscribed names whose mailbox was deleted, oldest first (LIST (SUBSCRIBED) shows them
    /// as \NonExistent; a CREATE of the name subscribes the new mailbox).
    lost_subscriptions: Vec<String>,
}

/// The account state as stores before the lost subscriptions wrote it.
#[derive(Deserialize)]
struct AccountStateV1 {
    next_mailbox_id: u32,
    last_uid_validity: u32,
}

impl AccountState {
    pub(crate) fn new() -> Self {
        Self {
            next_mailbox_id: 1,
            last_uid_validity: 0,
            lost_subscriptions: Vec::new(),
        }
    }

    /// Removes `name` from the lost subscriptions; whether it was there.
    fn take_lost(&mut self, name: &str) -> bool {
        let before = self.lost_subscriptions.len();
        self.lost_subscriptions
            .retain(|lost| !same_name(lost, name));
        self.lost_subscriptions.len() != before
    }

    fn add_lost(&mut self, name: &str) {
        self.take_lost(name);
        self.lost_subscriptions.push(name.to_string());
        let excess = self
            .lost_subscriptions
            .len()
            .saturating_sub(LOST_SUBSCRIPTIONS_MAX);
        self.lost_subscriptions.drain(..excess);
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct MailboxRecord {
    pub(crate) name: String,
    pub(crate) special_use: Option<SpecialUse>,
    pub(crate) subscribed: bool,
    pub(crate) uid_validity: u32,
    pub(crate) uid_next: u32,
    pub(crate) highest_modseq: u64,
    pub(crate) messages: u32,
    pub(crate) unseen: u32,
    pub(crate) bytes: u64,
    /// Messages from this UID on are \Recent: no IMAP4rev1 session has selected the mailbox
    /// read-write since they arrived (RFC 3501 2.3.2).
    pub(crate) recent_from: u32,
}

/// The mailbox record as stores before \Recent wrote it.
#[derive(Deserialize)]
struct MailboxRecordV1 {
    name: String,
    special_use: Option<SpecialUse>,
    subscribed: bool,
    uid_validity: u32,
    uid_next: u32,
    highest_modseq: u64,
    messages: u32,
    unseen: u32,
    bytes: u64,
}

impl From<MailboxRecordV1> for MailboxRecord {
    fn from(old: MailboxRecordV1) -> Self {
        MailboxRecord {
            // What was there before the upgrade is not recent.
            recent_from: old.uid_next,
            name: old.name,
            special_use: old.special_use,
            subscribed: old.subscribed,
            uid_validity: old.uid_validity,
            uid_next: old.uid_next,
            highest_modseq: old.highest_modseq,
            messages: old.messages,
            unseen: old.unseen,
            bytes: old.bytes,
        }
    }
}

impl From<AccountStateV1> for AccountState {
    fn from(old: AccountStateV1) -> Self {
        AccountState {
            next_mailbox_id: old.next_mailbox_id,
            last_uid_validity: old.last_uid_validity,
            lost_subscriptions: Vec::new(),
        }
    }
}

/// Opens a record written in its current layout or, failing that, in the layout before it.
fn open_versioned<T, Old>(crypto: &AccountCrypto, aad: &[u8], sealed: &[u8]) -> Result<T>
where
    T: for<'de> Deserialize<'de>,
    Old: for<'de> Deserialize<'de> + Into<T>,
{
    decode_versioned::<T, Old>(&crypto.metadata.open(aad, sealed)?)
}

fn decode_versioned<T, Old>(plain: &[u8]) -> Result<T>
where
    T: for<'de> Deserialize<'de>,
    Old: for<'de> Deserialize<'de> + Into<T>,
{
    // postcard is not self-describing: an older record ends before the newer fields, so
    // reading it in the newer layout fails at its end, and the older layout reads it whole.
    postcard::from_bytes::<T>(plain)
        .or_else(|_| postcard::from_bytes::<Old>(plain).map(Into::into))
        .map_err(|_| Error::corrupt("a mailbox store record"))
}

impl MailboxRecord {
    pub(crate) fn read_only(&self) -> bool {
        self.special_use == Some(SpecialUse::Backup)
    }

    fn to_mailbox(&self, id: MailboxId) -> Mailbox {
        Mailbox {
            id,
            name: self.name.clone(),
            special_use: self.special_use,
            subscribed: self.subscribed,
            read_only: self.read_only(),
            uid_validity: self.uid_validity,
            uid_next: self.uid_next,
            highest_modseq: self.highest_modseq,
            messages: self.messages,
            unseen: self.unseen,
            bytes: self.bytes,
        }
    }
}

fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// Writes INBOX in upper case wherever it is the first level, as IMAP requires.
fn canonical_name(name: &str) -> String {
    match name.split_once(MAILBOX_DELIMITER) {
        Some((first, rest)) if is_inbox(first) => format!("INBOX{MAILBOX_DELIMITER}{rest}"),
        None if is_inbox(name) => "INBOX".to_string(),
        _ => name.to_string(),
    }
}

fn same_name(a: &str, b: &str) -> bool {
    canonical_name(a) == canonical_name(b)
}

fn parent_names(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(MAILBOX_DELIMITER)
        .map(move |(at, _)| &name[..at])
}

fn mailbox_aad(account: AccountId, mailbox: MailboxId) -> Vec<u8> {
    let mut aad = b"mailbox/".to_vec();
    aad.extend_from_slice(&keys::mailbox(account, mailbox));
    aad
}

impl Store {
    /// Every mailbox of an account, sorted by name.
    pub fn list_mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>> {
        let mut list: Vec<Mailbox> = self
            .mailbox_records(account)?
            .into_iter()
            .map(|(id, r)| r.to_mailbox(id))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Finds a mailbox by name (`INBOX` in any case).
    pub fn mailbox_by_name(&self, account: AccountId, name: &str) -> Result<Option<Mailbox>> {
        Ok(self
            .mailbox_records(account)?
            .into_iter()
            .find(|(_, r)| same_name(&r.name, name))
            .map(|(id, r)| r.to_mailbox(id)))
    }

    /// Finds the mailbox with a special use (the first, if several have it).
    pub fn mailbox_by_special_use(
        &self,
        account: AccountId,
        use_: SpecialUse,
    ) -> Result<Option<Mailbox>> {
        Ok(self
            .list_mailboxes(account)?
            .into_iter()
            .find(|m| m.special_use == Some(use_)))
    }

    pub fn mailbox(&self, account: AccountId, mailbox: MailboxId) -> Result<Mailbox> {
        Ok(self.mailbox_record(account, mailbox)?.to_mailbox(mailbox))
    }

    /// Creates a mailbox, and any missing parent levels of its name.
    pub fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxId> {
        let name = self.validate_name(name)?;
        if special_use == Some(SpecialUse::Backup) {
            return Err(Error::MailboxProtected {
                action: "created",
                reason: "there is one BACKUP folder",
            });
        }
        let crypto = self.account_crypto(account)?;
        let _namespace = self.inner.namespace_locks.lock(account, 0);
        let existing = self.mailbox_records(account)?;
        if existing.iter().any(|(_, r)| same_name(&r.name, &name)) {
            return Err(Error::MailboxExists);
        }
        let mut state = self.account_state(&crypto, account)?;
        let mut batch = Batch::default();
        let mut created = 0u32;
        for parent in parent_names(&name) {
            if !existing.iter().any(|(_, r)| same_name(&r.name, parent)) {
                self.stage_new_mailbox(
                    &crypto,
                    account,
                    &mut state,
                    NewMailbox::plain(parent),
                    &mut batch,
                )?;
                created += 1;
            }
        }
        let id = self.stage_new_mailbox(
            &crypto,
            account,
            &mut state,
            NewMailbox {
                name: &name,
                special_use,
                subscribed: false,
            },
            &mut batch,
        )?;
        created += 1;
        let max = self.inner.config.limits.mailboxes_per_account_max;
        let total = existing.len() as u64 + u64::from(created);
        if total > u64::from(max) {
            return Err(Error::LimitExceeded {
                what: "mailboxes per account",
                actual: total,
                max: u64::from(max),
            });
        }
        self.stage_account_state(&crypto, account, &state, &mut batch)?;
        self.inner.engine.write(batch, Durability::Synced)?;
        Ok(id)
    }

    /// Renames a mailbox and every mailbox below it. Renaming INBOX moves its messages to a
    /// new mailbox of that name and leaves INBOX empty (RFC 9051, section 6.3.6).
    pub fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<()> {
        let to = self.validate_name(to)?;
        if is_inbox(from) {
            return self.rename_inbox(account, &to);
        }
        let crypto = self.account_crypto(account)?;
        let _namespace = self.inner.namespace_locks.lock(account, 0);
        let existing = self.mailbox_records(account)?;
        let Some((_, source)) = existing.iter().find(|(_, r)| same_name(&r.name, from)) else {
            return Err(Error::MailboxNotFound);
        };
        if source.read_only() {
            return Err(Error::MailboxProtected {
                action: "renamed",
                reason: "BACKUP keeps its name",
            });
        }
        if is_inbox(&to) || to.starts_with(&format!("{}{MAILBOX_DELIMITER}", source.name)) {
            return Err(Error::InvalidMailboxName {
                reason: "cannot rename a mailbox into itself or INBOX",
            });
        }
        let old_prefix = format!("{}{MAILBOX_DELIMITER}", source.name);
        let mut renames = Vec::new();
        for (id, record) in &existing {
            let new_name = if record.name == source.name {
                to.clone()
            } else if let Some(rest) = record.name.strip_prefix(&old_prefix) {
                format!("{to}{MAILBOX_DELIMITER}{rest}")
            } else {
                continue;
            };
            if existing.iter().any(|(_, r)| same_name(&r.name, &new_name)) {
                return Err(Error::MailboxExists);
            }
            let mut renamed = record.clone();
            renamed.name = new_name;
            renames.push((*id, renamed));
        }
        let mut batch = Batch::default();
        let mut state = self.account_state(&crypto, account)?;
        let renamed_names: Vec<String> = renames.iter().map(|(_, r)| r.name.clone()).collect();
        for parent in parent_names(&to) {
            let exists = existing.iter().any(|(_, r)| same_name(&r.name, parent))
                || renamed_names.iter().any(|n| same_name(n, parent));
            if !exists {
                self.stage_new_mailbox(
                    &crypto,
                    account,
                    &mut state,
                    NewMailbox::plain(parent),
                    &mut batch,
                )?;
            }
        }
        // Each record read again under its mailbox's lock: an append or a \Recent claim in
        // between moved its counters, which the record from the scan would set back.
        let ids: Vec<u32> = renames.iter().map(|(id, _)| id.0).collect();
        let _mailboxes = self.inner.mailbox_locks.lock_many(account, &ids);
        for (id, renamed) in &renames {
            let current = self.mailbox_record(account, *id)?;
            // A name still subscribed from a deleted mailbox subscribes the one renamed to it.
            let subscribed = state.take_lost(&renamed.name) || current.subscribed;
            let record = MailboxRecord {
                name: renamed.name.clone(),
                subscribed,
                ..current
            };
            self.stage_mailbox(&crypto, account, *id, &record, &mut batch)?;
        }
        self.stage_account_state(&crypto, account, &state, &mut batch)?;
        self.inner.engine.write(batch, Durability::Synced)
    }

    fn rename_inbox(&self, account: AccountId, to: &str) -> Result<()> {
        let inbox = self
            .mailbox_by_name(account, "INBOX")?
            .ok_or(Error::MailboxNotFound)?;
        let target = self.create_mailbox(account, to, None)?;
        let uids: Vec<u32> = self
            .messages(account, inbox.id)?
            .iter()
            .map(|m| m.uid)
            .collect();
        self.move_messages(account, inbox.id, &uids, target)?;
        Ok(())
    }

    /// Deletes a mailbox and its messages. Mailboxes below it stay. INBOX and BACKUP cannot
    /// be deleted.
    pub fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<()> {
        if is_inbox(name) {
            return Err(Error::MailboxProtected {
                action: "deleted",
                reason: "INBOX always exists",
            });
        }
        let crypto = self.account_crypto(account)?;
        let _namespace = self.inner.namespace_locks.lock(account, 0);
        let (id, record) = self
            .mailbox_records(account)?
            .into_iter()
            .find(|(_, r)| same_name(&r.name, name))
            .ok_or(Error::MailboxNotFound)?;
        if record.read_only() {
            return Err(Error::MailboxProtected {
                action: "deleted",
                reason: "BACKUP is kept by retention rules only",
            });
        }
        let _mailbox = self.inner.mailbox_locks.lock(account, id.0);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let mut batch = Batch::default();
        let mut blobs = crate::message::BlobChanges::default();
        let keeping = self.keeping(account)?;
        let now = crate::now_ms();
        let mut kept = 0u64;
        for (uid, message) in self.message_records(&crypto, account, id)? {
            // What a hold or a minimum age keeps leaves the user's view, not the store.
            if keeping
                .keeps(&record.name, record.special_use, message.internal_date, now)
                .is_some()
            {
                let summary = self.summary_of(&crypto, account, id, uid)?;
                self.stage_kept(
                    &crypto,
                    account,
                    &record,
                    message.blob,
                    message.size,
                    message.internal_date,
                    summary,
                    &mut batch,
                )?;
                kept += 1;
            } else {
                self.release_blob(&crypto, account, &message.blob, &mut blobs)?;
            }
        }
        blobs.stage(&crypto, account, &mut batch)?;
        let _ = kept;
        if record.subscribed {
            let mut state = self.account_state(&crypto, account)?;
            state.add_lost(&record.name);
            self.stage_account_state(&crypto, account, &state, &mut batch)?;
        }
        let prefix = keys::mailbox(account, id);
        batch.delete_range(Table::Messages, prefix.clone(), keys::prefix_end(&prefix));
        batch.delete_range(Table::Summaries, prefix.clone(), keys::prefix_end(&prefix));
        batch.delete_range(Table::Changes, prefix.clone(), keys::prefix_end(&prefix));
        batch.delete(Table::Mailboxes, prefix);
        self.inner.engine.write(batch, Durability::Synced)?;
        self.inner
            .notifier
            .publish(account, id, &[MailboxEvent::Deleted]);
        Ok(())
    }

    /// Subscribes to or unsubscribes from a mailbox (IMAP LSUB / LIST (SUBSCRIBED)). A name
    /// whose mailbox was deleted while subscribed can still be unsubscribed; only an existing
    /// mailbox can be subscribed (as Dovecot does).
    pub fn set_subscribed(&self, account: AccountId, name: &str, subscribed: bool) -> Result<()> {
        let crypto = self.account_crypto(account)?;
        let _namespace = self.inner.namespace_locks.lock(account, 0);
        let mut state = self.account_state(&crypto, account)?;
        let was_lost = state.take_lost(name);
        let mut batch = Batch::default();
        if was_lost {
            self.stage_account_state(&crypto, account, &state, &mut batch)?;
        }
        let found = self
            .mailbox_records(account)?
            .into_iter()
            .find(|(_, r)| same_name(&r.name, name));
        let Some((id, _)) = found else {
            if was_lost && !subscribed {
                return self.inner.engine.write(batch, Durability::Synced);
            }
            return Err(Error::MailboxNotFound);
        };
        let _mailbox = self.inner.mailbox_locks.lock(account, id.0);
        // Re-read under the mailbox lock: counters may have moved since the scan.
        let record = MailboxRecord {
            subscribed,
            ..self.mailbox_record(account, id)?
        };
        self.stage_mailbox(&crypto, account, id, &record, &mut batch)?;
        self.inner.engine.write(batch, Durability::Synced)
    }

    /// Subscribed names whose mailbox no longer exists, oldest first.
    pub fn lost_subscriptions(&self, account: AccountId) -> Result<Vec<String>> {
        let crypto = self.account_crypto(account)?;
        Ok(self.account_state(&crypto, account)?.lost_subscriptions)
    }

    /// The UIDs that are \Recent for an IMAP4rev1 session looking at `mailbox` now: those
    /// from the returned start up to (not including) UIDNEXT. With `claim` (a read-write
    /// SELECT, or new mail seen by such a session), they are this session's alone: the
    /// mailbox records them as seen, so that no later session gets them (RFC 3501 2.3.2).
    /// Without it (EXAMINE) nothing changes. A claim lost in a crash only shows those
    /// messages as recent once more, so it is written without waiting for the disk.
    pub fn claim_recent(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        claim: bool,
    ) -> Result<std::ops::Range<u32>> {
        let crypto = self.account_crypto(account)?;
        let _mailbox = self.inner.mailbox_locks.lock(account, mailbox.0);
        let record = self.mailbox_record(account, mailbox)?;
        let recent = record.recent_from..record.uid_next;
        if claim && !recent.is_empty() {
            let claimed = MailboxRecord {
                recent_from: record.uid_next,
                ..record
            };
            let mut batch = Batch::default();
            self.stage_mailbox(&crypto, account, mailbox, &claimed, &mut batch)?;
            self.inner.engine.write(batch, Durability::Buffered)?;
        }
        Ok(recent)
    }

    /// How many messages of `mailbox` no session has claimed as \Recent yet (STATUS RECENT).
    pub fn recent_count(&self, account: AccountId, mailbox: MailboxId) -> Result<u32> {
        let from = self.mailbox_record(account, mailbox)?.recent_from;
        let prefix = keys::mailbox(account, mailbox);
        let count = self.inner.engine.count(
            Table::Messages,
            &keys::message(account, mailbox, from),
            &keys::prefix_end(&prefix),
        )?;
        // A mailbox holds fewer than 2^32 messages (UIDs are 32-bit).
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn validate_name(&self, name: &str) -> Result<String> {
        let limits = &self.inner.config.limits;
        if name.is_empty() {
            return Err(Error::InvalidMailboxName { reason: "empty" });
        }
        if name.len() > limits.mailbox_name_bytes_max {
            return Err(Error::LimitExceeded {
                what: "mailbox name bytes",
                actual: name.len() as u64,
                max: limits.mailbox_name_bytes_max as u64,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(Error::InvalidMailboxName {
                reason: "control characters",
            });
        }
        let levels: Vec<&str> = name.split(MAILBOX_DELIMITER).collect();
        if levels.iter().any(|l| l.is_empty()) {
            return Err(Error::InvalidMailboxName {
                reason: "an empty level (leading, trailing or doubled /)",
            });
        }
        if levels.len() > limits.mailbox_depth_max {
            return Err(Error::LimitExceeded {
                what: "mailbox name levels",
                actual: levels.len() as u64,
                max: limits.mailbox_depth_max as u64,
            });
        }
        if name.contains('*') || name.contains('%') {
            return Err(Error::InvalidMailboxName {
                reason: "* and % are LIST wildcards",
            });
        }
        Ok(canonical_name(name))
    }

    pub(crate) fn mailbox_record(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<MailboxRecord> {
        let crypto = self.account_crypto(account)?;
        let sealed = self
            .inner
            .engine
            .get(Table::Mailboxes, &keys::mailbox(account, mailbox))?
            .ok_or(Error::MailboxNotFound)?;
        open_versioned::<MailboxRecord, MailboxRecordV1>(
            &crypto,
            &mailbox_aad(account, mailbox),
            &sealed,
        )
    }

    pub(crate) fn mailbox_records(
        &self,
        account: AccountId,
    ) -> Result<Vec<(MailboxId, MailboxRecord)>> {
        self.inner
            .mailbox_scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let crypto = self.account_crypto(account)?;
        let from = keys::mailbox(account, MailboxId(keys::ACCOUNT_STATE_SLOT + 1));
        let to = keys::account(AccountId(account.0 + 1));
        let mut out = Vec::new();
        self.inner
            .engine
            .scan(Table::Mailboxes, &from, &to, &mut |key, value| {
                let id = MailboxId(
                    keys::read_u32(key, 8).ok_or_else(|| Error::corrupt("a mailbox key"))?,
                );
                let record = open_versioned::<MailboxRecord, MailboxRecordV1>(
                    &crypto,
                    &mailbox_aad(account, id),
                    value,
                )?;
                out.push((id, record));
                Ok(Scan::Continue)
            })?;
        Ok(out)
    }

    fn account_state(&self, crypto: &AccountCrypto, account: AccountId) -> Result<AccountState> {
        let slot = MailboxId(keys::ACCOUNT_STATE_SLOT);
        let sealed = self
            .inner
            .engine
            .get(Table::Mailboxes, &keys::mailbox(account, slot))?
            .ok_or(Error::AccountNotFound { id: account.0 })?;
        open_versioned::<AccountState, AccountStateV1>(crypto, &mailbox_aad(account, slot), &sealed)
    }

    pub(crate) fn stage_account_state(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        state: &AccountState,
        batch: &mut Batch,
    ) -> Result<()> {
        let slot = MailboxId(keys::ACCOUNT_STATE_SLOT);
        batch.put(
            Table::Mailboxes,
            keys::mailbox(account, slot),
            seal_record(crypto, &mailbox_aad(account, slot), state)?,
        );
        Ok(())
    }

    pub(crate) fn stage_new_mailbox(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        state: &mut AccountState,
        new: NewMailbox<'_>,
        batch: &mut Batch,
    ) -> Result<MailboxId> {
        let id = MailboxId(state.next_mailbox_id);
        state.next_mailbox_id =
            state
                .next_mailbox_id
                .checked_add(1)
                .ok_or(Error::LimitExceeded {
                    what: "mailboxes ever created",
                    actual: u64::from(u32::MAX),
                    max: u64::from(u32::MAX),
                })?;
        // A UIDVALIDITY never repeats within an account: after a delete and re-create under
        // the same name, clients must see a new value.
        let now = u32::try_from(crate::now_ms() / 1000).unwrap_or(u32::MAX);
        state.last_uid_validity = now.max(state.last_uid_validity.saturating_add(1));
        // A name still subscribed from a deleted mailbox subscribes its new one.
        let subscribed = state.take_lost(new.name) || new.subscribed;
        let record = MailboxRecord {
            name: new.name.to_string(),
            special_use: new.special_use,
            subscribed,
            uid_validity: state.last_uid_validity,
            uid_next: 1,
            highest_modseq: 1,
            messages: 0,
            unseen: 0,
            bytes: 0,
            recent_from: 1,
        };
        self.stage_mailbox(crypto, account, id, &record, batch)?;
        Ok(id)
    }

    pub(crate) fn stage_mailbox(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: MailboxId,
        record: &MailboxRecord,
        batch: &mut Batch,
    ) -> Result<()> {
        batch.put(
            Table::Mailboxes,
            keys::mailbox(account, id),
            seal_record(crypto, &mailbox_aad(account, id), record)?,
        );
        Ok(())
    }
}

pub(crate) fn seal_record<T: Serialize>(
    crypto: &AccountCrypto,
    aad: &[u8],
    record: &T,
) -> Result<Vec<u8>> {
    let plain =
        postcard::to_stdvec(record).map_err(|e| Error::corrupt(format!("encoding: {e}")))?;
    Ok(crypto.metadata.seal(aad, &plain))
}

pub(crate) fn open_record<T: for<'de> Deserialize<'de>>(
    crypto: &AccountCrypto,
    aad: &[u8],
    sealed: &[u8],
) -> Result<T> {
    let plain = crypto.metadata.open(aad, sealed)?;
    postcard::from_bytes(&plain).map_err(|_| Error::corrupt("a mailbox store record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before \Recent and lost subscriptions existed still opens: nothing
    /// in it is recent, and no subscription is lost.
    #[test]
    fn records_of_the_layout_before_open() {
        #[derive(Serialize)]
        struct OldRecord<'a>(
            &'a str,
            Option<SpecialUse>,
            bool,
            u32,
            u32,
            u64,
            u32,
            u32,
            u64,
        );
        let old = postcard::to_stdvec(&OldRecord("Lab", None, true, 7, 42, 9, 3, 1, 100)).unwrap();
        let record = decode_versioned::<MailboxRecord, MailboxRecordV1>(&old).unwrap();
        assert_eq!(
            (record.name.as_str(), record.uid_next, record.recent_from),
            ("Lab", 42, 42)
        );
        assert!(record.subscribed);
        let old_state = postcard::to_stdvec(&(5u32, 1_700_000_000u32)).unwrap();
        let state = decode_versioned::<AccountState, AccountStateV1>(&old_state).unwrap();
        assert_eq!(state.next_mailbox_id, 5);
        assert!(state.lost_subscriptions.is_empty());
    }
}
