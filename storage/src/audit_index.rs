//! Searching the audit log without opening every record. Each record is indexed, in the same
//! atomic write, under keyed hashes of its words (`audit_index`: HMAC(index key, term)[..16] ‖
//! seq → nothing), so a search reads only the postings of its rarest word, newest first,
//! and opens only the records it shows; a time range becomes a range of sequence numbers by a
//! binary search over the records' times (which only grow). The words are lower-cased, cut at
//! anything but letters, digits and `@._-:+`, and also at `@ . :` (so `root` and
//! `clinic.test` find `root@clinic.test`, `10.0.3.17` finds `10.0.3.17:4000`, and `account`
//! finds `account.delete`); a search matches records that have every word of every field given.

use std::collections::BTreeSet;

use crate::audit::AuditRecord;
use crate::crypto;
use crate::engine::{Batch, Durability, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::Store;
use crate::AuditEvent;

/// Index words kept per record; past it the rest go unindexed (and unfindable by word).
pub const AUDIT_TERMS_PER_RECORD_MAX: usize = 48;
/// Longest word indexed, in bytes.
pub const AUDIT_TERM_BYTES_MAX: usize = 64;
/// Matches counted exactly; past it a search says "more than".
pub const AUDIT_COUNT_EXACT_MAX: usize = 10_000;

/// The meta key saying the index covers every record (written at creation, or once a store
/// made before the index is caught up at its first open).
pub(crate) const META_AUDIT_INDEXED: &[u8] = b"audit_indexed";
const TERM_KEY_BYTES: usize = 16;
const BACKFILL_BATCH_RECORDS: usize = 10_000;

/// A search of the audit log; every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditSearch {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub object: Option<String>,
    /// Words anywhere in the record.
    pub text: Option<String>,
    pub since_ms: Option<i64>,
    pub before_ms: Option<i64>,
    /// Paging: only records older than this sequence number.
    pub older_than: Option<u64>,
    /// Records returned at most.
    pub limit: usize,
}

/// What a search found: the newest matching records first, and how many match in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub matched: usize,
    /// `false` when `matched` stopped at `AUDIT_COUNT_EXACT_MAX`.
    pub matched_exact: bool,
}

fn words(text: &str, with_parts: bool, out: &mut BTreeSet<String>) {
    let lower = text.to_lowercase();
    for word in lower.split(|c: char| !(c.is_alphanumeric() || "@._-:+".contains(c))) {
        let word = word.trim_matches(['.', ':', '@', '-', '+']);
        if word.is_empty() || word.len() > AUDIT_TERM_BYTES_MAX {
            continue;
        }
        out.insert(word.to_string());
        if with_parts {
            // Each piece between `@ . :`, and the pieces between `:` and between `@` whole:
            // `10.0.3.17:4000` is found by `10.0.3.17`, `nina@clinic.test` by `clinic.test`.
            for separators in [&['@', '.', ':'][..], &[':'][..], &['@'][..]] {
                for part in word.split(separators).filter(|p| !p.is_empty()) {
                    out.insert(part.to_string());
                }
            }
        }
    }
}

/// The index terms of one record: its action and each dotted prefix of it, the words of its
/// actor and object, and every word of the record.
pub(crate) fn terms_of(event: &AuditEvent) -> BTreeSet<String> {
    let mut terms = BTreeSet::new();
    let action = event.action.to_lowercase();
    let mut prefix = String::new();
    for (i, piece) in action.split('.').enumerate() {
        if i > 0 {
            prefix.push('.');
        }
        prefix.push_str(piece);
        terms.insert(format!("a:{prefix}"));
    }
    let mut field = |tag: &str, text: &str| {
        let mut found = BTreeSet::new();
        words(text, true, &mut found);
        for word in found {
            terms.insert(format!("{tag}:{word}"));
        }
    };
    field("u", &event.actor);
    field("o", &event.object);
    for text in [
        event.actor.as_str(),
        event.peer.as_str(),
        event.action.as_str(),
        event.object.as_str(),
        event.outcome.as_str(),
        event.detail.as_str(),
    ] {
        field("t", text);
    }
    // Field terms before the any-word ones (sorted "a" < "o" < "t" < "u"): keep the first and
    // the actor's.
    let (mut kept, mut rest): (BTreeSet<String>, Vec<String>) =
        (BTreeSet::new(), terms.into_iter().collect());
    rest.sort_by_key(|t| (t.starts_with("t:"), t.clone()));
    for term in rest.into_iter().take(AUDIT_TERMS_PER_RECORD_MAX) {
        kept.insert(term);
    }
    kept
}

