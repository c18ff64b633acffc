//! The audit log: append-only, hash-chained, sealed with the store's audit key.
//!
//! Record `n` is stored under key `n` as `prev_hash (32 bytes) || sealed body`, and
//! `hash(n) = SHA-256("sealpost.audit.v1" || prev_hash || n || stored value)`. The head (the
//! last sequence number and its hash) is written in the same atomic batch as the record, so a
//! removed tail is found too. The store offers no call that changes or deletes a record.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{Batch, Durability, Engine, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{lock, Actor, Store};

const HASH_BYTES: usize = 32;
const GENESIS: [u8; HASH_BYTES] = [0; HASH_BYTES];

/// Whether the audited action succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditOutcome {
    Ok,
    Denied,
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// Something to record: who did what to which object, from where, and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub actor: String,
    pub peer: String,
    /// Dotted verb, such as `account.create` or `message.read`.
    pub action: String,
    /// What was acted on, such as `account:12 alice@example.org`.
    pub object: String,
    pub outcome: AuditOutcome,
    pub detail: String,
}

impl AuditEvent {
    pub fn new(actor: &Actor, action: &str, object: impl Into<String>) -> Self {
        Self {
            actor: actor.name.clone(),
            peer: actor.peer.clone(),
            action: action.to_string(),
            object: object.into(),
            outcome: AuditOutcome::Ok,
            detail: String::new(),
        }
    }

    pub fn outcome(mut self, outcome: AuditOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

#[derive(Serialize, Deserialize)]
struct StoredBody {
    at_ms: i64,
    event: AuditEvent,
}

/// What `audit verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerification {
    /// Records whose link checked out before the first break (all of them if unbroken).
    pub records_verified: u64,
    pub first_break: Option<AuditBreak>,
}

/// The first place where the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditBreak {
    pub seq: u64,
    pub reason: String,
}

pub(crate) struct AuditHead {
    last_seq: u64,
    last_hash: [u8; HASH_BYTES],
}

impl AuditHead {
    pub(crate) fn load(engine: &dyn Engine) -> Result<Self> {
        let Some(head) = engine.get(Table::Meta, keys::META_AUDIT_HEAD)? else {
            return Ok(Self {
                last_seq: 0,
                last_hash: GENESIS,
            });
        };
        decode_head(&head).ok_or_else(|| Error::corrupt("the audit head record"))
    }
}

fn decode_head(bytes: &[u8]) -> Option<AuditHead> {
    let last_seq = keys::read_u64(bytes, 0)?;
    let last_hash = bytes.get(8..8 + HASH_BYTES)?.try_into().ok()?;
    Some(AuditHead { last_seq, last_hash })
}

fn encode_head(seq: u64, hash: &[u8; HASH_BYTES]) -> Vec<u8> {
    let mut out = seq.to_be_bytes().to_vec();
    out.extend_from_slice(hash);
    out
}

fn chain_hash(prev: &[u8; HASH_BYTES], seq: u64, stored: &[u8]) -> [u8; HASH_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(b"sealpost.audit.v1");
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(stored);
    hasher.finalize().into()
}

fn audit_aad(seq: u64) -> Vec<u8> {
    let mut aad = b"audit/".to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

/// The audit chain's head, held while records are added.
pub(crate) fn lock_head(store: &Store) -> std::sync::MutexGuard<'_, AuditHead> {
    lock(&store.inner.audit)
}

impl Store {
    /// Appends one event to the audit log, durably.
    pub fn audit(&self, event: AuditEvent) -> Result<u64> {
        self.commit_audited(Batch::default(), vec![event])
    }

    /// Appends several events in one atomic, durable write (imports, bulk changes); returns
    /// the number of the last.
    pub fn audit_all(&self, events: Vec<AuditEvent>) -> Result<u64> {
        self.commit_audited(Batch::default(), events)
    }

    /// Writes `batch` and the audit records of `events` in one atomic write, durable when
    /// this returns. Returns the sequence number of the last record.
    pub(crate) fn commit_audited(&self, mut batch: Batch, events: Vec<AuditEvent>) -> Result<u64> {
        let seq = {
            let head = lock(&self.inner.audit);
            self.write_audited(head, &mut batch, events)?
        };
        // The fsync outside the lock: concurrent writers share it instead of queueing.
        self.inner.engine.sync_log()?;
        Ok(seq)
    }

