//! The durable outbound queue: messages submitted for outside recipients wait here until the
//! outbound delivery takes them. An entry is written in the same atomic batch as the
//! submitter's BACKUP copy and shares its encrypted blob; its envelope (sender, recipients,
//! DSN parameters) is sealed under the submitting account's keys like every other record.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys::{self, BlobId};
use crate::mailbox::{open_record, seal_record};
use crate::store::{AccountCrypto, Store};
use crate::types::AccountId;

/// The lock stripe slot that serialises changes to an account's queue entries (mailbox ids
/// start at 1; 0 holds the account's counters).
pub(crate) const QUEUE_LOCK_SLOT: u32 = u32::MAX;

/// Recipients one queue entry may hold.
pub const QUEUE_RECIPIENTS_MAX: usize = 1_000;

/// Names one queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueId(pub [u8; 16]);

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for QueueId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return Err(Error::InvalidInput { what: "queue id" });
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::InvalidInput { what: "queue id" })?;
        }
        Ok(QueueId(id))
    }
}

/// One outside recipient with its DSN parameters (RFC 3461), kept for the delivery attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRecipient {
    pub address: String,
    /// NOTIFY values as given (`SUCCESS`, `FAILURE`, `DELAY`, `NEVER`); empty: the default.
    pub notify: Vec<String>,
    /// ORCPT as given (`rfc822;someone@example.org`).
    pub orcpt: Option<String>,
    /// Set when a rule decided at submission that this recipient gets the pickup portal
    /// whatever its server offers: the rule and why.
    #[serde(default)]
    pub portal: Option<String>,
}

/// The envelope of a submitted message for the outbound queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    /// MAIL FROM (the reverse path); empty for a null sender.
    pub from: String,
    pub recipients: Vec<OutboundRecipient>,
    /// ENVID.
    pub env_id: Option<String>,
    /// RET: `FULL` or `HDRS`.
    pub ret: Option<String>,
    /// A pickup notice, which holds no patient information: it may go over unverified TLS or
    /// in plaintext where the recipient's server offers nothing better.
    #[serde(default)]
    pub notice: bool,
}

#[derive(Serialize, Deserialize)]
struct QueueRecord {
    blob: BlobId,
    size: u64,
    envelope: Outbound,
    created_ms: i64,
    attempts: u32,
    next_attempt_ms: i64,
    /// One per recipient of `envelope`, in its order.
    states: Vec<RecipientState>,
}

/// Where one outside recipient's delivery stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not delivered yet; tried again at the entry's next attempt.
    Pending,
    /// Accepted by the recipient's server over verified TLS (`how`: server, TLS version and
    /// cipher).
    Delivered { at_ms: i64, how: String },
    /// Kept for pickup through the portal (no verified TLS, or a rule said so).
    Portal { at_ms: i64, why: String },
    /// Refused for good (5xx) or out of retries; the sender got a bounce.
    Failed { at_ms: i64, reply: String },
}

/// One recipient's status, with the last reply or error and why its protection was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub status: RecipientStatus,
    pub last_reply: Option<String>,
}

impl RecipientState {
    fn pending() -> Self {
        Self {
            status: RecipientStatus::Pending,
            last_reply: None,
        }
    }
}

/// A queue entry as `sealpost queue list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub account: AccountId,
    pub envelope: Outbound,
    pub size: u64,
    pub created_ms: i64,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub states: Vec<RecipientState>,
}

impl QueuedMessage {
    /// Whether any recipient still waits for delivery.
    pub fn pending(&self) -> bool {
        self.states
            .iter()
            .any(|s| s.status == RecipientStatus::Pending)
    }
}

fn queue_aad(key: &[u8]) -> Vec<u8> {
    [b"queue/".as_slice(), key].concat()
}

/// Stages a new queue entry for a blob being written in the same batch.
pub(crate) fn stage_queue_entry(
    crypto: &AccountCrypto,
    account: AccountId,
    blob: BlobId,
    size: u64,
    outbound: &Outbound,
    summary: &[u8],
    batch: &mut Batch,
) -> Result<QueueId> {
    if outbound.recipients.is_empty() || outbound.recipients.len() > QUEUE_RECIPIENTS_MAX {
        return Err(Error::LimitExceeded {
            what: "queue recipients",
            actual: outbound.recipients.len() as u64,
            max: QUEUE_RECIPIENTS_MAX as u64,
        });
    }
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let key = keys::queue(account, &id);
    let now = crate::now_ms();
    let record = QueueRecord {
        blob,
        size,
        envelope: outbound.clone(),
        created_ms: now,
        attempts: 0,
        next_attempt_ms: now,
        states: vec![RecipientState::pending(); outbound.recipients.len()],
    };
    batch.put(
        Table::Queue,
        key.clone(),
        seal_record(crypto, &queue_aad(&key), &record)?,
    );
    // A pickup notice is the system's message about one: the sender's record is the original's.
    if !outbound.notice {
        let recipients: Vec<String> = outbound
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        crate::delivery::stage_new_delivery(
            crypto,
            account,
            QueueId(id),
            now,
            summary,
            &recipients,
            batch,
        )?;
    }
    Ok(QueueId(id))
}

