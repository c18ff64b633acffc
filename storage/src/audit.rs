//! The audit log: append-only, chained with a MAC, sealed with the store's audit key.
//!
//! Record `n` is stored under key `n` as `prev_link (32 bytes) || sealed body`, and
//! `link(n) = HMAC-SHA256(mac key, "sealpost.audit.v2" || 0 || prev_link || n || stored
//! value)`, where the MAC key is derived from the audit key (so only the master key's holder
//! can compute a link). The head (the last sequence number, its link, the first keyed record,
//! and a MAC over the three) is written in the same atomic batch as the records, so a removed
//! tail is found too: a head rewritten without the key does not authenticate. The store offers
//! no call that changes or deletes a record.
//!
//! Records written before the chain was keyed (`keyed_from` in the head) keep their SHA-256
//! links and are verified as such; keyed records are sealed with another associated data, so
//! a keyed record cannot pass for an older one. What a key holder could still do (remove the
//! tail and recompute every MAC) only an anchor kept outside the store shows: the head's
//! number and link, written into every backup's manifest and into the server's log
//! ([`Store::audit_anchor`], [`Store::audit_verify_against`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::error;

use crate::crypto::{keyed_hash, SecretKey};
use crate::engine::{Batch, Durability, Engine, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{lock, Actor, Store};

const LINK_BYTES: usize = 32;
const GENESIS: [u8; LINK_BYTES] = [0; LINK_BYTES];
/// The link the server continues from when the head on disk does not authenticate: no
/// record's link, so the break stays visible after new records are chained on.
const UNTRUSTED_HEAD_LINK: [u8; LINK_BYTES] = [0xFF; LINK_BYTES];
/// A head before keyed chaining: seq (8) || SHA-256 link (32).
const LEGACY_HEAD_BYTES: usize = 8 + LINK_BYTES;
/// A sealed head: seq (8) || link (32) || keyed_from (8) || MAC (32).
const SEALED_HEAD_BYTES: usize = 8 + LINK_BYTES + 8 + LINK_BYTES;
/// The action of record 1 of every store.
const FIRST_ACTION: &str = "store.create";

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
    /// Records `1..keyed_from` were written before the chain was keyed: linked by SHA-256,
    /// which anyone can recompute. 1 for a store made with keyed chaining.
    pub keyed_from: u64,
    /// The anchors given that the chain does not hold (each with the anchor's number).
    pub anchors_failed: Vec<AuditBreak>,
}

/// The first place where the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditBreak {
    pub seq: u64,
    pub reason: String,
}

/// A point of the chain kept outside the store: a record's number and its link (the MAC
/// that chains it). A chain that still holds the record has the same link there; one cut
/// before it, or rewritten up to it, does not. Written as `SEQ:HEX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditAnchor {
    pub seq: u64,
    pub link: [u8; LINK_BYTES],
}

impl AuditAnchor {
    /// The link in lower-case hex.
    pub fn link_hex(&self) -> String {
        self.link.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads `SEQ:HEX` (64 hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let (seq, hex) = text.trim().split_once(':')?;
        let seq = seq.parse().ok()?;
        let hex = hex.as_bytes();
        if hex.len() != LINK_BYTES * 2 {
            return None;
        }
        let mut link = [0u8; LINK_BYTES];
        for (byte, pair) in link.iter_mut().zip(hex.chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self { seq, link })
    }
}

impl std::fmt::Display for AuditAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.link_hex())
    }
}

pub(crate) struct AuditHead {
    last_seq: u64,
    last_link: [u8; LINK_BYTES],
    /// The first record chained by MAC; those before it are linked by SHA-256.
    keyed_from: u64,
    mac_key: SecretKey,
}

/// A head read from the meta table.
enum StoredHead {
    Sealed {
        seq: u64,
        link: [u8; LINK_BYTES],
        keyed_from: u64,
        authentic: bool,
    },
    Legacy {
        seq: u64,
        link: [u8; LINK_BYTES],
    },
}

