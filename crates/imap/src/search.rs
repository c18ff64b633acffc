//! SEARCH over the encrypted store: each key is checked against what it needs, loaded
//! lazily per message: metadata always, the stored summary for header and date keys, the
//! decoded body only for BODY and TEXT.

use std::collections::HashMap;

use sealpost_mime::{search_text, SearchText, Summary};
use sealpost_storage::{AccountId, MailboxId, MessageMeta, Result, Store, SystemFlag};

use crate::command::{SearchKey, SequenceSet};
use crate::selected::Recent;

/// What is known of one message while its keys are checked.
struct Candidate<'a> {
    seq: u32,
    meta: &'a MessageMeta,
    summary: Option<Summary>,
    /// Lower-cased decoded headers and body.
    text: Option<SearchText>,
}

/// The UIDs (ascending) of the messages matching `key`, and the highest MODSEQ among them.
pub(crate) fn evaluate(
    store: &Store,
    account: AccountId,
    mailbox: MailboxId,
    uids: &[u32],
    // The saved result (`$`), ascending.
    saved: &[u32],
    recent: &Recent,
    key: &SearchKey,
) -> Result<(Vec<u32>, Vec<u64>)> {
    let metas: HashMap<u32, MessageMeta> = store
        .messages(account, mailbox)?
        .into_iter()
        .map(|m| (m.uid, m))
        .collect();
    let largest_uid = uids.last().copied().unwrap_or(0);
    let count = uids.len() as u32;
    let mut out = Vec::new();
    let mut modseqs = Vec::new();
    for (index, uid) in uids.iter().enumerate() {
        let Some(meta) = metas.get(uid) else { continue };
        let mut candidate = Candidate {
            seq: index as u32 + 1,
            meta,
            summary: None,
            text: None,
        };
        let context = Context {
            store,
            account,
            mailbox,
            saved,
            recent,
            largest_uid,
            count,
        };
        match matches(key, &mut candidate, &context) {
            Ok(true) => {
                modseqs.push(meta.modseq);
                out.push(*uid);
            }
            Ok(false) => {}
            // Expunged by another session while the search ran: it matches nothing.
            Err(sealpost_storage::Error::MessageNotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok((out, modseqs))
}

struct Context<'a> {
    store: &'a Store,
    account: AccountId,
    mailbox: MailboxId,
    saved: &'a [u32],
    recent: &'a Recent,
    largest_uid: u32,
    count: u32,
}

pub(crate) fn uses_modseq(key: &SearchKey) -> bool {
    // Explicit stack: keys nest, but the parser bounds the depth anyway.
    let mut pending = vec![key];
    while let Some(key) = pending.pop() {
        match key {
            SearchKey::ModSeq(_) => return true,
            SearchKey::And(keys) => pending.extend(keys.iter()),
            SearchKey::Or(a, b) => {
                pending.push(a);
                pending.push(b);
            }
            SearchKey::Not(inner) => pending.push(inner),
            _ => {}
        }
    }
    false
}

/// O(log ranges) per message, however many ranges the client wrote; `saved` is ascending.
fn in_set(set: &SequenceSet, number: u32, largest: u32, saved: Option<&[u32]>) -> bool {
    match set {
        SequenceSet::Saved => saved.is_some_and(|s| s.binary_search(&number).is_ok()),
        SequenceSet::Ranges(ranges) => ranges.contains(number, largest),
    }
}

/// Case-insensitive: the stored text is lower case already.
fn contains(lowercase_haystack: &str, needle: &str) -> bool {
    needle.is_empty() || lowercase_haystack.contains(&needle.to_lowercase())
}

fn day_of(unix_seconds: i64, offset_minutes: i64) -> i64 {
    (unix_seconds + offset_minutes * 60).div_euclid(86_400) * 86_400
}

/// Depth is bounded by the parser (NESTING_DEPTH_MAX), so this recursion is too.
fn matches(key: &SearchKey, c: &mut Candidate<'_>, ctx: &Context<'_>) -> Result<bool> {
    Ok(match key {
        SearchKey::All => true,
        SearchKey::And(keys) => {
            for key in keys {
                if !matches(key, c, ctx)? {
                    return Ok(false);
                }
            }
            true
        }
        SearchKey::Or(a, b) => matches(a, c, ctx)? || matches(b, c, ctx)?,
        SearchKey::Not(inner) => !matches(inner, c, ctx)?,
        SearchKey::Flag { flag, set } => {
            let has = match flag.to_ascii_lowercase().as_str() {
                "\\seen" => c.meta.flags.has(SystemFlag::Seen),
                "\\answered" => c.meta.flags.has(SystemFlag::Answered),
                "\\flagged" => c.meta.flags.has(SystemFlag::Flagged),
                "\\deleted" => c.meta.flags.has(SystemFlag::Deleted),
                "\\draft" => c.meta.flags.has(SystemFlag::Draft),
                _ => c
                    .meta
                    .flags
                    .keywords()
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(flag)),
            };
            has == *set
        }
        // \Recent as this session has it (none under IMAP4rev2, which dropped it); NEW is
        // RECENT UNSEEN (RFC 3501 6.4.4).
        SearchKey::Recent => ctx.recent.contains(c.meta.uid),
        SearchKey::New => ctx.recent.contains(c.meta.uid) && !c.meta.flags.has(SystemFlag::Seen),
        SearchKey::Old => !ctx.recent.contains(c.meta.uid),
        SearchKey::Larger(n) => c.meta.size > *n,
        SearchKey::Smaller(n) => c.meta.size < *n,
        SearchKey::Uid(set) => in_set(set, c.meta.uid, ctx.largest_uid, Some(ctx.saved)),
        SearchKey::Sequence(SequenceSet::Saved) => ctx.saved.binary_search(&c.meta.uid).is_ok(),
        SearchKey::Sequence(set) => in_set(set, c.seq, ctx.count, None),
        SearchKey::ModSeq(n) => c.meta.modseq >= *n,
        SearchKey::Before(day) | SearchKey::On(day) | SearchKey::Since(day) => {
            let date = c.meta.internal_date;
            let internal = day_of(date.unix_seconds, i64::from(date.offset_minutes));
            match key {
                SearchKey::Before(_) => internal < *day,
                SearchKey::On(_) => internal == *day,
                _ => internal >= *day,
            }
        }
        SearchKey::SentBefore(day) | SearchKey::SentOn(day) | SearchKey::SentSince(day) => {
            // The Date header's day as written, time and zone disregarded (RFC 3501 6.4.4).
            let summary = summary(c, ctx)?;
            let written = sealpost_mime::Shown::of_imap(&summary.envelope)
                .date
                .as_deref()
                .and_then(sealpost_mime::day_as_written);
            let Some(sent) = written.or_else(|| summary.sent_at.map(|at| day_of(at, 0))) else {
                return Ok(false);
            };
            match key {
                SearchKey::SentBefore(_) => sent < *day,
                SearchKey::SentOn(_) => sent == *day,
                _ => sent >= *day,
            }
        }
        SearchKey::Header { field, value } => {
            text(c, ctx)?.header(field).any(|v| contains(v, value))
        }
        SearchKey::Body(needle) => contains(&text(c, ctx)?.body, needle),
        SearchKey::Text(needle) => {
            let text = text(c, ctx)?;
            text.headers.iter().any(|(_, v)| contains(v, needle)) || contains(&text.body, needle)
        }
    })
}

fn summary<'c>(c: &'c mut Candidate<'_>, ctx: &Context<'_>) -> Result<&'c Summary> {
    if c.summary.is_none() {
        let bytes = ctx
            .store
            .message_summary(ctx.account, ctx.mailbox, c.meta.uid)?;
        let summary = match Summary::from_bytes(&bytes) {
            Some(summary) => summary,
            None => Summary::of(
                &ctx.store
                    .read_message(ctx.account, ctx.mailbox, c.meta.uid)?,
            ),
        };
        c.summary = Some(summary);
    }
    Ok(c.summary.get_or_insert_with(Summary::default))
}

/// The stored search text; for a message stored without one, decoded from its body.
fn text<'c>(c: &'c mut Candidate<'_>, ctx: &Context<'_>) -> Result<&'c SearchText> {
    if c.text.is_none() {
        let stored = ctx
            .store
            .message_search_text(ctx.account, ctx.mailbox, c.meta.uid)?;
        let text = match SearchText::from_bytes(&stored) {
            Some(text) => text,
            None => search_text(
                &ctx.store
                    .read_message(ctx.account, ctx.mailbox, c.meta.uid)?,
            )
            .lowercased(),
        };
        c.text = Some(text);
    }
    Ok(c.text.get_or_insert_with(SearchText::default))
}
