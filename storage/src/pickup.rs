//! Pickup records: a message for an outside recipient whose server offers no verified TLS
//! stays here, and the recipient gets a link with an unguessable token. The record is found
//! by a keyed hash of the token (the token itself is stored nowhere; the hash is the pickup's
//! id in the portal's addresses), sealed under the sending account's keys, and holds a
//! reference to the message's blob, so the message stays readable for the portal until the
//! record expires or the sender revokes it.
//!
//! An ended pickup (expired or revoked) keeps its record without the body for
//! `PICKUP_TOMBSTONE_MS`, so that its link can say what happened and offer to ask the sender
//! for a new one. An index by a keyed hash of the recipient's address lets the portal show a
//! recipient every message waiting for them.

use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys::{self, BlobId};
use crate::mailbox::{open_record, seal_record};
use crate::queue::{QueueId, QUEUE_LOCK_SLOT};
use crate::store::{AccountCrypto, Store};
use crate::types::AccountId;

/// Shortest pickup token accepted, in bytes of text (the caller makes 256-bit tokens).
pub const PICKUP_TOKEN_BYTES_MIN: usize = 32;
/// How long an ended pickup's link still says "expired" or "withdrawn", in ms (one year).
pub const PICKUP_TOMBSTONE_MS: i64 = 365 * 24 * 3600 * 1000;
/// Replies one pickup keeps for the recipient to see.
pub const PORTAL_REPLIES_MAX: usize = 50;
/// Longest reply text kept for the recipient to see, in bytes.
pub const PORTAL_REPLY_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Replies the portal takes for one pickup in a day (then it says when to try again).
pub const PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX: usize = 10;
/// Bytes of replies (attachments included) one pickup takes over its life: the replies land
/// in the sender's INBOX and BACKUP, which its owner cannot empty.
pub const PORTAL_REPLY_BYTES_PER_PICKUP_MAX: u64 = 100 * 1024 * 1024;
/// Pickups the portal lists for one recipient.
pub const PICKUPS_PER_RECIPIENT_MAX: usize = 500;

/// A pickup's id: the keyed hash of its token. Safe to show in the portal's addresses; it
/// does not open the pickup without the recipient's proof of address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PickupId(pub [u8; 32]);

impl std::fmt::Display for PickupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PickupId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = Error::InvalidInput { what: "pickup id" };
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad);
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::InvalidInput { what: "pickup id" })?;
        }
        Ok(PickupId(id))
    }
}

/// Why a pickup no longer opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PickupEnd {
    Expired {
        at_ms: i64,
    },
    /// The sender withdrew it.
    Revoked {
        at_ms: i64,
    },
}

/// A reply the recipient sent from the portal, as the portal shows it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalReply {
    pub at_ms: i64,
    pub text: String,
    pub attachments: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct PickupRecord {
    /// `None` once ended: the body was released.
    blob: Option<BlobId>,
    size: u64,
    recipient: String,
    sender: String,
    queue: [u8; 16],
    created_ms: i64,
    expires_ms: i64,
    opened_ms: Option<i64>,
    ended: Option<PickupEnd>,
    renewal_asked_ms: Option<i64>,
    replies: Vec<PortalReply>,
}

/// Where a pickup stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickupState {
    Live,
    Expired,
    Revoked,
}

/// What the portal reads of a pickup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pickup {
    pub id: PickupId,
    pub account: AccountId,
    pub recipient: String,
    pub sender: String,
    pub size: u64,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub queue: QueueId,
    pub opened_ms: Option<i64>,
    pub state: PickupState,
    pub renewal_asked_ms: Option<i64>,
    pub replies: Vec<PortalReply>,
}

/// Where a pickup's count of reply bytes is kept (a number under a random id: nothing
/// identifying).
fn reply_bytes_key(id: &PickupId) -> Vec<u8> {
    [b"pickup_reply_bytes/".as_slice(), &id.0].concat()
}

fn pickup_aad(key: &[u8]) -> Vec<u8> {
    [b"pickup/".as_slice(), key].concat()
}

impl PickupRecord {
    fn state(&self, now_ms: i64) -> PickupState {
        match self.ended {
            Some(PickupEnd::Revoked { .. }) => PickupState::Revoked,
            Some(PickupEnd::Expired { .. }) => PickupState::Expired,
            None if self.expires_ms < now_ms || self.blob.is_none() => PickupState::Expired,
            None => PickupState::Live,
        }
    }