impl AuditSearch {
    /// The terms every match must have.
    fn terms(&self) -> Vec<String> {
        let mut terms = BTreeSet::new();
        if let Some(action) = self.action.as_deref() {
            let action = action.trim().trim_end_matches('.').to_lowercase();
            if !action.is_empty() {
                terms.insert(format!("a:{action}"));
            }
        }
        for (tag, value) in [("u", &self.actor), ("o", &self.object), ("t", &self.text)] {
            let mut found = BTreeSet::new();
            words(value.as_deref().unwrap_or(""), false, &mut found);
            for word in found {
                terms.insert(format!("{tag}:{word}"));
            }
        }
        terms.into_iter().collect()
    }
}

impl Store {
    fn term_key(&self, term: &str) -> [u8; TERM_KEY_BYTES] {
        let hash = crypto::keyed_hash(&self.inner.store_keys.index, b"audit-term", term.as_bytes());
        let mut key = [0u8; TERM_KEY_BYTES];
        key.copy_from_slice(&hash[..TERM_KEY_BYTES]);
        key
    }

    /// Stages the index entries of record `seq`.
    pub(crate) fn stage_audit_terms(&self, seq: u64, event: &AuditEvent, batch: &mut Batch) {
        for term in terms_of(event) {
            let mut key = self.term_key(&term).to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            batch.put(Table::AuditIndex, key, Vec::new());
        }
    }

