//! Pickup records: a message for an outside recipient whose server offers no verified TLS
//! stays here, and the recipient gets a link with an unguessable token. The record is found
//! by a keyed hash of the token (the token itself is stored nowhere), sealed under the
//! sending account's keys, and holds a reference to the message's blob, so the message stays
//! readable for the portal until the record expires or is removed.

use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::engine::{Batch, Table};
use crate::error::{Error, Result};
use crate::keys::{self, BlobId};
use crate::mailbox::{open_record, seal_record};
use crate::queue::QueueId;
use crate::store::Store;
use crate::types::AccountId;

/// Shortest pickup token accepted, in bytes of text (the caller makes 256-bit tokens).
pub const PICKUP_TOKEN_BYTES_MIN: usize = 32;

#[derive(Serialize, Deserialize)]
struct PickupRecord {
    blob: BlobId,
    size: u64,
    recipient: String,
    sender: String,
    queue: [u8; 16],
    created_ms: i64,
    expires_ms: i64,
}

/// What the portal reads for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pickup {
    pub account: AccountId,
    pub recipient: String,
    pub sender: String,
    pub size: u64,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub queue: QueueId,
}

fn pickup_aad(key: &[u8]) -> Vec<u8> {
    [b"pickup/".as_slice(), key].concat()
}

impl Store {
    fn pickup_key(&self, token: &str) -> [u8; 32] {
        crypto::keyed_hash(&self.inner.store_keys.index, b"pickup", token.as_bytes())
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
    ) -> Result<()> {
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
        let _blobs = self.inner.blob_locks.lock(account, 0);
        let blob = self.queue_blob(account, queue)?;
        let key = self.pickup_key(token).to_vec();
        let record = PickupRecord {
            blob,
            size: entry.size,
            recipient: recipient.to_string(),
            sender: entry.envelope.from.clone(),
            queue: queue.0,
            created_ms: crate::now_ms(),
            expires_ms,
        };
        let mut value = account.0.to_be_bytes().to_vec();
        value.extend_from_slice(&seal_record(&crypto, &pickup_aad(&key), &record)?);
        let mut batch = Batch::default();
        batch.put(Table::Pickups, key, value);
        let mut blobs = crate::message::BlobChanges::default();
        self.retain_blob(&crypto, account, &blob, &mut blobs)?;
        blobs.stage(&crypto, account, &mut batch)?;
        let event = crate::AuditEvent::new(&crate::Actor::system(), "pickup.create", format!("queue {queue}"))
            .detail(format!("for {recipient}; expires {expires_ms}"));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// The record behind `token` and its account, unless unknown or expired.
    fn live_pickup(&self, token: &str) -> Result<Option<(AccountId, PickupRecord)>> {
        let key = self.pickup_key(token);
        let Some(value) = self.inner.engine.get(Table::Pickups, &key)? else {
            return Ok(None);
        };
        let account = AccountId(keys::read_u64(&value, 0).ok_or_else(|| Error::corrupt("a pickup record"))?);
        let crypto = self.account_crypto(account)?;
        let record: PickupRecord = open_record(&crypto, &pickup_aad(&key), &value[8..])?;
        Ok((record.expires_ms >= crate::now_ms()).then_some((account, record)))
    }

    /// The pickup behind `token`, if there is one and it has not expired.
    pub fn pickup(&self, token: &str) -> Result<Option<Pickup>> {
        Ok(self.live_pickup(token)?.map(|(account, record)| Pickup {
            account,
            recipient: record.recipient,
            sender: record.sender,
            size: record.size,
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            queue: QueueId(record.queue),
        }))
    }

    /// The message behind `token`, for the portal.
    pub fn read_pickup(&self, token: &str) -> Result<Option<Vec<u8>>> {
        let Some((account, record)) = self.live_pickup(token)? else {
            return Ok(None);
        };
        let crypto = self.account_crypto(account)?;
        self.read_blob(&crypto, account, &record.blob).map(Some)
    }
}

impl Store {
    /// Removes pickups whose links expired before `now_ms`, releasing their bodies; audited.
    /// Returns how many went.
    pub fn expire_pickups(&self, now_ms: i64) -> Result<usize> {
        let mut rows = Vec::new();
        self.inner
            .engine
            .scan(Table::Pickups, &[], &[0xFF; 33], &mut |key, value| {
                rows.push((key.to_vec(), value.to_vec()));
                Ok(crate::engine::Scan::Continue)
            })?;
        let mut removed = 0;
        for (key, value) in rows {
            let Some(account) = keys::read_u64(&value, 0).map(AccountId) else {
                continue;
            };
            let Ok(crypto) = self.account_crypto(account) else {
                continue;
            };
            let _blobs = self.inner.blob_locks.lock(account, 0);
            // Read again under the lock: another expiry may have taken it.
            let Some(value) = self.inner.engine.get(Table::Pickups, &key)? else {
                continue;
            };
            let record: PickupRecord = open_record(&crypto, &pickup_aad(&key), &value[8..])?;
            if record.expires_ms >= now_ms {
                continue;
            }
            let mut batch = Batch::default();
            batch.delete(Table::Pickups, key);
            let mut blobs = crate::message::BlobChanges::default();
            self.release_blob(&crypto, account, &record.blob, &mut blobs)?;
            blobs.stage(&crypto, account, &mut batch)?;
            let event = crate::AuditEvent::new(
                &crate::Actor::system(),
                "pickup.expire",
                format!("queue {}", QueueId(record.queue)),
            )
            .detail(format!("for {}", record.recipient));
            self.commit_audited(batch, vec![event])?;
            removed += 1;
        }
        Ok(removed)
    }
}
