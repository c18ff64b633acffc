//! Messages and their bodies.
//!
//! A body is a blob: split into chunks of [`CHUNK_BYTES`], each compressed with zstd (kept raw
//! when that does not help) and then sealed with the account's content key. A blob index
//! record holds its size, chunk count and reference count. Message records (which also hold
//! the caller's summary) point at blobs, so copies within an account share one blob.
//!
//! Every operation is one atomic batch written with a synced log, under the mailbox's lock:
//! UIDs and MODSEQs are assigned in order and never reused, and an operation that returned
//! is on disk. Compression and encryption happen before the lock is taken.

use std::collections::HashMap;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::crypto::BlobCipher;
use crate::engine::{Batch, Durability, Scan, Table};
use crate::error::{Error, Result};
use crate::keys::{self, BlobId};
use crate::mailbox::{open_record, seal_record, MailboxRecord};
use crate::notify::MailboxEvent;
use crate::store::{AccountCrypto, Store};
use crate::types::{
    AccountId, Appended, Changes, DeliveryTarget, FlagChange, Flags, FlagsStored, Held,
    InternalDate, MailboxId, MessageMeta, NewMessage, Placement, SpecialUse, SystemFlag, Usage,
};

/// How a delivery is held to the account's quota (`Store::quota`; copies in BACKUP do not
/// count, as `quota_usage` does not count them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum QuotaRule {
    /// Not held to it: the server's own notices, the sender's copy of what they send.
    Exempt,
    /// Mail from others: an account at or over its quota takes nothing new, and one message
    /// may take it past (a sender cannot make a message smaller to fit).
    Room,
    /// The account's own APPEND (and import): the copies must fit under the quota.
    Fits,
}

/// A delivery target with its folders found: what one account's part of a delivery writes.
pub(crate) struct Resolved {
    pub(crate) account: AccountId,
    pub(crate) mailboxes: Vec<MailboxId>,
    /// Held in the quarantine under this id instead of any folder.
    pub(crate) held: Option<([u8; 16], Held)>,
    pub(crate) quota: QuotaRule,
    pub(crate) outbound: Option<crate::queue::Outbound>,
}

impl Resolved {
    /// Another target of the same account: one copy in the union of the folders.
    fn merge(&mut self, other: Resolved) -> Result<()> {
        if self.held.is_some() || other.held.is_some() {
            return Err(Error::InvalidInput {
                what: "a quarantined copy and another for one account",
            });
        }
        if self.outbound.is_some() && other.outbound.is_some() {
            return Err(Error::InvalidInput {
                what: "two queue entries for one account",
            });
        }
        for mailbox in other.mailboxes {
            if !self.mailboxes.contains(&mailbox) {
                self.mailboxes.push(mailbox);
            }
        }
        self.quota = self.quota.max(other.quota);
        self.outbound = self.outbound.take().or(other.outbound);
        Ok(())
    }
}

/// Plaintext bytes per body chunk: the unit of a ranged read.
pub const CHUNK_BYTES: usize = 128 * 1024;

/// zstd level: level 1 compresses mail text about 3:1 at several hundred MB/s.
const ZSTD_LEVEL: i32 = 1;
const CHUNK_RAW: u8 = 0;
const CHUNK_ZSTD: u8 = 1;

const CHANGE_LIVE: u8 = 1;
const CHANGE_EXPUNGED: u8 = 2;

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct MessageRecord {
    pub(crate) blob: BlobId,
    pub(crate) size: u64,
    pub(crate) internal_date: InternalDate,
    pub(crate) flags: Flags,
    modseq: u64,
    /// The caller's summary. Stored in the summaries table under the same key, not in this
    /// record: STORE rewrites records and need not rewrite summaries, and listing envelopes is
    /// two sequential scans in the same key order, with no read per message.
    #[serde(skip)]
    summary: Vec<u8>,
}

#[derive(Clone, Serialize, Deserialize)]
struct BlobRecord {
    size: u64,
    chunks: u32,
    refcount: u32,
}

/// A body compressed and sealed, ready to be written under a lock.
pub(crate) struct PreparedBlob {
    pub(crate) id: BlobId,
    pub(crate) size: u64,
    chunks: Vec<Vec<u8>>,
    /// The sealed search text, if the caller gave one.
    text: Option<Vec<u8>>,
}

/// What one account's part of a delivery gave: its copies, and its queue entry if any.
pub type Delivered = (Vec<Appended>, Option<crate::queue::QueueId>);

/// The nonce position of a blob's search text: after every possible body chunk.
const TEXT_CHUNK: u32 = u32::MAX;

/// Largest search text stored with a message, in bytes.
pub const SEARCH_TEXT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Reference count changes collected over one operation, written once at the end.
#[derive(Default)]
pub(crate) struct BlobChanges {
    records: HashMap<BlobId, Option<BlobRecord>>,
}

impl BlobChanges {
    pub(crate) fn stage(
        self,
        crypto: &AccountCrypto,
        account: AccountId,
        batch: &mut Batch,
    ) -> Result<()> {
        for (id, record) in self.records {
            let key = keys::blob(account, &id);
            match record {
                Some(record) => batch.put(
                    Table::BlobIndex,
                    key.clone(),
                    seal_record(crypto, &blob_aad(&key), &record)?,
                ),
                None => {
                    batch.delete(Table::BlobIndex, key.clone());
                    batch.delete(Table::Texts, key.clone());
                    let chunk_start = keys::blob_chunk(account, &id, 0);
                    batch.delete_range(Table::Blobs, chunk_start, keys::prefix_end(&key));
                }
            }
        }
        Ok(())
    }
}

fn message_aad(key: &[u8]) -> Vec<u8> {
    [b"message/".as_slice(), key].concat()
}

fn summary_aad(key: &[u8]) -> Vec<u8> {
    [b"summary/".as_slice(), key].concat()
}

fn blob_aad(key: &[u8]) -> Vec<u8> {
    [b"blob/".as_slice(), key].concat()
}

fn chunk_aad(key: &[u8]) -> Vec<u8> {
    [b"chunk/".as_slice(), key].concat()
}

fn change_value(kind: u8, uid: u32) -> Vec<u8> {
    let mut value = vec![kind];
    value.extend_from_slice(&uid.to_be_bytes());
    value
}

