//! Quarantine: inbound messages the spam filter held, kept by the server in no folder the
//! user sees, each with its verdict, until its owner or an admin releases it (into INBOX and
//! BACKUP, byte for byte) or deletes it, or it expires. A held account's quarantine is not
//! deleted or expired. Everything audited.

use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys::{self, BlobId};
use crate::mailbox::{open_record, seal_record};
use crate::notify::MailboxEvent;
use crate::store::{AccountCrypto, Actor, Store};
use crate::types::{AccountId, Flags, Held, InternalDate, NewMessage, SpecialUse};

/// Messages one account's quarantine holds at most; past it, the next is delivered to Junk.
pub const QUARANTINE_PER_ACCOUNT_MAX: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct QuarantineRecord {
    blob: BlobId,
    size: u64,
    internal_date: InternalDate,
    held_ms: i64,
    expires_ms: i64,
    verdict: String,
    sender: String,
    subject: String,
    summary: Vec<u8>,
}

/// A held message as listed (no content but its sender, subject and the verdict).
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub id: [u8; 16],
    pub account: AccountId,
    pub size: u64,
    pub held_ms: i64,
    pub expires_ms: i64,
    pub verdict: String,
    pub sender: String,
    pub subject: String,
}

fn key(account: AccountId, id: &[u8; 16]) -> Vec<u8> {
    let mut key = keys::account(account);
    key.extend_from_slice(id);
    key
}

fn aad(key: &[u8]) -> Vec<u8> {
    [b"quarantine/".as_slice(), key].concat()
}