impl AuditHead {
    /// Reads the head at open. A head written before keyed chaining is sealed now, with the
    /// next record as the first keyed one. A head that does not authenticate, is missing
    /// while records exist, or ends before the last record is not continued from: the server
    /// goes on after the last record with a link no record has, so verification keeps
    /// reporting the break (and the server runs on: the mail must flow).
    pub(crate) fn load(engine: &dyn Engine, audit_key: &SecretKey, keyed: bool) -> Result<Self> {
        let mac_key = SecretKey::derived(audit_key, b"sealpost.audit.mac-key");
        let last_present = last_record(engine)?;
        let stored = engine.get(Table::Meta, keys::META_AUDIT_HEAD)?;
        let head = stored.as_deref().map(|bytes| decode_head(bytes, &mac_key));
        let untrusted = |keyed_from: u64, why: &str| {
            error!(
                last_record = last_present,
                why, "the audit log's head is not trusted: run sealpost audit verify"
            );
            Self {
                last_seq: last_present,
                last_link: UNTRUSTED_HEAD_LINK,
                keyed_from,
                mac_key: mac_key.clone(),
            }
        };
        Ok(match head {
            None if last_present == 0 => Self {
                last_seq: 0,
                last_link: GENESIS,
                keyed_from: 1,
                mac_key: mac_key.clone(),
            },
            None => untrusted(1, "missing"),
            Some(None) => untrusted(1, "unreadable"),
            Some(Some(StoredHead::Sealed {
                authentic: false,
                keyed_from,
                ..
            })) => untrusted(
                keyed_from.clamp(1, last_present.saturating_add(1)),
                "its MAC does not match (written without the key)",
            ),
            Some(Some(StoredHead::Sealed {
                seq, keyed_from, ..
            })) if seq < last_present => untrusted(keyed_from, "records exist after it"),
            // The store keys say the log is keyed: an old-style head is a forgery (every keyed
            // record removed and the SHA-256 head recomputed, no key needed). Left on disk, so
            // that verification reports it.
            Some(Some(StoredHead::Legacy { seq, .. })) if keyed => untrusted(
                seq.saturating_add(1),
                "it is of the old format in a store whose log is keyed (records were removed)",
            ),
            Some(Some(StoredHead::Legacy { seq, .. })) if seq < last_present => {
                untrusted(seq.saturating_add(1), "records exist after it")
            }
            Some(Some(StoredHead::Sealed {
                seq,
                link,
                keyed_from,
                ..
            })) => Self {
                last_seq: seq,
                last_link: link,
                keyed_from,
                mac_key: mac_key.clone(),
            },
            Some(Some(StoredHead::Legacy { seq, link })) => {
                let head = Self {
                    last_seq: seq,
                    last_link: link,
                    keyed_from: seq.saturating_add(1),
                    mac_key: mac_key.clone(),
                };
                let mut batch = Batch::default();
                batch.put(Table::Meta, keys::META_AUDIT_HEAD.to_vec(), head.encode());
                engine.write(batch, Durability::Synced)?;
                head
            }
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEALED_HEAD_BYTES);
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.last_link);
        out.extend_from_slice(&self.keyed_from.to_be_bytes());
        let mac = keyed_hash(&self.mac_key, b"sealpost.audit.head", &out);
        out.extend_from_slice(&mac);
        out
    }

    fn link(&self, prev: &[u8; LINK_BYTES], seq: u64, stored: &[u8]) -> [u8; LINK_BYTES] {
        if seq < self.keyed_from {
            return sha256_link(prev, seq, stored);
        }
        let mut input = Vec::with_capacity(LINK_BYTES + 8 + stored.len());
        input.extend_from_slice(prev);
        input.extend_from_slice(&seq.to_be_bytes());
        input.extend_from_slice(stored);
        keyed_hash(&self.mac_key, b"sealpost.audit.v2", &input)
    }
}

/// The number of the last record in the table (0 for none).
fn last_record(engine: &dyn Engine) -> Result<u64> {
    let mut last = 0;
    engine.scan_reverse(Table::Audit, &[], &[0xFF; 9], &mut |key, _| {
        last = keys::read_u64(key, 0).ok_or_else(|| Error::corrupt("an audit key"))?;
        Ok(Scan::Stop)
    })?;
    Ok(last)
}