    fn view(self, id: PickupId, account: AccountId) -> Pickup {
        let state = self.state(crate::now_ms());
        Pickup {
            id,
            account,
            recipient: self.recipient,
            sender: self.sender,
            size: self.size,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            queue: QueueId(self.queue),
            opened_ms: self.opened_ms,
            state,
            renewal_asked_ms: self.renewal_asked_ms,
            replies: self.replies,
        }
    }
}

impl Store {
    fn pickup_key(&self, token: &str) -> [u8; 32] {
        crypto::keyed_hash(&self.inner.store_keys.index, b"pickup", token.as_bytes())
    }

    fn recipient_prefix(&self, recipient: &str) -> [u8; 32] {
        crypto::keyed_hash(
            &self.inner.store_keys.index,
            b"pickup-recipient",
            recipient.trim().to_lowercase().as_bytes(),
        )
    }

    /// The id of the pickup a token opens (whether or not there is one).
    pub fn pickup_id(&self, token: &str) -> PickupId {
        PickupId(self.pickup_key(token))
    }

    /// Keeps the message of queue entry `queue` for `recipient` behind `token`, durably and
    /// audited. The token is the caller's (it goes into the notice the caller sends); only
    /// its keyed hash is kept.
    pub fn create_pickup(
        &self,
        account: AccountId,
        queue: QueueId,
        recipient: &str,
        token: &str,
        expires_ms: i64,
    ) -> Result<PickupId> {
        if token.len() < PICKUP_TOKEN_BYTES_MIN {
            return Err(Error::InvalidInput {
                what: "pickup token too short",
            });
        }
        let crypto = self.account_crypto(account)?;
        let entry = self
            .queued()?
            .into_iter()
            .find(|e| e.account == account && e.id == queue)
            .ok_or(Error::InvalidInput {
                what: "no such queue entry",
            })?;
        let _queue = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let blob = self.queue_blob(account, queue)?;
        let key = self.pickup_key(token);
        let id = PickupId(key);
        let record = PickupRecord {
            blob: Some(blob),
            size: entry.size,
            recipient: recipient.to_string(),
            sender: entry.envelope.from.clone(),
            queue: queue.0,
            created_ms: crate::now_ms(),
            expires_ms,
            opened_ms: None,
            ended: None,
            renewal_asked_ms: None,
            replies: Vec::new(),
        };
        let mut batch = Batch::default();
        self.stage_pickup(&crypto, account, &key, &record, &mut batch)?;
        let index = [self.recipient_prefix(recipient).as_slice(), &key].concat();
        batch.put(
            Table::PickupRecipients,
            index,
            account.0.to_be_bytes().to_vec(),
        );
        let mut blobs = crate::message::BlobChanges::default();
        self.retain_blob(&crypto, account, &blob, &mut blobs)?;
        blobs.stage(&crypto, account, &mut batch)?;
        self.stage_delivery_change(&crypto, account, queue, &mut batch, |record| {
            if let Some(line) = record.line_mut(recipient) {
                line.pickup = Some(id);
            }
        })?;
        let event = crate::AuditEvent::new(
            &crate::Actor::system(),
            "pickup.create",
            format!("queue {queue}"),
        )
        .detail(format!(
            "for {recipient}; pickup {id}; expires {expires_ms}"
        ));
        self.commit_audited(batch, vec![event])?;
        Ok(id)
    }

    fn stage_pickup(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        key: &[u8; 32],
        record: &PickupRecord,
        batch: &mut Batch,
    ) -> Result<()> {
        let mut value = account.0.to_be_bytes().to_vec();
        value.extend_from_slice(&seal_record(crypto, &pickup_aad(key), record)?);
        batch.put(Table::Pickups, key.to_vec(), value);
        Ok(())
    }

    /// The record behind a pickup key and its account, in whatever state.
    fn pickup_record(
        &self,
        key: &[u8; 32],
    ) -> Result<Option<(AccountId, std::sync::Arc<AccountCrypto>, PickupRecord)>> {
        let Some(value) = self.inner.engine.get(Table::Pickups, key)? else {
            return Ok(None);
        };
        let account =
            AccountId(keys::read_u64(&value, 0).ok_or_else(|| Error::corrupt("a pickup record"))?);
        let Ok(crypto) = self.account_crypto(account) else {
            // The sending account was deleted: its pickups went with its keys.
            return Ok(None);
        };
        let record: PickupRecord = open_record(&crypto, &pickup_aad(key), &value[8..])?;
        Ok(Some((account, crypto, record)))
    }

