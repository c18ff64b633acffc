//! RocksDB key layout. Keys hold only numbers, random ids and keyed hashes: nothing that
//! identifies a person or says what a message is about. Big-endian, so that key order is
//! numeric order. See ARCHITECTURE.md for the table of tables.

use crate::types::{AccountId, MailboxId};

pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_STORE_KEYS: &[u8] = b"store_keys";
pub(crate) const META_NEXT_ACCOUNT: &[u8] = b"next_account";
pub(crate) const META_AUDIT_HEAD: &[u8] = b"audit_head";

/// The mailbox slot that holds the account's own counters instead of a mailbox.
pub(crate) const ACCOUNT_STATE_SLOT: u32 = 0;

pub(crate) type BlobId = [u8; 16];

pub(crate) fn account(id: AccountId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

pub(crate) fn mailbox(account: AccountId, mailbox: MailboxId) -> Vec<u8> {
    let mut key = Vec::with_capacity(12);
    key.extend_from_slice(&account.0.to_be_bytes());
    key.extend_from_slice(&mailbox.0.to_be_bytes());
    key
}

pub(crate) fn message(account: AccountId, mailbox: MailboxId, uid: u32) -> Vec<u8> {
    let mut key = self::mailbox(account, mailbox);
    key.extend_from_slice(&uid.to_be_bytes());
    key
}

pub(crate) fn change(account: AccountId, mailbox: MailboxId, modseq: u64) -> Vec<u8> {
    let mut key = self::mailbox(account, mailbox);
    key.extend_from_slice(&modseq.to_be_bytes());
    key
}

pub(crate) fn blob(account: AccountId, blob: &BlobId) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&account.0.to_be_bytes());
    key.extend_from_slice(blob);
    key
}

pub(crate) fn blob_chunk(account: AccountId, blob: &BlobId, chunk: u32) -> Vec<u8> {
    let mut key = self::blob(account, blob);
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

/// An outbound queue entry: the submitting account, then a random id.
pub(crate) fn queue(account: AccountId, id: &[u8; 16]) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&account.0.to_be_bytes());
    key.extend_from_slice(id);
    key
}

/// An account's quota, in the meta table.
pub(crate) fn quota(account: AccountId) -> Vec<u8> {
    let mut key = b"quota/".to_vec();
    key.extend_from_slice(&account.0.to_be_bytes());
    key
}

pub(crate) fn audit(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// The smallest key greater than every key that starts with `prefix` (prefixes here are
/// never all 0xFF, so the carry always stops).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF; prefix.len() + 1]
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)?
        .try_into()
        .ok()
        .map(u32::from_be_bytes)
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}