impl Store {
    /// Appends a message as a user would (IMAP APPEND). Returns once it is durable.
    /// BACKUP refuses: only delivery writes there.
    pub fn append(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        message: &NewMessage<'_>,
    ) -> Result<Appended> {
        let record = self.mailbox_record(account, mailbox)?;
        if record.read_only() {
            return Err(Error::ReadOnly {
                reason: "BACKUP is written only by delivery",
            });
        }
        let target = Resolved {
            account,
            mailboxes: vec![mailbox],
            held: None,
            quota: QuotaRule::Fits,
            outbound: None,
        };
        self.deliver_resolved(vec![target], message, &|_| Vec::new())?
            .pop()
            .and_then(|(mut appended, _)| appended.pop())
            .ok_or_else(|| Error::corrupt("delivery returned nothing"))
    }

    /// Delivers one message to several accounts at once (SMTP with several local
    /// recipients): every copy, held message and queue entry in one atomic write, durable
    /// before it returns. Each target's placement names its folders and the store adds
    /// BACKUP; two targets of one account are one copy in the union of their folders. Each
    /// account gets its own blob under its own keys, shared by its copies. Either every
    /// recipient has the message or none has: an account already at or over its quota
    /// refuses it for all (`Error::OverQuota`; one message may take an account past it),
    /// but for a `Notice` or the sender's own copy.
    /// `audit` names the records written with the delivery, in the same atomic write: there is
    /// no delivery without its audit record. A quarantined copy's record
    /// (`quarantine.hold`) is the store's own, added to them.
    pub fn deliver_all(
        &self,
        targets: &[DeliveryTarget],
        message: &NewMessage<'_>,
        audit: &dyn Fn(&[Delivered]) -> Vec<crate::AuditEvent>,
    ) -> Result<Vec<Delivered>> {
        let mut resolved: Vec<Resolved> = Vec::with_capacity(targets.len());
        for target in targets {
            let next = self.resolve(target)?;
            match resolved.iter_mut().find(|r| r.account == next.account) {
                Some(same) => same.merge(next)?,
                None => resolved.push(next),
            }
        }
        self.deliver_resolved(resolved, message, audit)
    }

    /// The folders of a target's placement (BACKUP added), or its hold.
    fn resolve(&self, target: &DeliveryTarget) -> Result<Resolved> {
        let account = target.account;
        // One read of the account's mailboxes finds every folder a placement names.
        let folders = match target.placement {
            Placement::QueueOnly => Vec::new(),
            _ => self.list_mailboxes(account)?,
        };
        let special = |use_: SpecialUse| -> Result<MailboxId> {
            folders
                .iter()
                .find(|m| m.special_use == Some(use_))
                .map(|m| m.id)
                .ok_or(Error::MailboxNotFound)
        };
        let inbox = || -> Result<MailboxId> {
            folders
                .iter()
                .find(|m| m.name.eq_ignore_ascii_case("INBOX"))
                .map(|m| m.id)
                .ok_or(Error::MailboxNotFound)
        };
        let mut held = None;
        let mailboxes = match &target.placement {
            Placement::Inbox | Placement::Notice => vec![inbox()?, special(SpecialUse::Backup)?],
            Placement::Junk => vec![special(SpecialUse::Junk)?, special(SpecialUse::Backup)?],
            Placement::Quarantine(why) => {
                if self.quarantined_count(account)? < crate::QUARANTINE_PER_ACCOUNT_MAX {
                    held = Some((rand::random(), why.clone()));
                    Vec::new()
                } else {
                    vec![special(SpecialUse::Junk)?, special(SpecialUse::Backup)?]
                }
            }
            Placement::Sender { sent } => {
                let mut mailboxes = vec![special(SpecialUse::Backup)?];
                if *sent {
                    mailboxes.push(special(SpecialUse::Sent)?);
                }
                mailboxes
            }
            Placement::QueueOnly => Vec::new(),
        };
        if mailboxes.is_empty() && held.is_none() && target.outbound.is_none() {
            return Err(Error::InvalidInput {
                what: "delivery to no mailbox",
            });
        }
        Ok(Resolved {
            account,
            mailboxes,
            held,
            quota: match target.placement {
                Placement::Inbox | Placement::Junk | Placement::Quarantine(_) => QuotaRule::Room,
                Placement::Notice | Placement::Sender { .. } | Placement::QueueOnly => {
                    QuotaRule::Exempt
                }
            },
            outbound: target.outbound.clone(),
        })
    }

    /// Refuses a delivery its quota rule refuses: the copies in folders other than BACKUP
    /// count, as `quota_usage` counts them. Checked before the mailbox locks are taken, so
    /// concurrent deliveries can each pass and take the account past it by what they hold.
    fn check_quota(&self, target: &Resolved, size: u64) -> Result<()> {
        if target.quota == QuotaRule::Exempt || target.mailboxes.is_empty() {
            return Ok(());
        }
        // One read when no quota is set (the common case, and APPEND's hot path): the
        // mailboxes are looked at only for an account that has one.
        let Some(limit) = self.quota(target.account)? else {
            return Ok(());
        };
        let backup = self
            .mailbox_by_special_use(target.account, SpecialUse::Backup)?
            .map(|m| m.id);
        let copies = target
            .mailboxes
            .iter()
            .filter(|m| Some(**m) != backup)
            .count() as u64;
        self.refuse_past(
            target.account,
            target.quota,
            size.saturating_mul(copies),
            limit,
        )
    }

    /// Refuses (`Error::OverQuota`) adding `added` bytes to the folders that count, by `rule`.
    pub(crate) fn quota_allows(
        &self,
        account: AccountId,
        rule: QuotaRule,
        added: u64,
    ) -> Result<()> {
        if rule == QuotaRule::Exempt || added == 0 {
            return Ok(());
        }
        match self.quota(account)? {
            Some(limit) => self.refuse_past(account, rule, added, limit),
            None => Ok(()),
        }
    }