    /// The pickup behind `token`, in whatever state (live, expired, revoked), if known.
    pub fn pickup(&self, token: &str) -> Result<Option<Pickup>> {
        self.pickup_by_id(self.pickup_id(token))
    }

    /// The pickup with this id, in whatever state, if known.
    pub fn pickup_by_id(&self, id: PickupId) -> Result<Option<Pickup>> {
        Ok(self
            .pickup_record(&id.0)?
            .map(|(account, _, record)| record.view(id, account)))
    }

    /// Every pickup for `recipient` (live or ended), newest first, at most
    /// `PICKUPS_PER_RECIPIENT_MAX`.
    pub fn pickups_for(&self, recipient: &str) -> Result<Vec<Pickup>> {
        let prefix = self.recipient_prefix(recipient);
        let mut ids = Vec::new();
        self.inner.engine.scan(
            Table::PickupRecipients,
            &prefix,
            &keys::prefix_end(&prefix),
            &mut |key, _| {
                if let Some(id) = key.get(32..64).and_then(|k| <[u8; 32]>::try_from(k).ok()) {
                    ids.push(PickupId(id));
                }
                Ok(if ids.len() >= PICKUPS_PER_RECIPIENT_MAX {
                    Scan::Stop
                } else {
                    Scan::Continue
                })
            },
        )?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(pickup) = self.pickup_by_id(id)? {
                // A keyed-hash collision cannot list another's pickup: the address must match.
                if pickup.recipient.eq_ignore_ascii_case(recipient.trim()) {
                    out.push(pickup);
                }
            }
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.created_ms));
        Ok(out)
    }

    /// The message behind `token`, if live (`sealpost pickup show --message`).
    pub fn read_pickup(&self, token: &str) -> Result<Option<Vec<u8>>> {
        let Some((account, crypto, record)) = self.pickup_record(&self.pickup_key(token))? else {
            return Ok(None);
        };
        match (record.state(crate::now_ms()), record.blob) {
            (PickupState::Live, Some(blob)) => self.read_blob(&crypto, account, &blob).map(Some),
            _ => Ok(None),
        }
    }

    /// The message of a live pickup, for its recipient in the portal: the first read marks
    /// it opened (for the sender's delivery status), and `event` is written with that mark
    /// before any content is returned. `None` when the pickup is unknown or ended.
    pub fn read_pickup_audited(
        &self,
        id: PickupId,
        event: crate::AuditEvent,
    ) -> Result<Option<Vec<u8>>> {
        let Some((account, _, _)) = self.pickup_record(&id.0)? else {
            return Ok(None);
        };
        let crypto = self.account_crypto(account)?;
        let blob = {
            let _queue = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
            let Some((_, _, mut record)) = self.pickup_record(&id.0)? else {
                return Ok(None);
            };
            let now = crate::now_ms();
            let (PickupState::Live, Some(blob)) = (record.state(now), record.blob) else {
                return Ok(None);
            };
            let mut batch = Batch::default();
            if record.opened_ms.is_none() {
                record.opened_ms = Some(now);
                self.stage_pickup(&crypto, account, &id.0, &record, &mut batch)?;
                let recipient = record.recipient.clone();
                self.stage_delivery_change(
                    &crypto,
                    account,
                    QueueId(record.queue),
                    &mut batch,
                    |delivery| {
                        if let Some(line) = delivery.line_mut(&recipient) {
                            line.opened_ms.get_or_insert(now);
                        }
                    },
                )?;
            }
            self.commit_audited(batch, vec![event])?;
            blob
        };
        self.read_blob(&crypto, account, &blob).map(Some)
    }

    /// The sender withdraws the pickup of `recipient` for queue entry `queue`: the body is
    /// released, the link says so from now on, and the delivery record notes when. Audited.
    /// `false` when there is no live pickup to withdraw.
    pub fn revoke_pickup(
        &self,
        account: AccountId,
        queue: QueueId,
        recipient: &str,
        actor: &crate::Actor,
    ) -> Result<bool> {
        let crypto = self.account_crypto(account)?;
        let Some(delivery) = self.delivery(account, queue)? else {
            return Ok(false);
        };
        let Some(id) = delivery
            .lines
            .iter()
            .find(|l| l.address.eq_ignore_ascii_case(recipient))
            .and_then(|l| l.pickup)
        else {
            return Ok(false);
        };
        let _queue = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let Some((owner, _, mut record)) = self.pickup_record(&id.0)? else {
            return Ok(false);
        };
        if owner != account || record.ended.is_some() {
            return Ok(false);
        }
        let now = crate::now_ms();
        let mut batch = Batch::default();
        if let Some(blob) = record.blob.take() {
            let mut blobs = crate::message::BlobChanges::default();
            self.release_blob(&crypto, account, &blob, &mut blobs)?;
            blobs.stage(&crypto, account, &mut batch)?;
        }
        record.ended = Some(PickupEnd::Revoked { at_ms: now });
        self.stage_pickup(&crypto, account, &id.0, &record, &mut batch)?;
        self.stage_delivery_change(&crypto, account, queue, &mut batch, |delivery| {
            if let Some(line) = delivery.line_mut(recipient) {
                line.revoked_ms = Some(now);
            }
        })?;
        let event = crate::AuditEvent::new(actor, "pickup.revoke", format!("queue {queue}"))
            .detail(format!("for {}; pickup {id}", record.recipient));
        self.commit_audited(batch, vec![event])?;
        Ok(true)
    }

    /// Keeps a reply the recipient sent from the portal, to show it to them again (the reply
    /// itself is delivered to the sender by the caller). Audited with `event`.
    /// Bytes of replies the pickup has taken so far (`PORTAL_REPLY_BYTES_PER_PICKUP_MAX`).
    pub fn portal_reply_bytes(&self, id: PickupId) -> Result<u64> {
        Ok(self
            .inner
            .engine
            .get(Table::Meta, &reply_bytes_key(&id))?
            .and_then(|v| keys::read_u64(&v, 0))
            .unwrap_or(0))
    }

    /// Keeps a reply the recipient sent (`bytes` long, as delivered) for the portal to show,
    /// and counts its bytes against `PORTAL_REPLY_BYTES_PER_PICKUP_MAX`.
    pub fn record_portal_reply(
        &self,
        id: PickupId,
        reply: PortalReply,
        bytes: u64,
        event: crate::AuditEvent,
    ) -> Result<()> {
        let Some((account, crypto, _)) = self.pickup_record(&id.0)? else {
            return Err(Error::InvalidInput {
                what: "no such pickup",
            });
        };
        let _queue = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let Some((_, _, mut record)) = self.pickup_record(&id.0)? else {
            return Err(Error::InvalidInput {
                what: "no such pickup",
            });
        };
        if record.replies.len() >= PORTAL_REPLIES_MAX {
            record.replies.remove(0);
        }
        let mut reply = reply;
        if reply.text.len() > PORTAL_REPLY_TEXT_BYTES_MAX {
            let mut end = PORTAL_REPLY_TEXT_BYTES_MAX;
            while !reply.text.is_char_boundary(end) {
                end -= 1;
            }
            reply.text.truncate(end);
        }
        record.replies.push(reply);
        let mut batch = Batch::default();
        self.stage_pickup(&crypto, account, &id.0, &record, &mut batch)?;
        let total = self.portal_reply_bytes(id)?.saturating_add(bytes);
        batch.put(
            Table::Meta,
            reply_bytes_key(&id),
            total.to_be_bytes().to_vec(),
        );
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Notes that the recipient of an ended pickup asked the sender for a new link. `false`
    /// when it was asked before (once per pickup) or the pickup is live or unknown.
    pub fn ask_pickup_renewal(&self, id: PickupId, event: crate::AuditEvent) -> Result<bool> {
        let Some((account, crypto, _)) = self.pickup_record(&id.0)? else {
            return Ok(false);
        };
        let _queue = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
        let Some((_, _, mut record)) = self.pickup_record(&id.0)? else {
            return Ok(false);
        };
        if record.state(crate::now_ms()) == PickupState::Live || record.renewal_asked_ms.is_some() {
            return Ok(false);
        }
        record.renewal_asked_ms = Some(crate::now_ms());
        let mut batch = Batch::default();
        self.stage_pickup(&crypto, account, &id.0, &record, &mut batch)?;
        self.commit_audited(batch, vec![event])?;
        Ok(true)
    }

    /// Ends pickups whose links expired before `now_ms`, releasing their bodies, and forgets
    /// ended ones older than `PICKUP_TOMBSTONE_MS`; audited. Returns how many expired.
    pub fn expire_pickups(&self, now_ms: i64) -> Result<usize> {
        let mut rows = Vec::new();
        self.inner
            .engine
            .scan(Table::Pickups, &[], &[0xFF; 33], &mut |key, value| {
                rows.push((key.to_vec(), value.to_vec()));
                Ok(Scan::Continue)
            })?;
        let mut expired = 0;
        for (key, value) in rows {
            let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
                continue;
            };
            let Some(account) = keys::read_u64(&value, 0).map(AccountId) else {
                continue;
            };
            let Ok(crypto) = self.account_crypto(account) else {
                continue;
            };
            let _queue = self.inner.mailbox_locks.lock(account, QUEUE_LOCK_SLOT);
            let _blobs = self.inner.blob_locks.lock(account, 0);
            // Read again under the lock: another expiry or a revocation may have come first.
            let Some((_, _, mut record)) = self.pickup_record(&key)? else {
                continue;
            };
            let id = PickupId(key);
            let mut batch = Batch::default();
            match record.ended {
                Some(PickupEnd::Expired { at_ms } | PickupEnd::Revoked { at_ms }) => {
                    if at_ms.saturating_add(PICKUP_TOMBSTONE_MS) >= now_ms {
                        continue;
                    }
                    batch.delete(Table::Pickups, key.to_vec());
                    let index =
                        [self.recipient_prefix(&record.recipient).as_slice(), &key].concat();
                    batch.delete(Table::PickupRecipients, index);
                    self.inner
                        .engine
                        .write(batch, crate::engine::Durability::Synced)?;
                    continue;
                }
                None if record.expires_ms >= now_ms => continue,
                None => {}
            }
            if let Some(blob) = record.blob.take() {
                let mut blobs = crate::message::BlobChanges::default();
                self.release_blob(&crypto, account, &blob, &mut blobs)?;
                blobs.stage(&crypto, account, &mut batch)?;
            }
            record.ended = Some(PickupEnd::Expired { at_ms: now_ms });
            self.stage_pickup(&crypto, account, &key, &record, &mut batch)?;
            let event = crate::AuditEvent::new(
                &crate::Actor::system(),
                "pickup.expire",
                format!("queue {}", QueueId(record.queue)),
            )
            .detail(format!("for {}; pickup {id}", record.recipient));
            self.commit_audited(batch, vec![event])?;
            expired += 1;
        }
        Ok(expired)
    }
}