    /// Indexes the records written before the index existed, once; then notes it in meta.
    pub(crate) fn backfill_audit_index(&self) -> Result<()> {
        if self
            .inner
            .engine
            .get(Table::Meta, META_AUDIT_INDEXED)?
            .is_some()
        {
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut staged = 0;
        let mut pending: Vec<Batch> = Vec::new();
        self.audit_records(i64::MIN, &mut |record| {
            self.stage_audit_terms(record.seq, &record.event, &mut batch);
            staged += 1;
            if staged == BACKFILL_BATCH_RECORDS {
                pending.push(std::mem::take(&mut batch));
                staged = 0;
            }
            Ok(())
        })?;
        pending.push(batch);
        for batch in pending {
            self.inner.engine.write(batch, Durability::Buffered)?;
        }
        let mut done = Batch::default();
        done.put(Table::Meta, META_AUDIT_INDEXED.to_vec(), vec![1]);
        self.inner.engine.write(done, Durability::Synced)
    }

    /// One audit record by its number.
    fn audit_record(&self, seq: u64) -> Result<AuditRecord> {
        let stored = self
            .inner
            .engine
            .get(Table::Audit, &keys::audit(seq))?
            .ok_or_else(|| Error::corrupt(format!("audit record {seq} is missing")))?;
        self.audit_record_from(seq, &stored)
    }

    /// The first record number at or after `at_ms` (records' times only grow), in `[1, end]`.
    fn first_seq_at(&self, at_ms: i64, end: u64) -> Result<u64> {
        let (mut low, mut high) = (1u64, end);
        while low < high {
            let mid = low + (high - low) / 2;
            if self.audit_record(mid)?.at_ms < at_ms {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    /// Searches the audit log (see the module's words on words), newest first.
    pub fn audit_search(&self, search: &AuditSearch) -> Result<AuditPage> {
        let end = self.audit_last_seq() + 1;
        let from = match search.since_ms {
            Some(at) => self.first_seq_at(at, end)?,
            None => 1,
        };
        let to = match search.before_ms {
            Some(at) => self.first_seq_at(at, end)?,
            None => end,
        };
        let page_to = search.older_than.map_or(to, |o| o.min(to));
        if from >= to {
            return Ok(AuditPage {
                records: Vec::new(),
                matched: 0,
                matched_exact: true,
            });
        }
        let terms = self.audit_search_terms(search);
        if terms.is_empty() {
            let mut records = Vec::new();
            self.inner.engine.scan_reverse(
                Table::Audit,
                &keys::audit(from),
                &keys::audit(page_to.max(from)),
                &mut |key, value| {
                    let seq =
                        keys::read_u64(key, 0).ok_or_else(|| Error::corrupt("an audit key"))?;
                    records.push(self.audit_record_from(seq, value)?);
                    Ok(if records.len() >= search.limit {
                        Scan::Stop
                    } else {
                        Scan::Continue
                    })
                },
            )?;
            let matched = usize::try_from(to - from).unwrap_or(usize::MAX);
            return Ok(AuditPage {
                records,
                matched,
                matched_exact: true,
            });
        }
        // The rarest term leads; the others are looked up for each of its postings.
        let mut counted: Vec<(usize, [u8; TERM_KEY_BYTES])> = Vec::new();
        for term in &terms {
            let key = self.term_key(term);
            counted.push((
                self.count_postings(&key, from, to, AUDIT_COUNT_EXACT_MAX + 1)?,
                key,
            ));
        }
        counted.sort_by_key(|(count, _)| *count);
        let Some(((_, lead), rest)) = counted.split_first() else {
            return Err(Error::corrupt("a search with terms has none"));
        };
        let (lead, others) = (*lead, rest.iter().map(|(_, k)| *k).collect::<Vec<_>>());
        let has_all = |seq: u64| -> Result<bool> {
            for other in &others {
                let mut key = other.to_vec();
                key.extend_from_slice(&seq.to_be_bytes());
                if self.inner.engine.get(Table::AuditIndex, &key)?.is_none() {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let mut matched = 0usize;
        let mut records = Vec::new();
        let posting = |seq: u64| [lead.as_slice(), &seq.to_be_bytes()].concat();
        self.inner.engine.scan_reverse(
            Table::AuditIndex,
            &posting(from),
            &posting(to),
            &mut |key, _| {
                let seq = keys::read_u64(key, TERM_KEY_BYTES)
                    .ok_or_else(|| Error::corrupt("an audit index key"))?;
                if !has_all(seq)? {
                    return Ok(Scan::Continue);
                }
                matched += 1;
                if seq < page_to && records.len() < search.limit {
                    records.push(self.audit_record(seq)?);
                }
                let counted_enough = matched > AUDIT_COUNT_EXACT_MAX;
                Ok(
                    if counted_enough && records.len() >= search.limit.min(matched) {
                        Scan::Stop
                    } else {
                        Scan::Continue
                    },
                )
            },
        )?;
        let matched_exact = matched <= AUDIT_COUNT_EXACT_MAX;
        Ok(AuditPage {
            records,
            matched: matched.min(AUDIT_COUNT_EXACT_MAX),
            matched_exact,
        })
    }

    fn audit_search_terms(&self, search: &AuditSearch) -> Vec<String> {
        search.terms()
    }

    /// Postings of a term between two record numbers, counted up to `cap`.
    fn count_postings(
        &self,
        term: &[u8; TERM_KEY_BYTES],
        from: u64,
        to: u64,
        cap: usize,
    ) -> Result<usize> {
        let mut count = 0;
        let start = [term.as_slice(), &from.to_be_bytes()].concat();
        let end = [term.as_slice(), &to.to_be_bytes()].concat();
        self.inner
            .engine
            .scan(Table::AuditIndex, &start, &end, &mut |_, _| {
                count += 1;
                Ok(if count >= cap {
                    Scan::Stop
                } else {
                    Scan::Continue
                })
            })?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Actor, AuditOutcome};

    #[test]
    fn records_are_found_by_their_words_and_action_prefixes() {
        let actor = Actor {
            name: "root@clinic.test".into(),
            peer: "127.0.0.1:5000".into(),
        };
        let event = AuditEvent::new(&actor, "account.delete", "account:4 nina@clinic.test")
            .outcome(AuditOutcome::Ok)
            .detail("keys destroyed (crypto-shredding)");
        let terms = terms_of(&event);
        for term in [
            "a:account",
            "a:account.delete",
            "u:root@clinic.test",
            "u:root",
            "o:nina@clinic.test",
            "o:account:4",
            "o:4",
            "t:crypto-shredding",
            "t:127.0.0.1:5000",
            "t:127.0.0.1",
            "u:clinic.test",
        ] {
            assert!(terms.contains(term), "{term} missing from {terms:?}");
        }
        let search = AuditSearch {
            actor: Some("Root@Clinic.test".into()),
            action: Some("account.".into()),
            text: Some("keys DESTROYED".into()),
            ..AuditSearch::default()
        };
        let wanted = search.terms();
        assert_eq!(
            wanted,
            ["a:account", "t:destroyed", "t:keys", "u:root@clinic.test"]
        );
        assert!(wanted.iter().all(|t| terms.contains(t)));
        // A long detail cannot blow up the index.
        let long = AuditEvent::new(&actor, "x.y", "o")
            .detail((0..500).map(|i| format!("w{i} ")).collect::<String>());
        let many = terms_of(&long);
        assert_eq!(many.len(), AUDIT_TERMS_PER_RECORD_MAX);
        assert!(
            many.contains("a:x.y") && many.contains("u:root"),
            "field terms come first"
        );
    }
}