/// `None` for bytes that are no head at all.
fn decode_head(bytes: &[u8], mac_key: &SecretKey) -> Option<StoredHead> {
    let seq = keys::read_u64(bytes, 0)?;
    let link: [u8; LINK_BYTES] = bytes.get(8..8 + LINK_BYTES)?.try_into().ok()?;
    match bytes.len() {
        LEGACY_HEAD_BYTES => Some(StoredHead::Legacy { seq, link }),
        SEALED_HEAD_BYTES => {
            let keyed_from = keys::read_u64(bytes, 8 + LINK_BYTES)?;
            let (sealed, mac) = bytes.split_at(8 + LINK_BYTES + 8);
            let expected = keyed_hash(mac_key, b"sealpost.audit.head", sealed);
            // Compared in constant time: no byte-by-byte oracle for forging one.
            let authentic = mac.len() == LINK_BYTES
                && expected
                    .iter()
                    .zip(mac)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            Some(StoredHead::Sealed {
                seq,
                link,
                keyed_from,
                authentic,
            })
        }
        _ => None,
    }
}

fn sha256_link(prev: &[u8; LINK_BYTES], seq: u64, stored: &[u8]) -> [u8; LINK_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(b"sealpost.audit.v1");
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(stored);
    hasher.finalize().into()
}