/// Longest portal password checked, in bytes (longer ones are refused unhashed).
pub const PORTAL_PASSWORD_BYTES_MAX: usize = 1024;

impl Store {
    fn portal_password_key(&self, recipient: &str) -> Vec<u8> {
        let mut key = b"portal-password/".to_vec();
        key.extend_from_slice(&crypto::keyed_hash(
            &self.inner.store_keys.index,
            b"portal-password",
            recipient.trim().to_lowercase().as_bytes(),
        ));
        key
    }

    /// Sets the password an outside recipient chose in the portal for return visits
    /// (argon2id, sealed with the directory key under a keyed hash of the address); audited,
    /// the password never. The caller judges its strength.
    pub fn set_portal_password(
        &self,
        recipient: &str,
        password: &str,
        actor: &crate::Actor,
    ) -> Result<()> {
        if password.len() > PORTAL_PASSWORD_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "portal password bytes",
                actual: password.len() as u64,
                max: PORTAL_PASSWORD_BYTES_MAX as u64,
            });
        }
        let hash = crate::account::hash_password(password)?;
        let key = self.portal_password_key(recipient);
        let mut batch = Batch::default();
        batch.put(
            Table::Meta,
            key.clone(),
            self.inner.directory.seal(&key, hash.as_bytes()),
        );
        let event =
            crate::AuditEvent::new(actor, "portal.password.set", format!("for {recipient}"));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Forgets a recipient's portal password; audited.
    pub fn remove_portal_password(&self, recipient: &str, actor: &crate::Actor) -> Result<()> {
        let mut batch = Batch::default();
        batch.delete(Table::Meta, self.portal_password_key(recipient));
        let event =
            crate::AuditEvent::new(actor, "portal.password.remove", format!("for {recipient}"));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Whether the recipient chose a portal password.
    pub fn has_portal_password(&self, recipient: &str) -> Result<bool> {
        Ok(self
            .inner
            .engine
            .get(Table::Meta, &self.portal_password_key(recipient))?
            .is_some())
    }

    /// Checks a recipient's portal password: one argon2 verification (~20 ms) whatever the
    /// outcome, so a missing password takes as long as a wrong one. Run it on a blocking
    /// thread.
    pub fn check_portal_password(&self, recipient: &str, password: &str) -> Result<bool> {
        if password.len() > PORTAL_PASSWORD_BYTES_MAX {
            return Ok(false);
        }
        let key = self.portal_password_key(recipient);
        let stored = match self.inner.engine.get(Table::Meta, &key)? {
            Some(sealed) => Some(self.inner.directory.open(&key, &sealed)?),
            None => None,
        };
        let hash = stored
            .as_deref()
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or(crate::account::decoy_hash());
        let matches = crate::account::verify_password(password, hash);
        Ok(matches && stored.is_some())
    }

    /// Where the proof for `recipient` of `account`'s message `message_id` is kept: written
    /// before the message is submitted (so no notice can go out before it), found again from
    /// the pickup's own message.
    fn proof_key(&self, account: AccountId, message_id: &str, recipient: &str) -> Vec<u8> {
        let named = format!(
            "{}\n{}\n{}",
            account.0,
            message_id.trim().trim_matches(['<', '>']),
            recipient.trim().to_lowercase()
        );
        let mut key = b"pickup-proof/".to_vec();
        key.extend_from_slice(&crypto::keyed_hash(
            &self.inner.store_keys.index,
            b"pickup-proof",
            named.as_bytes(),
        ));
        key
    }

    /// Asks `recipient` of `account`'s message `message_id` to prove more than the mailed code
    /// before the portal opens it: a passphrase the sender tells them (by phone, in person) or
    /// the answer to a question the sender knows. Kept as an argon2id hash, sealed with the
    /// directory key under the queue entry and a keyed hash of the address; audited, the
    /// secret never.
    pub fn set_pickup_proof(
        &self,
        account: AccountId,
        message_id: &str,
        recipient: &str,
        kind: ProofKind,
        secret: &str,
        actor: &crate::Actor,
    ) -> Result<()> {
        if secret.len() > PORTAL_PASSWORD_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "pickup proof bytes",
                actual: secret.len() as u64,
                max: PORTAL_PASSWORD_BYTES_MAX as u64,
            });
        }
        let record = ProofRecord {
            kind,
            hash: crate::account::hash_password(&normalised_proof(secret))?,
            tries_left: PICKUP_PROOF_TRIES_MAX,
        };
        let key = self.proof_key(account, message_id, recipient);
        let plain =
            postcard::to_stdvec(&record).map_err(|e| Error::corrupt(format!("encoding: {e}")))?;
        let mut batch = Batch::default();
        batch.put(
            Table::Meta,
            key.clone(),
            self.inner.directory.seal(&key, &plain),
        );
        let event = crate::AuditEvent::new(
            actor,
            "pickup.proof.set",
            format!("message {message_id} for {recipient}"),
        )
        .detail(format!("{kind:?}"));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    fn proof_record(&self, key: &[u8]) -> Result<Option<ProofRecord>> {
        let Some(sealed) = self.inner.engine.get(Table::Meta, key)? else {
            return Ok(None);
        };
        let plain = self.inner.directory.open(key, &sealed)?;
        postcard::from_bytes(&plain)
            .map(Some)
            .map_err(|_| Error::corrupt("a pickup proof record"))
    }

    /// What the portal must ask `recipient` of `account`'s message `message_id` besides the
    /// code, if anything, and how many tries are left.
    pub fn pickup_proof(
        &self,
        account: AccountId,
        message_id: &str,
        recipient: &str,
    ) -> Result<Option<(ProofKind, u8)>> {
        Ok(self
            .proof_record(&self.proof_key(account, message_id, recipient))?
            .map(|r| (r.kind, r.tries_left)))
    }

    /// Checks an answer (one argon2 verification, on a blocking thread); a wrong one uses a
    /// try, and the last wrong one locks the proof for good (the sender must send again).
    /// `event` (the caller's, with its outcome set here) is written in the same batch.
    pub fn check_pickup_proof(
        &self,
        account: AccountId,
        message_id: &str,
        recipient: &str,
        answer: &str,
        event: crate::AuditEvent,
    ) -> Result<ProofCheck> {
        let key = self.proof_key(account, message_id, recipient);
        let _lock = self
            .inner
            .directory_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(mut record) = self.proof_record(&key)? else {
            return Ok(ProofCheck::NotAsked);
        };
        if record.tries_left == 0 {
            return Ok(ProofCheck::Locked);
        }
        let right = answer.len() <= PORTAL_PASSWORD_BYTES_MAX
            && crate::account::verify_password(&normalised_proof(answer), &record.hash);
        if right {
            self.commit_audited(Batch::default(), vec![event])?;
            return Ok(ProofCheck::Right);
        }
        record.tries_left -= 1;
        let plain =
            postcard::to_stdvec(&record).map_err(|e| Error::corrupt(format!("encoding: {e}")))?;
        let mut batch = Batch::default();
        batch.put(
            Table::Meta,
            key.clone(),
            self.inner.directory.seal(&key, &plain),
        );
        let event = event
            .outcome(crate::AuditOutcome::Denied)
            .detail(format!("{} tries left", record.tries_left));
        self.commit_audited(batch, vec![event])?;
        Ok(match record.tries_left {
            0 => ProofCheck::Locked,
            left => ProofCheck::Wrong { tries_left: left },
        })
    }
}