impl Store {
    /// Every queue entry, oldest account first. Entries of an account whose keys are gone
    /// cannot be there: deleting an account deletes its queue.
    pub fn queued(&self) -> Result<Vec<QueuedMessage>> {
        let mut raw = Vec::new();
        self.inner
            .engine
            .scan(Table::Queue, &[], &[0xFF; 25], &mut |key, value| {
                raw.push((key.to_vec(), value.to_vec()));
                Ok(Scan::Continue)
            })?;
        let mut out = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let (Some(account), Some(id)) = (
                keys::read_u64(&key, 0),
                key.get(8..).and_then(|id| <[u8; 16]>::try_from(id).ok()),
            ) else {
                return Err(Error::corrupt("a queue key"));
            };
            let account = AccountId(account);
            let crypto = self.account_crypto(account)?;
            let record: QueueRecord = open_record(&crypto, &queue_aad(&key), &value)?;
            out.push(QueuedMessage {
                id: QueueId(id),
                account,
                envelope: record.envelope,
                size: record.size,
                created_ms: record.created_ms,
                attempts: record.attempts,
                next_attempt_ms: record.next_attempt_ms,
                states: record.states,
            });
        }
        Ok(out)
    }

    /// The message of a queue entry.
    pub fn read_queued(&self, account: AccountId, id: QueueId) -> Result<Vec<u8>> {
        let crypto = self.account_crypto(account)?;
        let key = keys::queue(account, &id.0);
        let sealed = self
            .inner
            .engine
            .get(Table::Queue, &key)?
            .ok_or(Error::InvalidInput {
                what: "no such queue entry",
            })?;
        let record: QueueRecord = open_record(&crypto, &queue_aad(&key), &sealed)?;
        self.read_blob(&crypto, account, &record.blob)
    }

    /// The blob a queue entry holds a reference to.
    pub(crate) fn queue_blob(&self, account: AccountId, id: QueueId) -> Result<BlobId> {
        let crypto = self.account_crypto(account)?;
        Ok(self.queue_record(&crypto, account, id)?.blob)
    }

    fn queue_record(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: QueueId,
    ) -> Result<QueueRecord> {
        let key = keys::queue(account, &id.0);
        let sealed = self
            .inner
            .engine
            .get(Table::Queue, &key)?
            .ok_or(Error::InvalidInput {
                what: "no such queue entry",
            })?;
        open_record(crypto, &queue_aad(&key), &sealed)
    }

    /// Records a delivery attempt: the recipients' new states, one more attempt, the next
    /// attempt's time, and `events` in the audit log, in one durable write. An entry with no
    /// pending recipient left is removed, and its body goes with its last reference.
    pub fn queue_update(
        &self,
        account: AccountId,
        id: QueueId,
        states: Vec<RecipientState>,
        next_attempt_ms: i64,
        events: Vec<crate::AuditEvent>,
    ) -> Result<()> {
        let crypto = self.account_crypto(account)?;
        let _lock = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let mut record = self.queue_record(&crypto, account, id)?;
        if states.len() != record.states.len() {
            return Err(Error::InvalidInput {
                what: "queue states do not match the recipients",
            });
        }
        let mut batch = Batch::default();
        self.stage_delivery_change(&crypto, account, id, &mut batch, |delivery| {
            for (recipient, state) in record.envelope.recipients.iter().zip(&states) {
                if let Some(line) = delivery.line_mut(&recipient.address) {
                    line.status = state.status.clone();
                }
            }
        })?;
        record.states = states;
        record.attempts += 1;
        record.next_attempt_ms = next_attempt_ms;
        self.stage_queue_record(&crypto, account, id, record, &mut batch)?;
        self.commit_audited(batch, events)?;
        Ok(())
    }

    /// Makes an entry due now (`sealpost queue retry`).
    pub fn queue_retry(&self, account: AccountId, id: QueueId, actor: &crate::Actor) -> Result<()> {
        let crypto = self.account_crypto(account)?;
        let _lock = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let mut record = self.queue_record(&crypto, account, id)?;
        record.next_attempt_ms = crate::now_ms();
        let mut batch = Batch::default();
        self.stage_queue_record(&crypto, account, id, record, &mut batch)?;
        let event = crate::AuditEvent::new(actor, "queue.retry", format!("queue {id}"));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Deletes an entry whatever its recipients' states (`sealpost queue delete`), audited.
    pub fn queue_delete(
        &self,
        account: AccountId,
        id: QueueId,
        actor: &crate::Actor,
    ) -> Result<()> {
        let crypto = self.account_crypto(account)?;
        let _lock = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let record = self.queue_record(&crypto, account, id)?;
        let mut batch = Batch::default();
        self.stage_queue_removal(&crypto, account, id, &record, &mut batch)?;
        let event = crate::AuditEvent::new(actor, "queue.delete", format!("queue {id}"))
            .detail(format!("{} recipients", record.envelope.recipients.len()));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    fn stage_queue_record(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: QueueId,
        record: QueueRecord,
        batch: &mut Batch,
    ) -> Result<()> {
        if record
            .states
            .iter()
            .any(|s| s.status == RecipientStatus::Pending)
        {
            let key = keys::queue(account, &id.0);
            batch.put(
                Table::Queue,
                key.clone(),
                seal_record(crypto, &queue_aad(&key), &record)?,
            );
            Ok(())
        } else {
            self.stage_queue_removal(crypto, account, id, &record, batch)
        }
    }

    fn stage_queue_removal(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        id: QueueId,
        record: &QueueRecord,
        batch: &mut Batch,
    ) -> Result<()> {
        batch.delete(Table::Queue, keys::queue(account, &id.0));
        let mut blobs = crate::message::BlobChanges::default();
        self.release_blob(crypto, account, &record.blob, &mut blobs)?;
        blobs.stage(crypto, account, batch)
    }
}