    /// Refuses adding `added` bytes by `rule` to an account whose quota is `limit`.
    fn refuse_past(
        &self,
        account: AccountId,
        rule: QuotaRule,
        added: u64,
        limit: u64,
    ) -> Result<()> {
        if rule == QuotaRule::Exempt || added == 0 {
            return Ok(());
        }
        let used = self.quota_usage(account)?;
        let refused = match rule {
            QuotaRule::Room => used >= limit,
            _ => used.saturating_add(added) > limit,
        };
        if refused {
            return Err(Error::OverQuota {
                account: account.0,
                used,
                limit,
            });
        }
        Ok(())
    }

    pub(crate) fn deliver_resolved(
        &self,
        targets: Vec<Resolved>,
        message: &NewMessage<'_>,
        audit: &dyn Fn(&[Delivered]) -> Vec<crate::AuditEvent>,
    ) -> Result<Vec<Delivered>> {
        if targets.is_empty()
            || targets
                .iter()
                .any(|t| t.mailboxes.is_empty() && t.outbound.is_none() && t.held.is_none())
        {
            return Err(Error::InvalidInput {
                what: "delivery to no mailbox",
            });
        }
        self.check_flags(&message.flags)?;
        for target in &targets {
            self.check_quota(target, message.raw.len() as u64)?;
        }
        let mut prepared = Vec::with_capacity(targets.len());
        for target in &targets {
            let crypto = self.account_crypto(target.account)?;
            let blob = self.prepare_blob(&crypto, target.account, message)?;
            prepared.push((crypto, blob));
        }
        let pairs: Vec<(AccountId, u32)> = targets
            .iter()
            .flat_map(|t| t.mailboxes.iter().map(|m| (t.account, m.0)))
            .collect();
        let locks = self.inner.mailbox_locks.lock_across(&pairs);
        let mut batch = Batch::default();
        let mut results = Vec::with_capacity(targets.len());
        let mut published: Vec<(AccountId, Appended)> = Vec::new();
        let mut hold_events = Vec::new();
        for (target, (crypto, blob)) in targets.iter().zip(prepared) {
            let account = target.account;
            let mut appended = Vec::with_capacity(target.mailboxes.len());
            let mut records: Vec<(MailboxId, MailboxRecord)> = Vec::new();
            for &mailbox in &target.mailboxes {
                let position = records.iter().position(|(id, _)| *id == mailbox);
                let record = match position {
                    Some(at) => &mut records[at].1,
                    None => {
                        records.push((mailbox, self.mailbox_record(account, mailbox)?));
                        let last = records.len() - 1;
                        &mut records[last].1
                    }
                };
                let meta = stage_new_message(
                    &crypto,
                    account,
                    mailbox,
                    record,
                    MessageRecord {
                        blob: blob.id,
                        size: blob.size,
                        internal_date: message.internal_date,
                        flags: message.flags.clone(),
                        modseq: 0,
                        summary: message.summary.to_vec(),
                    },
                    &mut batch,
                )?;
                appended.push(Appended {
                    mailbox,
                    uid_validity: record.uid_validity,
                    uid: meta.uid,
                    modseq: meta.modseq,
                });
            }
            for (id, record) in &records {
                self.stage_mailbox(&crypto, account, *id, record, &mut batch)?;
            }
            let queued = match &target.outbound {
                Some(outbound) => Some(crate::queue::stage_queue_entry(
                    &crypto,
                    account,
                    blob.id,
                    blob.size,
                    outbound,
                    message.summary,
                    &mut batch,
                )?),
                None => None,
            };
            if let Some((id, held)) = &target.held {
                hold_events.push(crate::quarantine::stage_hold(
                    &crypto, account, id, &blob, message, held, &mut batch,
                )?);
            }
            let references = target.mailboxes.len()
                + usize::from(queued.is_some())
                + usize::from(target.held.is_some());
            let refcount = u32::try_from(references).map_err(|_| Error::InvalidInput {
                what: "too many mailboxes",
            })?;
            self.stage_prepared_blob(&crypto, account, blob, refcount, &mut batch)?;
            published.extend(appended.iter().map(|a| (account, *a)));
            results.push((appended, queued));
        }
        // UIDs are assigned and written in order under the locks; the fsync happens after
        // them, so concurrent appenders share syncs instead of queueing behind each other.
        let mut events = audit(&results);
        events.extend(hold_events);
        if events.is_empty() {
            self.inner.engine.write(batch, Durability::Buffered)?;
        } else {
            let head = crate::audit::lock_head(self);
            self.write_audited(head, &mut batch, events)?;
        }
        drop(locks);
        self.inner.engine.sync_log()?;
        for (account, done) in &published {
            self.inner.notifier.publish(
                *account,
                done.mailbox,
                &[MailboxEvent::Appended {
                    uid: done.uid,
                    modseq: done.modseq,
                }],
            );
        }
        Ok(results)
    }

    /// Every message of a mailbox, by ascending UID.
    pub fn messages(&self, account: AccountId, mailbox: MailboxId) -> Result<Vec<MessageMeta>> {
        let crypto = self.account_crypto(account)?;
        Ok(self
            .message_records(&crypto, account, mailbox)?
            .into_iter()
            .map(|(uid, record)| meta_of(uid, &record))
            .collect())
    }

    pub fn message(&self, account: AccountId, mailbox: MailboxId, uid: u32) -> Result<MessageMeta> {
        let crypto = self.account_crypto(account)?;
        let record = self.message_record(&crypto, account, mailbox, uid)?;
        Ok(meta_of(uid, &record))
    }

