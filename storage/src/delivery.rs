//! Delivery records: what became of each outside recipient of a message an account sent,
//! kept after the queue entry is gone, so that the sender can see how each recipient was
//! protected (verified TLS or the portal), whether and when a portal recipient opened it,
//! and withdraw it. Written in the same atomic batch as the queue entry and every change of
//! its states; sealed under the sending account's keys; keyed like the queue entry.

use serde::{Deserialize, Serialize};

use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::mailbox::{open_record, seal_record};
use crate::pickup::PickupId;
use crate::queue::{QueueId, RecipientStatus};
use crate::store::{AccountCrypto, Store};
use crate::types::AccountId;

/// Delivery records `deliveries` returns, newest first.
pub const DELIVERIES_LISTED_MAX: usize = 200;

/// One outside recipient of a sent message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLine {
    pub address: String,
    pub status: RecipientStatus,
    /// The pickup kept for this recipient, when the portal was chosen.
    pub pickup: Option<PickupId>,
    /// When the recipient first read it in the portal.
    pub opened_ms: Option<i64>,
    /// When the sender withdrew it.
    pub revoked_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct DeliveryRecord {
    created_ms: i64,
    /// The message's stored summary (IMAP ENVELOPE and structure), for the sender's list.
    summary: Vec<u8>,
    lines: Vec<DeliveryLine>,
}

impl DeliveryRecord {
    pub(crate) fn line_mut(&mut self, address: &str) -> Option<&mut DeliveryLine> {
        self.lines
            .iter_mut()
            .find(|l| l.address.eq_ignore_ascii_case(address))
    }
}

/// A sent message's delivery record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub queue: QueueId,
    pub created_ms: i64,
    pub summary: Vec<u8>,
    pub lines: Vec<DeliveryLine>,
}

fn delivery_aad(key: &[u8]) -> Vec<u8> {
    [b"delivery/".as_slice(), key].concat()
}

/// Stages the delivery record of a new queue entry.
pub(crate) fn stage_new_delivery(
    crypto: &AccountCrypto,
    account: AccountId,
    queue: QueueId,
    created_ms: i64,
    summary: &[u8],
    recipients: &[String],
    batch: &mut Batch,
) -> Result<()> {
    let record = DeliveryRecord {
        created_ms,
        summary: summary.to_vec(),
        lines: recipients
            .iter()
            .map(|address| DeliveryLine {
                address: address.clone(),
                status: RecipientStatus::Pending,
                pickup: None,
                opened_ms: None,
                revoked_ms: None,
            })
            .collect(),
    };
    let key = keys::queue(account, &queue.0);
    batch.put(
        Table::Deliveries,
        key.clone(),
        seal_record(crypto, &delivery_aad(&key), &record)?,
    );
    Ok(())
}

impl Store {
    /// Changes the delivery record of queue entry `queue`, if it has one (pickup notices have
    /// none). The caller holds the account's queue lock.
    pub(crate) fn stage_delivery_change(
        &self,
        crypto: &AccountCrypto,
        account: AccountId,
        queue: QueueId,
        batch: &mut Batch,
        change: impl FnOnce(&mut DeliveryRecord),
    ) -> Result<()> {
        let key = keys::queue(account, &queue.0);
        let Some(sealed) = self.inner.engine.get(Table::Deliveries, &key)? else {
            return Ok(());
        };
        let mut record: DeliveryRecord = open_record(crypto, &delivery_aad(&key), &sealed)?;
        change(&mut record);
        batch.put(
            Table::Deliveries,
            key.clone(),
            seal_record(crypto, &delivery_aad(&key), &record)?,
        );
        Ok(())
    }

    /// The delivery record of one sent message.
    pub fn delivery(&self, account: AccountId, queue: QueueId) -> Result<Option<Delivery>> {
        let crypto = self.account_crypto(account)?;
        let key = keys::queue(account, &queue.0);
        let Some(sealed) = self.inner.engine.get(Table::Deliveries, &key)? else {
            return Ok(None);
        };
        let record: DeliveryRecord = open_record(&crypto, &delivery_aad(&key), &sealed)?;
        Ok(Some(Delivery {
            queue,
            created_ms: record.created_ms,
            summary: record.summary,
            lines: record.lines,
        }))
    }

    /// The account's delivery records, newest first, at most `DELIVERIES_LISTED_MAX`.
    pub fn deliveries(&self, account: AccountId) -> Result<Vec<Delivery>> {
        let crypto = self.account_crypto(account)?;
        let start = keys::account(account);
        let end = keys::account(AccountId(account.0 + 1));
        let mut out = Vec::new();
        self.inner
            .engine
            .scan(Table::Deliveries, &start, &end, &mut |key, value| {
                let id = key
                    .get(8..24)
                    .and_then(|id| <[u8; 16]>::try_from(id).ok())
                    .ok_or_else(|| Error::corrupt("a delivery key"))?;
                let record: DeliveryRecord = open_record(&crypto, &delivery_aad(key), value)?;
                out.push(Delivery {
                    queue: QueueId(id),
                    created_ms: record.created_ms,
                    summary: record.summary,
                    lines: record.lines,
                });
                Ok(Scan::Continue)
            })?;
        out.sort_by_key(|d| std::cmp::Reverse(d.created_ms));
        out.truncate(DELIVERIES_LISTED_MAX);
        Ok(out)
    }
}