/// A record's associated data: keyed records are sealed apart from older ones, so no one
/// without the key can present a keyed record as one from before keyed chaining.
fn audit_aad(seq: u64, keyed: bool) -> Vec<u8> {
    let mut aad = if keyed {
        b"audit/v2/".to_vec()
    } else {
        b"audit/".to_vec()
    };
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
        let (mut seq, mut link) = (head.last_seq, head.last_link);
        let at_ms = crate::now_ms();
        for event in events {
            seq = seq
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("the audit log's sequence numbers are used up"))?;
            self.stage_audit_terms(seq, &event, batch);
            let body = postcard::to_stdvec(&StoredBody { at_ms, event })
                .map_err(|e| Error::corrupt(format!("encoding an audit record: {e}")))?;
            let mut stored = link.to_vec();
            stored.extend_from_slice(
                &self
                    .inner
                    .audit_sealer
                    .seal(&audit_aad(seq, seq >= head.keyed_from), &body),
            );
            link = head.link(&link, seq, &stored);
            batch.put(Table::Audit, keys::audit(seq), stored);
        }
        let moved = AuditHead {
            last_seq: seq,
            last_link: link,
            keyed_from: head.keyed_from,
            mac_key: head.mac_key.clone(),
        };
        batch.put(Table::Meta, keys::META_AUDIT_HEAD.to_vec(), moved.encode());
        self.inner
            .engine
            .write(std::mem::take(batch), Durability::Buffered)?;
        *head = moved;
        Ok(seq)
    }

    /// The chain's head now: the anchor to keep outside the store (backup manifests, the
    /// server's log), so that a later `audit_verify_against` shows a chain cut or rewritten
    /// below it.
    pub fn audit_anchor(&self) -> AuditAnchor {
        let head = lock(&self.inner.audit);
        AuditAnchor {
            seq: head.last_seq,
            link: head.last_link,
        }
    }

    /// Visits every audit record at or after `since_ms`, oldest first.
    pub fn audit_records(
        &self,
        since_ms: i64,
        visit: &mut dyn FnMut(AuditRecord) -> Result<()>,
    ) -> Result<()> {
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

    /// Opens a record for reading, keyed or from before (verification is strict about which).
    fn open_audit_body(&self, seq: u64, stored: &[u8]) -> Result<StoredBody> {
        self.open_audit_body_as(seq, stored, true)
            .or_else(|_| self.open_audit_body_as(seq, stored, false))
    }

    fn open_audit_body_as(&self, seq: u64, stored: &[u8], keyed: bool) -> Result<StoredBody> {
        let sealed = stored
            .get(LINK_BYTES..)
            .ok_or_else(|| Error::corrupt("a short audit record"))?;
        let body = self
            .inner
            .audit_sealer
            .open(&audit_aad(seq, keyed), sealed)?;
        postcard::from_bytes(&body).map_err(|_| Error::corrupt("an audit record body"))
    }

    /// Walks the whole chain and reports the first broken link, if any.
    pub fn audit_verify(&self) -> Result<AuditVerification> {
        self.audit_verify_against(&[])
    }

    /// Walks the whole chain, reports the first broken link, and checks each anchor kept
    /// outside the store: the chain must hold the anchor's record with the anchor's link.
    pub fn audit_verify_against(&self, anchors: &[AuditAnchor]) -> Result<AuditVerification> {
        // The head as it was loaded: what the chain is checked against is read from disk.
        let (keyed_from, mac_key) = {
            let head = lock(&self.inner.audit);
            (head.keyed_from, head.mac_key.clone())
        };
        let chain = AuditHead {
            last_seq: 0,
            last_link: GENESIS,
            keyed_from,
            mac_key,
        };
        let mut expected_seq = 1u64;
        let mut prev = GENESIS;
        let mut first_break = None;
        let mut links_at_anchors: Vec<(u64, [u8; LINK_BYTES])> = Vec::new();
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
                if stored.get(..LINK_BYTES) != Some(&prev[..]) {
                    first_break = found("its link to the previous record does not match".to_string());
                    return Ok(Scan::Stop);
                }
                let keyed = expected_seq >= keyed_from;
                let body = match self.open_audit_body_as(expected_seq, stored, keyed) {
                    Ok(body) => body,
                    Err(_) if self.open_audit_body_as(expected_seq, stored, !keyed).is_ok() => {
                        first_break = found(if keyed {
                            "it was written before the chain was keyed, yet the head says after".to_string()
                        } else {
                            "it was written by the keyed chain, yet presented as older (an old-style head?)".to_string()
                        });
                        return Ok(Scan::Stop);
                    }
                    Err(_) => {
                        first_break = found("its contents were altered".to_string());
                        return Ok(Scan::Stop);
                    }
                };
                if expected_seq == 1 && body.event.action != FIRST_ACTION {
                    first_break = found(format!(
                        "the first record is not the store's creation ({FIRST_ACTION}): the log was replaced"
                    ));
                    return Ok(Scan::Stop);
                }
                prev = chain.link(&prev, expected_seq, stored);
                if anchors.iter().any(|a| a.seq == expected_seq) {
                    links_at_anchors.push((expected_seq, prev));
                }
                expected_seq += 1;
                Ok(Scan::Continue)
            })?;
        let verified = expected_seq - 1;
        if first_break.is_none() {
            first_break = self.check_head(verified, &prev, &chain.mac_key)?;
        }
        let anchors_failed = anchors
            .iter()
            .filter_map(|anchor| {
                let reason = match links_at_anchors.iter().find(|(seq, _)| *seq == anchor.seq) {
                    Some((_, link)) if *link == anchor.link => return None,
                    Some(_) => format!(
                        "record {} has another link than the anchor: the chain was rewritten up to it",
                        anchor.seq
                    ),
                    None if first_break.is_some() => {
                        format!("record {} was not reached: the chain breaks before it", anchor.seq)
                    }
                    None => format!(
                        "the chain ends at record {verified}, before the anchored record {}: records were removed",
                        anchor.seq
                    ),
                };
                Some(AuditBreak {
                    seq: anchor.seq,
                    reason,
                })
            })
            .collect();
        Ok(AuditVerification {
            records_verified: verified,
            first_break,
            keyed_from,
            anchors_failed,
        })
    }

    /// The head on disk against the chain walked: it must authenticate and name its end.
    fn check_head(
        &self,
        verified: u64,
        last_link: &[u8; LINK_BYTES],
        mac_key: &SecretKey,
    ) -> Result<Option<AuditBreak>> {
        let stored = self.inner.engine.get(Table::Meta, keys::META_AUDIT_HEAD)?;
        let head = stored
            .as_deref()
            .and_then(|bytes| decode_head(bytes, mac_key));
        let at_end = |reason: &str| {
            Some(AuditBreak {
                seq: verified,
                reason: reason.to_string(),
            })
        };
        Ok(match head {
            Some(StoredHead::Sealed {
                authentic: true,
                seq,
                link,
                ..
            }) => {
                if seq == verified && link == *last_link {
                    None
                } else if seq > verified {
                    Some(AuditBreak {
                        seq: verified + 1,
                        reason: format!("records {}..={seq} are missing", verified + 1),
                    })
                } else {
                    at_end("the chain does not end at the recorded head")
                }
            }
            Some(StoredHead::Sealed { authentic: false, .. }) => at_end(
                "the head does not authenticate: it was rewritten without the key (records may have been removed)",
            ),
            Some(StoredHead::Legacy { .. }) => {
                at_end("the head is not sealed: it was rewritten without the key (records may have been removed)")
            }
            None => at_end("the head is missing or unreadable"),
        })
    }
}