    /// The whole message, byte for byte as appended.
    pub fn read_message(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Vec<u8>> {
        let crypto = self.account_crypto(account)?;
        let record = self.message_record(&crypto, account, mailbox, uid)?;
        self.read_blob(&crypto, account, &record.blob)
    }

    /// A whole body, every chunk opened and checked to be there.
    pub(crate) fn read_blob(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: &BlobId,
    ) -> Result<Vec<u8>> {
        let blob = self.blob_record(crypto, account, id)?;
        let mut out = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        let start = keys::blob_chunk(account, id, 0);
        let end = keys::prefix_end(&keys::blob(account, id));
        let cipher = crypto.content.blob(id);
        let mut next_chunk = 0u32;
        self.inner
            .engine
            .scan(Table::Blobs, &start, &end, &mut |key, value| {
                if keys::read_u32(key, 24) != Some(next_chunk) {
                    return Err(Error::corrupt("a message body misses a chunk"));
                }
                open_chunk(&cipher, next_chunk, key, &mut value.to_vec(), &mut out)?;
                self.count_chunk_opened();
                next_chunk += 1;
                Ok(Scan::Continue)
            })?;
        if next_chunk != blob.chunks || out.len() as u64 != blob.size {
            return Err(Error::corrupt(
                "a message body is shorter than its record says",
            ));
        }
        Ok(out)
    }

    fn count_chunk_opened(&self) {
        self.inner
            .chunks_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Message body chunks (`CHUNK_BYTES` of plaintext each) opened since the store was
    /// opened: a reader that needs part of a message should not open all of it.
    pub fn chunks_opened(&self) -> u64 {
        self.inner
            .chunks_opened
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whole mailbox lists read (every mailbox record of an account decrypted) since the
    /// store was opened: the hot paths (APPEND, delivery without a quota) read none.
    pub fn mailbox_scans(&self) -> u64 {
        self.inner
            .mailbox_scans
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Up to `length` bytes of the message from `offset` (IMAP BODY[]<offset.length>).
    /// Only the chunks that hold the range are read and decrypted.
    pub fn read_message_range(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>> {
        let crypto = self.account_crypto(account)?;
        let record = self.message_record(&crypto, account, mailbox, uid)?;
        let end = offset.saturating_add(length).min(record.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let chunk = CHUNK_BYTES as u64;
        let cipher = crypto.content.blob(&record.blob);
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for index in offset / chunk..=(end - 1) / chunk {
            let index = u32::try_from(index).map_err(|_| Error::corrupt("chunk index"))?;
            let key = keys::blob_chunk(account, &record.blob, index);
            let mut sealed = self
                .inner
                .engine
                .get(Table::Blobs, &key)?
                .ok_or_else(|| Error::corrupt("a message body misses a chunk"))?;
            let mut plain = Vec::new();
            open_chunk(&cipher, index, &key, &mut sealed, &mut plain)?;
            self.count_chunk_opened();
            let chunk_start = u64::from(index) * chunk;
            let from = usize::try_from(offset.saturating_sub(chunk_start)).unwrap_or(0);
            let to = usize::try_from((end - chunk_start).min(plain.len() as u64)).unwrap_or(0);
            out.extend_from_slice(
                plain
                    .get(from..to)
                    .ok_or_else(|| Error::corrupt("a short body chunk"))?,
            );
        }
        Ok(out)
    }

    /// The search text stored with the message at append time (empty if none was given).
    pub fn message_search_text(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Vec<u8>> {
        let crypto = self.account_crypto(account)?;
        let record = self.message_record(&crypto, account, mailbox, uid)?;
        self.blob_search_text(&crypto, account, &record.blob)
    }

    /// The search text of a body (lower-cased headers and text).
    pub(crate) fn blob_search_text(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        blob: &BlobId,
    ) -> Result<Vec<u8>> {
        let key = keys::blob(account, blob);
        let Some(mut sealed) = self.inner.engine.get(Table::Texts, &key)? else {
            return Ok(Vec::new());
        };
        let mut text = Vec::new();
        let cipher = crypto.content.blob(blob);
        open_sealed(
            &cipher,
            TEXT_CHUNK,
            &key,
            &mut sealed,
            &mut text,
            SEARCH_TEXT_BYTES_MAX,
        )?;
        Ok(text)
    }

    /// A message's stored summary, as kept with a removed message.
    pub(crate) fn summary_of(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Vec<u8>> {
        self.summary_bytes(crypto, account, mailbox, uid)
    }

    /// Metadata and stored summary of the messages with these UIDs (those that exist), in one
    /// pass: what FETCH ENVELOPE and BODYSTRUCTURE need, without reading any record twice.
    pub fn message_summaries(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uids: &[u32],
    ) -> Result<Vec<(MessageMeta, Vec<u8>)>> {
        let crypto = self.account_crypto(account)?;
        let (Some(&first), Some(&last)) = (uids.iter().min(), uids.iter().max()) else {
            return Ok(Vec::new());
        };
        let records: Vec<(u32, MessageRecord)> = if uids.len() > 64 {
            // One scan over the UID span of the request, not over the whole mailbox.
            let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
            let (from, to) = (
                keys::message(account, mailbox, first),
                keys::message(account, mailbox, last.saturating_add(1)),
            );
            let mut records = Vec::new();
            self.inner
                .engine
                .scan(Table::Messages, &from, &to, &mut |key, value| {
                    let uid =
                        keys::read_u32(key, 12).ok_or_else(|| Error::corrupt("a message key"))?;
                    if wanted.contains(&uid) {
                        records.push((uid, open_record(&crypto, &message_aad(key), value)?));
                    }
                    Ok(Scan::Continue)
                })?;
            records
        } else {
            uids.iter()
                .filter_map(|uid| {
                    self.message_record(&crypto, account, mailbox, *uid)
                        .ok()
                        .map(|r| (*uid, r))
                })
                .collect()
        };
        let mut summaries: std::collections::HashMap<u32, Vec<u8>> =
            std::collections::HashMap::new();
        if uids.len() > 64 {
            let (from, to) = (
                keys::message(account, mailbox, first),
                keys::message(account, mailbox, last.saturating_add(1)),
            );
            self.inner
                .engine
                .scan(Table::Summaries, &from, &to, &mut |key, value| {
                    let uid =
                        keys::read_u32(key, 12).ok_or_else(|| Error::corrupt("a summary key"))?;
                    summaries.insert(uid, crypto.metadata.open(&summary_aad(key), value)?);
                    Ok(Scan::Continue)
                })?;
        }
        let mut out = Vec::with_capacity(records.len());
        for (uid, record) in records {
            let summary = match summaries.remove(&uid) {
                Some(summary) => summary,
                None => match self.summary_bytes(&crypto, account, mailbox, uid) {
                    Ok(summary) => summary,
                    // Expunged since its record was read: left out, as if read a moment later.
                    Err(Error::MessageNotFound { .. }) => continue,
                    Err(error) => return Err(error),
                },
            };
            out.push((meta_of(uid, &record), summary));
        }
        Ok(out)
    }

    /// The summary stored with the message at append time.
    pub fn message_summary(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Vec<u8>> {
        let crypto = self.account_crypto(account)?;
        self.summary_bytes(&crypto, account, mailbox, uid)
    }

    pub(crate) fn summary_bytes(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Vec<u8>> {
        let key = keys::message(account, mailbox, uid);
        match self.inner.engine.get(Table::Summaries, &key)? {
            Some(sealed) => crypto.metadata.open(&summary_aad(&key), &sealed),
            None => Err(Error::MessageNotFound { uid }),
        }
    }

    /// Changes flags (IMAP STORE). Each changed message gets a new MODSEQ; with
    /// `unchanged_since`, messages modified after it are left alone and reported
    /// (CONDSTORE). UIDs that do not exist are skipped.
    pub fn store_flags(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uids: &[u32],
        change: &FlagChange,
        unchanged_since: Option<u64>,
    ) -> Result<FlagsStored> {
        let (FlagChange::Replace(flags) | FlagChange::Add(flags) | FlagChange::Remove(flags)) =
            change;
        self.check_flags(flags)?;
        let crypto = self.account_crypto(account)?;
        let _lock = self.inner.mailbox_locks.lock(account, mailbox.0);
        let mut mailbox_record = self.mailbox_record(account, mailbox)?;
        if mailbox_record.read_only() {
            return Err(Error::ReadOnly {
                reason: "flags in BACKUP cannot be changed",
            });
        }
        let mut batch = Batch::default();
        let mut outcome = FlagsStored::default();
        let mut events = Vec::new();
        for &uid in uids {
            let Ok(mut record) = self.message_record(&crypto, account, mailbox, uid) else {
                continue;
            };
            if unchanged_since.is_some_and(|since| record.modseq > since) {
                outcome.conflicts.push(uid);
                continue;
            }
            let flags = record.flags.apply(change);
            self.check_flags(&flags)?;
            if flags == record.flags {
                outcome.unchanged.push(meta_of(uid, &record));
                continue;
            }
            let was_seen = record.flags.has(SystemFlag::Seen);
            let is_seen = flags.has(SystemFlag::Seen);
            mailbox_record.unseen = match (was_seen, is_seen) {
                (false, true) => mailbox_record.unseen.saturating_sub(1),
                (true, false) => mailbox_record.unseen + 1,
                _ => mailbox_record.unseen,
            };
            batch.delete(
                Table::Changes,
                keys::change(account, mailbox, record.modseq),
            );
            mailbox_record.highest_modseq += 1;
            record.modseq = mailbox_record.highest_modseq;
            record.flags = flags;
            let key = keys::message(account, mailbox, uid);
            batch.put(
                Table::Messages,
                key.clone(),
                seal_record(&crypto, &message_aad(&key), &record)?,
            );
            batch.put(
                Table::Changes,
                keys::change(account, mailbox, record.modseq),
                change_value(CHANGE_LIVE, uid),
            );
            events.push(MailboxEvent::FlagsChanged {
                uid,
                modseq: record.modseq,
            });
            outcome.changed.push(meta_of(uid, &record));
        }
        if !batch.is_empty() {
            self.stage_mailbox(&crypto, account, mailbox, &mailbox_record, &mut batch)?;
            self.inner.engine.write(batch, Durability::Synced)?;
        }
        self.inner.notifier.publish(account, mailbox, &events);
        Ok(outcome)
    }

    /// Copies messages into another mailbox (IMAP COPY); the copies share the bodies.
    /// Returns (source UID, new UID) pairs for COPYUID. Copies must fit under the account's
    /// quota, as an APPEND must (`Error::OverQuota`).
    pub fn copy_messages(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
    ) -> Result<Vec<(u32, u32)>> {
        self.transfer(account, from, uids, to, false)
    }

    /// Moves messages into another mailbox (IMAP MOVE), atomically: they are in exactly one
    /// of the two mailboxes at every moment.
    pub fn move_messages(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
    ) -> Result<Vec<(u32, u32)>> {
        self.transfer(account, from, uids, to, true)
    }

    fn transfer(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
        remove: bool,
    ) -> Result<Vec<(u32, u32)>> {
        // A move into the messages' own mailbox gives them new UIDs and expunges the old ones,
        // as COPY into it adds copies (RFC 6851 does not forbid it; clients use it).
        let crypto = self.account_crypto(account)?;
        let _locks = self.inner.mailbox_locks.lock_many(account, &[from.0, to.0]);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let mut source = self.mailbox_record(account, from)?;
        let mut target = if from == to {
            source.clone()
        } else {
            self.mailbox_record(account, to)?
        };
        if target.read_only() {
            return Err(Error::ReadOnly {
                reason: "BACKUP is written only by delivery",
            });
        }
        if remove && source.read_only() {
            return Err(Error::ReadOnly {
                reason: "messages cannot be moved out of BACKUP",
            });
        }
        let before = if from == to {
            source.bytes
        } else {
            target.bytes
        };
        let mut batch = Batch::default();
        let mut blobs = BlobChanges::default();
        let mut pairs = Vec::new();
        let (mut appended, mut expunged) = (Vec::new(), Vec::new());
        for &uid in uids {
            let Ok(record) = self.message_record(&crypto, account, from, uid) else {
                continue;
            };
            let copy = MessageRecord {
                modseq: 0,
                summary: self.summary_bytes(&crypto, account, from, uid)?,
                ..record.clone()
            };
            let target_record = if from == to { &mut source } else { &mut target };
            let meta = stage_new_message(&crypto, account, to, target_record, copy, &mut batch)?;
            appended.push(MailboxEvent::Appended {
                uid: meta.uid,
                modseq: meta.modseq,
            });
            pairs.push((uid, meta.uid));
            if remove {
                let modseq = stage_expunge(account, from, &mut source, uid, &record, &mut batch);
                expunged.push(MailboxEvent::Expunged { uid, modseq });
            } else {
                self.retain_blob(&crypto, account, &record.blob, &mut blobs)?;
            }
        }
        if pairs.is_empty() {
            return Ok(pairs);
        }
        if !remove {
            // A copy is the account's own act, as APPEND is: it must fit under the quota
            // (a move changes no folder's total that counts; BACKUP is neither end of one).
            let after = if from == to {
                source.bytes
            } else {
                target.bytes
            };
            self.quota_allows(account, QuotaRule::Fits, after.saturating_sub(before))?;
        }
        blobs.stage(&crypto, account, &mut batch)?;
        self.stage_mailbox(&crypto, account, from, &source, &mut batch)?;
        if from != to {
            self.stage_mailbox(&crypto, account, to, &target, &mut batch)?;
        }
        self.inner.engine.write(batch, Durability::Synced)?;
        self.inner.notifier.publish(account, to, &appended);
        self.inner.notifier.publish(account, from, &expunged);
        let junk = |record: &MailboxRecord| record.special_use == Some(crate::SpecialUse::Junk);
        if junk(&source) != junk(&target) {
            let hook = self
                .inner
                .junk_hook
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(
                    account,
                    to,
                    pairs.iter().map(|(_, new)| *new).collect(),
                    junk(&target),
                );
            }
        }
        Ok(pairs)
    }

    /// Removes the messages flagged \Deleted (IMAP EXPUNGE), or only those among `only`
    /// (UID EXPUNGE). Returns the expunged UIDs, ascending. Bodies go with their last copy.
    pub fn expunge_deleted(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        only: Option<&[u32]>,
    ) -> Result<Vec<u32>> {
        let crypto = self.account_crypto(account)?;
        let _lock = self.inner.mailbox_locks.lock(account, mailbox.0);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let mut mailbox_record = self.mailbox_record(account, mailbox)?;
        if mailbox_record.read_only() {
            return Err(Error::ReadOnly {
                reason: "only retention rules remove messages from BACKUP",
            });
        }
        let candidates: Vec<(u32, MessageRecord)> = match only {
            None => self.message_records(&crypto, account, mailbox)?,
            Some(uids) => {
                let mut sorted = uids.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                sorted
                    .into_iter()
                    .filter_map(|uid| {
                        self.message_record(&crypto, account, mailbox, uid)
                            .ok()
                            .map(|r| (uid, r))
                    })
                    .collect()
            }
        };
        let mut batch = Batch::default();
        let mut blobs = BlobChanges::default();
        let mut expunged = Vec::new();
        let mut events = Vec::new();
        let keeping = self.keeping(account)?;
        let now = crate::now_ms();
        for (uid, record) in candidates
            .into_iter()
            .filter(|(_, r)| r.flags.has(SystemFlag::Deleted))
        {
            // What a hold or a minimum age keeps leaves the user's view, not the store.
            if keeping
                .keeps(
                    &mailbox_record.name,
                    mailbox_record.special_use,
                    record.internal_date,
                    now,
                )
                .is_some()
            {
                let summary = self.summary_of(&crypto, account, mailbox, uid)?;
                self.stage_kept(
                    &crypto,
                    account,
                    &mailbox_record,
                    record.blob,
                    record.size,
                    record.internal_date,
                    summary,
                    &mut batch,
                )?;
            } else {
                self.release_blob(&crypto, account, &record.blob, &mut blobs)?;
            }
            let modseq = stage_expunge(
                account,
                mailbox,
                &mut mailbox_record,
                uid,
                &record,
                &mut batch,
            );
            expunged.push(uid);
            events.push(MailboxEvent::Expunged { uid, modseq });
        }
        if expunged.is_empty() {
            return Ok(expunged);
        }
        blobs.stage(&crypto, account, &mut batch)?;
        self.stage_mailbox(&crypto, account, mailbox, &mailbox_record, &mut batch)?;
        self.inner.engine.write(batch, Durability::Synced)?;
        self.inner.notifier.publish(account, mailbox, &events);
        Ok(expunged)
    }

    /// What changed after `since` (CONDSTORE CHANGEDSINCE, QRESYNC): live messages with a
    /// higher MODSEQ, and UIDs expunged after it.
    pub fn changes_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        since: u64,
    ) -> Result<Changes> {
        let from = keys::change(account, mailbox, since.saturating_add(1));
        let to = keys::prefix_end(&keys::mailbox(account, mailbox));
        let mut changes = Changes::default();
        self.inner
            .engine
            .scan(Table::Changes, &from, &to, &mut |key, value| {
                let modseq =
                    keys::read_u64(key, 12).ok_or_else(|| Error::corrupt("a change key"))?;
                let uid =
                    keys::read_u32(value, 1).ok_or_else(|| Error::corrupt("a change record"))?;
                match value.first() {
                    Some(&CHANGE_LIVE) => changes.changed.push((uid, modseq)),
                    Some(&CHANGE_EXPUNGED) => changes.expunged.push(uid),
                    _ => return Err(Error::corrupt("a change record")),
                }
                Ok(Scan::Continue)
            })?;
        changes.changed.sort_unstable();
        changes.expunged.sort_unstable();
        Ok(changes)
    }

    /// Messages and bytes over all of an account's mailboxes (IMAP QUOTA).
    pub fn usage(&self, account: AccountId) -> Result<Usage> {
        Ok(self
            .list_mailboxes(account)?
            .iter()
            .fold(Usage::default(), |usage, m| Usage {
                messages: usage.messages + u64::from(m.messages),
                bytes: usage.bytes + m.bytes,
            }))
    }

    /// Bytes of the account's mail that count against its quota: every mailbox but BACKUP
    /// (which the owner cannot empty; retention does).
    pub fn quota_usage(&self, account: AccountId) -> Result<u64> {
        Ok(self
            .list_mailboxes(account)?
            .iter()
            .filter(|m| m.special_use != Some(crate::SpecialUse::Backup))
            .map(|m| m.bytes)
            .sum())
    }

    /// The account's storage limit in bytes, if an admin set one.
    pub fn quota(&self, account: AccountId) -> Result<Option<u64>> {
        Ok(self
            .inner
            .engine
            .get(Table::Meta, &crate::keys::quota(account))?
            .and_then(|v| keys::read_u64(&v, 0)))
    }

    /// Sets (or with `None` lifts) the account's storage limit in bytes; audited.
    pub fn set_quota(
        &self,
        account: AccountId,
        bytes: Option<u64>,
        actor: &crate::Actor,
    ) -> Result<()> {
        let address = self.account(account)?.address;
        let mut batch = Batch::default();
        let key = crate::keys::quota(account);
        match bytes {
            Some(bytes) => batch.put(Table::Meta, key, bytes.to_be_bytes().to_vec()),
            None => batch.delete(Table::Meta, key),
        }
        let detail = bytes.map_or_else(|| "none".to_string(), |b| format!("{b} bytes"));
        let event = crate::AuditEvent::new(
            actor,
            "account.quota",
            format!("account:{} {address}", account.0),
        )
        .detail(detail);
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// How many distinct bodies an account stores: copies share one, so this is at most the
    /// number of messages over all its mailboxes.
    pub fn body_count(&self, account: AccountId) -> Result<u64> {
        let prefix = keys::account(account);
        self.inner
            .engine
            .count(Table::BlobIndex, &prefix, &keys::prefix_end(&prefix))
    }

    fn check_flags(&self, flags: &Flags) -> Result<()> {
        let limits = &self.inner.config.limits;
        if flags.keywords().len() > limits.keywords_per_message_max {
            return Err(Error::LimitExceeded {
                what: "keywords per message",
                actual: flags.keywords().len() as u64,
                max: limits.keywords_per_message_max as u64,
            });
        }
        for keyword in flags.keywords() {
            if keyword.len() > limits.keyword_bytes_max {
                return Err(Error::LimitExceeded {
                    what: "keyword bytes",
                    actual: keyword.len() as u64,
                    max: limits.keyword_bytes_max as u64,
                });
            }
            let atom = |c: char| c.is_ascii_graphic() && !"(){%*\"\\]".contains(c);
            if keyword.is_empty() || keyword.starts_with('\\') || !keyword.chars().all(atom) {
                return Err(Error::InvalidInput {
                    what: "a keyword is not an IMAP atom",
                });
            }
        }
        Ok(())
    }

    pub(crate) fn prepare_blob(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        message: &NewMessage<'_>,
    ) -> Result<PreparedBlob> {
        let raw = message.raw;
        let max = self.inner.config.limits.message_bytes_max;
        if raw.len() as u64 > max {
            return Err(Error::LimitExceeded {
                what: "message bytes",
                actual: raw.len() as u64,
                max,
            });
        }
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let cipher = crypto.content.blob(&id);
        let mut chunks = Vec::with_capacity(raw.len().div_ceil(CHUNK_BYTES));
        for (index, plain) in raw.chunks(CHUNK_BYTES).enumerate() {
            let index = u32::try_from(index).map_err(|_| Error::InvalidInput {
                what: "message too large",
            })?;
            let key = keys::blob_chunk(account, &id, index);
            chunks.push(seal_chunk(&cipher, index, &key, plain));
        }
        if message.search_text.len() > SEARCH_TEXT_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "search text bytes",
                actual: message.search_text.len() as u64,
                max: SEARCH_TEXT_BYTES_MAX as u64,
            });
        }
        let text = (!message.search_text.is_empty()).then(|| {
            let key = keys::blob(account, &id);
            seal_chunk(&cipher, TEXT_CHUNK, &key, message.search_text)
        });
        Ok(PreparedBlob {
            id,
            size: raw.len() as u64,
            chunks,
            text,
        })
    }

    pub(crate) fn stage_prepared_blob(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        blob: PreparedBlob,
        refcount: u32,
        batch: &mut Batch,
    ) -> Result<()> {
        let chunk_count = u32::try_from(blob.chunks.len()).map_err(|_| Error::InvalidInput {
            what: "message too large",
        })?;
        for (index, sealed) in (0u32..).zip(blob.chunks) {
            batch.put(
                Table::Blobs,
                keys::blob_chunk(account, &blob.id, index),
                sealed,
            );
        }
        let key = keys::blob(account, &blob.id);
        if let Some(text) = blob.text {
            batch.put(Table::Texts, key.clone(), text);
        }
        let record = BlobRecord {
            size: blob.size,
            chunks: chunk_count,
            refcount,
        };
        batch.put(
            Table::BlobIndex,
            key.clone(),
            seal_record(crypto, &blob_aad(&key), &record)?,
        );
        Ok(())
    }

    fn blob_record(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: &BlobId,
    ) -> Result<BlobRecord> {
        let key = keys::blob(account, id);
        let sealed = self
            .inner
            .engine
            .get(Table::BlobIndex, &key)?
            .ok_or_else(|| Error::corrupt("a message whose body is gone"))?;
        open_record(crypto, &blob_aad(&key), &sealed)
    }

    fn pending_blob<'a>(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: &BlobId,
        changes: &'a mut BlobChanges,
    ) -> Result<&'a mut Option<BlobRecord>> {
        if !changes.records.contains_key(id) {
            let record = self.blob_record(crypto, account, id)?;
            changes.records.insert(*id, Some(record));
        }
        changes
            .records
            .get_mut(id)
            .ok_or_else(|| Error::corrupt("blob bookkeeping"))
    }

    pub(crate) fn retain_blob(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: &BlobId,
        changes: &mut BlobChanges,
    ) -> Result<()> {
        let entry = self.pending_blob(crypto, account, id, changes)?;
        let record = entry
            .as_mut()
            .ok_or_else(|| Error::corrupt("a copy of a freed body"))?;
        record.refcount += 1;
        Ok(())
    }

    pub(crate) fn release_blob(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: &BlobId,
        changes: &mut BlobChanges,
    ) -> Result<()> {
        let entry = self.pending_blob(crypto, account, id, changes)?;
        let Some(record) = entry.as_mut() else {
            return Err(Error::corrupt("a body released twice"));
        };
        record.refcount = record.refcount.saturating_sub(1);
        if record.refcount == 0 {
            *entry = None;
        }
        Ok(())
    }

    fn message_record(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<MessageRecord> {
        let key = keys::message(account, mailbox, uid);
        let sealed = self
            .inner
            .engine
            .get(Table::Messages, &key)?
            .ok_or(Error::MessageNotFound { uid })?;
        open_record(crypto, &message_aad(&key), &sealed)
    }

    pub(crate) fn message_records(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<Vec<(u32, MessageRecord)>> {
        let prefix = keys::mailbox(account, mailbox);
        let mut out = Vec::new();
        self.inner.engine.scan(
            Table::Messages,
            &prefix,
            &keys::prefix_end(&prefix),
            &mut |key, value| {
                let uid = keys::read_u32(key, 12).ok_or_else(|| Error::corrupt("a message key"))?;
                out.push((uid, open_record(crypto, &message_aad(key), value)?));
                Ok(Scan::Continue)
            },
        )?;
        Ok(out)
    }
}

/// Gives `record` the mailbox's next UID and MODSEQ and stages it.
fn stage_new_message(
    crypto: &AccountCrypto,
    account: AccountId,
    mailbox: MailboxId,
    mailbox_record: &mut MailboxRecord,
    mut record: MessageRecord,
    batch: &mut Batch,
) -> Result<MessageMeta> {
    let uid = mailbox_record.uid_next;
    mailbox_record.uid_next = uid.checked_add(1).ok_or(Error::LimitExceeded {
        what: "UIDs in a mailbox",
        actual: u64::from(u32::MAX),
        max: u64::from(u32::MAX),
    })?;
    mailbox_record.highest_modseq += 1;
    record.modseq = mailbox_record.highest_modseq;
    mailbox_record.messages += 1;
    mailbox_record.bytes += record.size;
    if !record.flags.has(SystemFlag::Seen) {
        mailbox_record.unseen += 1;
    }
    let key = keys::message(account, mailbox, uid);
    batch.put(
        Table::Summaries,
        key.clone(),
        crypto.metadata.seal(&summary_aad(&key), &record.summary),
    );
    batch.put(
        Table::Messages,
        key.clone(),
        seal_record(crypto, &message_aad(&key), &record)?,
    );
    batch.put(
        Table::Changes,
        keys::change(account, mailbox, record.modseq),
        change_value(CHANGE_LIVE, uid),
    );
    Ok(meta_of(uid, &record))
}

/// Stages a message made from a kept blob (a release from quarantine): its UID and MODSEQ.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_release(
    crypto: &AccountCrypto,
    account: AccountId,
    mailbox: MailboxId,
    mailbox_record: &mut MailboxRecord,
    blob: BlobId,
    size: u64,
    internal_date: InternalDate,
    flags: Flags,
    summary: Vec<u8>,
    batch: &mut Batch,
) -> Result<(u32, u64)> {
    let record = MessageRecord {
        blob,
        size,
        internal_date,
        flags,
        modseq: 0,
        summary,
    };
    let meta = stage_new_message(crypto, account, mailbox, mailbox_record, record, batch)?;
    Ok((meta.uid, meta.modseq))
}

/// Stages the removal of one message and its expunge tombstone; returns the new MODSEQ.
pub(crate) fn stage_expunge(
    account: AccountId,
    mailbox: MailboxId,
    mailbox_record: &mut MailboxRecord,
    uid: u32,
    record: &MessageRecord,
    batch: &mut Batch,
) -> u64 {
    batch.delete(Table::Messages, keys::message(account, mailbox, uid));
    batch.delete(Table::Summaries, keys::message(account, mailbox, uid));
    batch.delete(
        Table::Changes,
        keys::change(account, mailbox, record.modseq),
    );
    mailbox_record.highest_modseq += 1;
    let modseq = mailbox_record.highest_modseq;
    batch.put(
        Table::Changes,
        keys::change(account, mailbox, modseq),
        change_value(CHANGE_EXPUNGED, uid),
    );
    mailbox_record.messages = mailbox_record.messages.saturating_sub(1);
    mailbox_record.bytes = mailbox_record.bytes.saturating_sub(record.size);
    if !record.flags.has(SystemFlag::Seen) {
        mailbox_record.unseen = mailbox_record.unseen.saturating_sub(1);
    }
    modseq
}

fn meta_of(uid: u32, record: &MessageRecord) -> MessageMeta {
    MessageMeta {
        uid,
        modseq: record.modseq,
        flags: record.flags.clone(),
        internal_date: record.internal_date,
        size: record.size,
    }
}

/// Compresses (when it helps), then seals. Never the other way round: ciphertext does not
/// compress, and compressing after encryption would leak through the sizes anyway.
fn seal_chunk(cipher: &BlobCipher, index: u32, key: &[u8], plain: &[u8]) -> Vec<u8> {
    thread_local! {
        // One compression context per thread, not one per chunk: making a context costs more
        // than compressing a small message with it.
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
    }
    let mut framed = Vec::with_capacity(plain.len() + 1);
    let compressed = COMPRESSOR.with(|cell| match cell.borrow_mut().as_mut() {
        Some(compressor) => compressor.compress(plain),
        None => zstd::bulk::compress(plain, ZSTD_LEVEL),
    });
    match compressed {
        Ok(compressed) if compressed.len() < plain.len() => {
            framed.push(CHUNK_ZSTD);
            framed.extend_from_slice(&compressed);
        }
        _ => {
            framed.push(CHUNK_RAW);
            framed.extend_from_slice(plain);
        }
    }
    cipher.seal(index, &chunk_aad(key), framed)
}

/// Opens a chunk (in place) and appends its plaintext to `out`.
fn open_chunk(
    cipher: &BlobCipher,
    index: u32,
    key: &[u8],
    sealed: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    open_sealed(cipher, index, key, sealed, out, CHUNK_BYTES)
}

/// Opens a sealed, maybe compressed value of at most `capacity` bytes and appends it to `out`.
fn open_sealed(
    cipher: &BlobCipher,
    index: u32,
    key: &[u8],
    sealed: &mut [u8],
    out: &mut Vec<u8>,
    capacity: usize,
) -> Result<()> {
    let framed = cipher.open(index, &chunk_aad(key), sealed)?;
    match framed.split_first() {
        Some((&CHUNK_RAW, body)) => out.extend_from_slice(body),
        Some((&CHUNK_ZSTD, body)) => {
            // The frame says how large it is; believe it only up to the bound.
            let size = zstd::zstd_safe::get_frame_content_size(body)
                .ok()
                .flatten()
                .and_then(|size| usize::try_from(size).ok())
                .filter(|size| *size <= capacity)
                .ok_or_else(|| Error::corrupt("a compressed value of unknown or excessive size"))?;
            let start = out.len();
            out.resize(start + size, 0);
            let written = zstd::bulk::decompress_to_buffer(body, &mut out[start..])
                .map_err(|_| Error::corrupt("a body chunk does not decompress"))?;
            out.truncate(start + written);
        }
        _ => return Err(Error::corrupt("a body chunk of unknown framing")),
    }
    Ok(())
}