/// Tries a recipient has at a passphrase or an answer; then the proof is locked.
pub const PICKUP_PROOF_TRIES_MAX: u8 = 5;

/// What the sender asks a portal recipient to prove besides the mailed code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProofKind {
    /// A passphrase the sender tells the recipient apart from email.
    Passphrase,
    /// The recipient's date of birth and surname, which the sender knows.
    Question,
}

/// What a proof check said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofCheck {
    /// No proof was asked for this recipient.
    NotAsked,
    Right,
    Wrong {
        tries_left: u8,
    },
    /// Out of tries: the message opens no more.
    Locked,
}

#[derive(Serialize, Deserialize)]
struct ProofRecord {
    kind: ProofKind,
    hash: String,
    tries_left: u8,
}

/// A passphrase or answer as compared: case, surrounding and repeated white space do not
/// count (it is read out on the phone, typed by someone else).
fn normalised_proof(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Bytes of passkey records one portal address may keep (a few passkeys' WebAuthn records).
pub const PORTAL_PASSKEYS_BYTES_MAX: usize = 64 * 1024;

impl Store {
    fn portal_passkeys_key(&self, recipient: &str) -> Vec<u8> {
        let mut key = b"portal-passkeys/".to_vec();
        key.extend_from_slice(&crypto::keyed_hash(
            &self.inner.store_keys.index,
            b"portal-passkeys",
            recipient.trim().to_lowercase().as_bytes(),
        ));
        key
    }

    /// The passkeys an outside recipient registered for their address, as the web keeps them
    /// (opaque here), sealed with the directory key under a keyed hash of the address.
    pub fn portal_passkeys(&self, recipient: &str) -> Result<Option<Vec<u8>>> {
        let key = self.portal_passkeys_key(recipient);
        match self.inner.engine.get(Table::Meta, &key)? {
            Some(sealed) => Ok(Some(self.inner.directory.open(&key, &sealed)?)),
            None => Ok(None),
        }
    }

    /// Keeps the recipient's passkeys (a new one, or a sign-in's counter), with `events` in the
    /// same write.
    pub fn set_portal_passkeys(
        &self,
        recipient: &str,
        keys: &[u8],
        events: Vec<crate::AuditEvent>,
    ) -> Result<()> {
        if keys.len() > PORTAL_PASSKEYS_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "portal passkey bytes",
                actual: keys.len() as u64,
                max: PORTAL_PASSKEYS_BYTES_MAX as u64,
            });
        }
        let key = self.portal_passkeys_key(recipient);
        let mut batch = Batch::default();
        batch.put(
            Table::Meta,
            key.clone(),
            self.inner.directory.seal(&key, keys),
        );
        self.commit_audited(batch, events)?;
        Ok(())
    }

    /// Forgets the recipient's passkeys (a lost device: the sender or an admin resets them, and
    /// the portal mails codes again); audited. `false` when there were none.
    pub fn reset_portal_passkeys(&self, recipient: &str, actor: &crate::Actor) -> Result<bool> {
        let key = self.portal_passkeys_key(recipient);
        if self.inner.engine.get(Table::Meta, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.delete(Table::Meta, key);
        let event =
            crate::AuditEvent::new(actor, "portal.passkey.reset", format!("for {recipient}"));
        self.commit_audited(batch, vec![event])?;
        Ok(true)
    }
}