    /// Appends the records of `events` to `batch` and writes it (not yet synced) while the
    /// chain head is held, then moves the head. The caller syncs the log before it reports
    /// success; the log is written in order, so that sync covers this write.
    pub(crate) fn write_audited(
        &self,
        mut head: std::sync::MutexGuard<'_, AuditHead>,
        batch: &mut Batch,
        events: Vec<AuditEvent>,
    ) -> Result<u64> {
        let (mut seq, mut hash) = (head.last_seq, head.last_hash);
        let at_ms = crate::now_ms();
        for event in events {
            seq += 1;
            self.stage_audit_terms(seq, &event, batch);
            let body = postcard::to_stdvec(&StoredBody { at_ms, event })
                .map_err(|e| Error::corrupt(format!("encoding an audit record: {e}")))?;
            let mut stored = hash.to_vec();
            stored.extend_from_slice(&self.inner.audit_sealer.seal(&audit_aad(seq), &body));
            hash = chain_hash(&hash, seq, &stored);
            batch.put(Table::Audit, keys::audit(seq), stored);
        }
        batch.put(Table::Meta, keys::META_AUDIT_HEAD.to_vec(), encode_head(seq, &hash));
        self.inner.engine.write(std::mem::take(batch), Durability::Buffered)?;
        head.last_seq = seq;
        head.last_hash = hash;
        Ok(seq)
    }

    /// Visits every audit record at or after `since_ms`, oldest first.
    pub fn audit_records(&self, since_ms: i64, visit: &mut dyn FnMut(AuditRecord) -> Result<()>) -> Result<()> {
        self.inner
            .engine
            .scan(Table::Audit, &[], &[0xFF; 9], &mut |key, value| {
                let seq = keys::read_u64(key, 0).ok_or_else(|| Error::corrupt("an audit key"))?;
                let body = self.open_audit_body(seq, value)?;
                if body.at_ms >= since_ms {
                    visit(AuditRecord {
                        seq,
                        at_ms: body.at_ms,
                        event: body.event,
                    })?;
                }
                Ok(Scan::Continue)
            })
    }

    /// The number of the last record written (0 for none).
    pub(crate) fn audit_last_seq(&self) -> u64 {
        lock(&self.inner.audit).last_seq
    }

    /// A record from its stored bytes.
    pub(crate) fn audit_record_from(&self, seq: u64, stored: &[u8]) -> Result<AuditRecord> {
        let body = self.open_audit_body(seq, stored)?;
        Ok(AuditRecord {
            seq,
            at_ms: body.at_ms,
            event: body.event,
        })
    }

    fn open_audit_body(&self, seq: u64, stored: &[u8]) -> Result<StoredBody> {
        let sealed = stored
            .get(HASH_BYTES..)
            .ok_or_else(|| Error::corrupt("a short audit record"))?;
        let body = self.inner.audit_sealer.open(&audit_aad(seq), sealed)?;
        postcard::from_bytes(&body).map_err(|_| Error::corrupt("an audit record body"))
    }

    /// Walks the whole chain and reports the first broken link, if any.
    pub fn audit_verify(&self) -> Result<AuditVerification> {
        let mut expected_seq = 1u64;
        let mut prev = GENESIS;
        let mut first_break = None;
        self.inner
            .engine
            .scan(Table::Audit, &[], &[0xFF; 9], &mut |key, stored| {
                let found = |reason: String| {
                    Some(AuditBreak {
                        seq: expected_seq,
                        reason,
                    })
                };
                let seq = keys::read_u64(key, 0);
                if seq != Some(expected_seq) {
                    first_break = found(format!(
                        "record {expected_seq} is missing (next present: {})",
                        seq.map_or("unreadable".to_string(), |s| s.to_string())
                    ));
                    return Ok(Scan::Stop);
                }
                if stored.get(..HASH_BYTES) != Some(&prev[..]) {
                    first_break = found("its link to the previous record does not match".to_string());
                    return Ok(Scan::Stop);
                }
                if self.open_audit_body(expected_seq, stored).is_err() {
                    first_break = found("its contents were altered".to_string());
                    return Ok(Scan::Stop);
                }
                prev = chain_hash(&prev, expected_seq, stored);
                expected_seq += 1;
                Ok(Scan::Continue)
            })?;
        let verified = expected_seq - 1;
        if first_break.is_none() {
            let head = self
                .inner
                .engine
                .get(Table::Meta, keys::META_AUDIT_HEAD)?
                .and_then(|h| decode_head(&h));
            match head {
                Some(head) if head.last_seq == verified && head.last_hash == prev => {}
                Some(head) if head.last_seq > verified => {
                    first_break = Some(AuditBreak {
                        seq: verified + 1,
                        reason: format!("records {}..={} are missing", verified + 1, head.last_seq),
                    });
                }
                _ => {
                    first_break = Some(AuditBreak {
                        seq: verified,
                        reason: "the chain does not end at the recorded head".to_string(),
                    });
                }
            }
        }
        Ok(AuditVerification {
            records_verified: verified,
            first_break,
        })
    }
}