/// The id as hex, as lists and commands show it.
pub fn quarantine_id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// An id from its hex.
pub fn quarantine_id_parse(text: &str) -> Option<[u8; 16]> {
    let text = text.trim();
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

impl Store {
    fn quarantine_records(&self, account: AccountId) -> Result<Vec<([u8; 16], QuarantineRecord)>> {
        let crypto = self.account_crypto(account)?;
        let prefix = keys::account(account);
        let mut out = Vec::new();
        self.inner.engine.scan(
            Table::Quarantine,
            &prefix,
            &keys::prefix_end(&prefix),
            &mut |k, v| {
                let id: [u8; 16] = k
                    .get(8..24)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Error::corrupt("a quarantine key"))?;
                out.push((id, open_record(&crypto, &aad(k), v)?));
                Ok(Scan::Continue)
            },
        )?;
        Ok(out)
    }

    /// Holds `message` for `account` with the filter's verdict (`held`), alone: refused
    /// when the account's quarantine is full. Returns its id. Deliveries hold messages with
    /// `Placement::Quarantine` instead, in the same write as the other recipients' copies.
    pub fn quarantine(
        &self,
        account: AccountId,
        message: &NewMessage<'_>,
        held: Held,
    ) -> Result<[u8; 16]> {
        let count = self.quarantined_count(account)?;
        if count >= QUARANTINE_PER_ACCOUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "quarantined messages",
                actual: count as u64,
                max: QUARANTINE_PER_ACCOUNT_MAX as u64,
            });
        }
        let id: [u8; 16] = rand::random();
        let target = crate::message::Resolved {
            account,
            mailboxes: Vec::new(),
            held: Some((id, held)),
            quota: crate::message::QuotaRule::Exempt,
            outbound: None,
        };
        self.deliver_resolved(vec![target], message, &|_| Vec::new())?;
        Ok(id)
    }

    /// How many messages the account's quarantine holds.
    pub(crate) fn quarantined_count(&self, account: AccountId) -> Result<usize> {
        let prefix = keys::account(account);
        let mut count = 0usize;
        self.inner.engine.scan(
            Table::Quarantine,
            &prefix,
            &keys::prefix_end(&prefix),
            &mut |_, _| {
                count += 1;
                Ok(Scan::Continue)
            },
        )?;
        Ok(count)
    }

    /// The account's held messages, oldest first.
    pub fn quarantined(&self, account: AccountId) -> Result<Vec<Quarantined>> {
        let mut list: Vec<Quarantined> = self
            .quarantine_records(account)?
            .into_iter()
            .map(|(id, r)| Quarantined {
                id,
                account,
                size: r.size,
                held_ms: r.held_ms,
                expires_ms: r.expires_ms,
                verdict: r.verdict,
                sender: r.sender,
                subject: r.subject,
            })
            .collect();
        list.sort_by_key(|q| q.held_ms);
        Ok(list)
    }

    fn quarantine_record(&self, account: AccountId, id: &[u8; 16]) -> Result<QuarantineRecord> {
        let crypto = self.account_crypto(account)?;
        let k = key(account, id);
        let sealed = self
            .inner
            .engine
            .get(Table::Quarantine, &k)?
            .ok_or(Error::InvalidInput {
                what: "no quarantined message with that id",
            })?;
        open_record(&crypto, &aad(&k), &sealed)
    }

    /// A held message's bytes (audited by the caller, who shows it).
    pub fn read_quarantined(&self, account: AccountId, id: &[u8; 16]) -> Result<Vec<u8>> {
        let record = self.quarantine_record(account, id)?;
        let crypto = self.account_crypto(account)?;
        self.read_blob(&crypto, account, &record.blob)
    }

    /// Releases a held message into the account's INBOX and BACKUP, byte for byte, in one
    /// atomic write with its audit record. An account at or over its quota refuses it
    /// (`Error::OverQuota`), as it refuses new mail.
    pub fn release_quarantined(
        &self,
        account: AccountId,
        id: &[u8; 16],
        actor: &Actor,
    ) -> Result<()> {
        let record = self.quarantine_record(account, id)?;
        let crypto = self.account_crypto(account)?;
        let inbox = self
            .mailbox_by_name(account, "INBOX")?
            .ok_or(Error::MailboxNotFound)?
            .id;
        let backup = self
            .mailbox_by_special_use(account, SpecialUse::Backup)?
            .ok_or(Error::MailboxNotFound)?
            .id;
        let _locks = self
            .inner
            .mailbox_locks
            .lock_many(account, &[inbox.0, backup.0]);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        // Mail from others, as when it arrived: an account at or over its quota takes it not.
        // Checked under the account's blob lock, as COPY is, so two releases cannot both pass.
        self.quota_allows(account, crate::message::QuotaRule::Room, record.size)?;
        let mut batch = Batch::default();
        let mut blobs = crate::message::BlobChanges::default();
        let mut published = Vec::new();
        for mailbox in [inbox, backup] {
            let mut mailbox_record = self.mailbox_record(account, mailbox)?;
            let meta = crate::message::stage_release(
                &crypto,
                account,
                mailbox,
                &mut mailbox_record,
                record.blob,
                record.size,
                record.internal_date,
                Flags::new(),
                record.summary.clone(),
                &mut batch,
            )?;
            self.retain_blob(&crypto, account, &record.blob, &mut blobs)?;
            self.stage_mailbox(&crypto, account, mailbox, &mailbox_record, &mut batch)?;
            published.push((mailbox, meta));
        }
        self.release_blob(&crypto, account, &record.blob, &mut blobs)?;
        blobs.stage(&crypto, account, &mut batch)?;
        batch.delete(Table::Quarantine, key(account, id));
        let event = AuditEvent::new(
            actor,
            "quarantine.release",
            format!("account:{} quarantine:{}", account.0, quarantine_id_hex(id)),
        )
        .detail(format!("{}; into INBOX and BACKUP", record.verdict));
        self.commit_audited(batch, vec![event])?;
        for (mailbox, (uid, modseq)) in published {
            self.inner.notifier.publish(
                account,
                mailbox,
                &[MailboxEvent::Appended { uid, modseq }],
            );
        }
        Ok(())
    }

    /// Deletes a held message (refused while the account is under a legal hold).
    pub fn delete_quarantined(
        &self,
        account: AccountId,
        id: &[u8; 16],
        actor: &Actor,
    ) -> Result<()> {
        if self.is_held(account)? {
            return Err(Error::Kept {
                reason: "the account is under a legal hold".into(),
            });
        }
        let record = self.quarantine_record(account, id)?;
        let crypto = self.account_crypto(account)?;
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let mut batch = Batch::default();
        let mut blobs = crate::message::BlobChanges::default();
        self.release_blob(&crypto, account, &record.blob, &mut blobs)?;
        blobs.stage(&crypto, account, &mut batch)?;
        batch.delete(Table::Quarantine, key(account, id));
        let event = AuditEvent::new(
            actor,
            "quarantine.delete",
            format!("account:{} quarantine:{}", account.0, quarantine_id_hex(id)),
        )
        .detail(record.verdict);
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Deletes every held message past its expiry (not of held accounts); returns how many.
    pub fn expire_quarantine(&self, now_ms: i64, actor: &Actor) -> Result<usize> {
        let mut gone = 0;
        for account in self.list_accounts()? {
            if self.is_held(account.id)? {
                continue;
            }
            for (id, record) in self.quarantine_records(account.id)? {
                if record.expires_ms <= now_ms {
                    self.delete_quarantined(account.id, &id, actor)?;
                    gone += 1;
                }
            }
        }
        Ok(gone)
    }
}

/// Stages a held message's record (its blob is staged by the caller, this hold one of its
/// references) and returns the audit record of the hold.
pub(crate) fn stage_hold(
    crypto: &AccountCrypto,
    account: AccountId,
    id: &[u8; 16],
    blob: &crate::message::PreparedBlob,
    message: &NewMessage<'_>,
    held: &Held,
    batch: &mut Batch,
) -> Result<AuditEvent> {
    let k = key(account, id);
    let record = QuarantineRecord {
        blob: blob.id,
        size: blob.size,
        internal_date: message.internal_date,
        held_ms: crate::now_ms(),
        expires_ms: held.expires_ms,
        verdict: held.verdict.clone(),
        sender: held.sender.clone(),
        subject: held.subject.clone(),
        summary: message.summary.to_vec(),
    };
    batch.put(
        Table::Quarantine,
        k.clone(),
        seal_record(crypto, &aad(&k), &record)?,
    );
    Ok(AuditEvent::new(
        &held.actor,
        "quarantine.hold",
        format!("account:{} quarantine:{}", account.0, quarantine_id_hex(id)),
    )
    .detail(format!("{}; {} bytes", held.verdict, record.size)))
}
