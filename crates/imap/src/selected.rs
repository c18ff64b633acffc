//! The selected state: a mailbox's messages as this session numbers them, the changes other
//! sessions make (announced at command boundaries, and at once during IDLE), and the commands
//! that work on messages.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sealpost_mime::{Limits, SectionText as MimeSection, Structure, Summary};
use sealpost_storage::{
    AuditEvent, FlagChange, MailboxEvent, MailboxEvents, MailboxId, MessageMeta, SpecialUse,
    SystemFlag,
};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::TryRecvError;

use crate::command::{
    CommandBody, FetchItem, Qresync, Ranges, SearchReturn, Section, SectionText, SequenceSet,
    StoreMode,
};
use crate::response;
use crate::session::{blocking, store_failure, Flow, Session};

/// Messages whose bodies one FETCH reads and writes out at a time (at most this many
/// message_bytes_max bodies are in memory for one session).
const FETCH_BODIES_PER_BATCH_MAX: usize = 16;
/// Bytes of message content one FETCH batch reads at a time (at least one message): with
/// the batch loading next and the output buffer, a session holds about three times this
/// plus one message's response, whatever the messages' sizes.
const FETCH_BATCH_CONTENT_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Messages whose metadata and summaries one FETCH reads at a time.
const FETCH_SUMMARIES_PER_BATCH_MAX: usize = 128;
/// The first batch of summaries is this small, and each next one twice the last, so that the
/// client reads the first responses while the server still loads the rest.
const FETCH_SUMMARIES_FIRST_BATCH: usize = 32;
/// One message's FETCH response may hold its content this many times over (BODY[] and the
/// BINARY of its parts, say) plus FETCH_RESPONSE_SLACK_BYTES; a FETCH asking for more (one
/// section a thousand times) is refused rather than built in memory.
const FETCH_RESPONSE_MESSAGE_COPIES_MAX: u64 = 3;
/// Room for structure, envelope, flags and the like beyond those copies, in bytes.
const FETCH_RESPONSE_SLACK_BYTES: u64 = 1024 * 1024;

pub(crate) struct Selected {
    pub(crate) id: MailboxId,
    pub(crate) name: String,
    pub(crate) read_only: bool,
    /// BACKUP: refuses changes with NO [CANNOT] even when selected read-write.
    pub(crate) protected: bool,
    /// UIDs by sequence number (index + 1), ascending.
    pub(crate) uids: Vec<u32>,
    /// How many of `uids` the client was told of (EXISTS less EXPUNGE): those past it
    /// arrived since, and one expunged before its EXISTS went out is never announced.
    announced: usize,
    events: MailboxEvents,
    /// Expunges seen but not yet announced (not allowed during FETCH, STORE, SEARCH).
    pending_expunges: BTreeSet<u32>,
    /// Flag changes by other sessions, to announce.
    pending_flags: BTreeSet<u32>,
    /// MODSEQs this session caused, whose events need no announcement.
    own_modseqs: BTreeSet<u64>,
    /// The result of the last SEARCH ... RETURN (SAVE), as UIDs, ascending (looked up by
    /// binary search).
    saved_search: Vec<u32>,
    /// The keywords this session was told of in FLAGS (and PERMANENTFLAGS): a FETCH may show
    /// only these (RFC 3501 7.2.6, RFC 9051 7.3.5), so a new one is announced first.
    keywords: Vec<String>,
    /// The messages that are \Recent in this session (none under IMAP4rev2).
    pub(crate) recent: Recent,
    /// Whether this session takes \Recent for new messages from every later session: an
    /// IMAP4rev1 session that selected the mailbox read-write (RFC 3501 2.3.2).
    claims_recent: bool,
}

/// The UIDs that are \Recent in one session: the ranges it claimed (or, read-only, saw
/// unclaimed), ascending. One range per time new mail arrived, merged where they touch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recent(Vec<std::ops::Range<u32>>);

impl Recent {
    pub(crate) fn contains(&self, uid: u32) -> bool {
        let at = self.0.partition_point(|range| range.end <= uid);
        self.0.get(at).is_some_and(|range| range.contains(&uid))
    }

    fn add(&mut self, range: std::ops::Range<u32>) {
        if range.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if range.start <= last.end => {
                last.start = last.start.min(range.start);
                last.end = last.end.max(range.end);
            }
            _ => self.0.push(range),
        }
    }

    /// Forgets the ranges that hold none of `uids` (ascending): the list stays no longer
    /// than the mailbox, however often sessions take turns claiming new mail.
    fn keep_within(&mut self, uids: &[u32]) {
        self.0.retain(|range| {
            uids.partition_point(|u| *u < range.end) > uids.partition_point(|u| *u < range.start)
        });
    }

    /// How many of `uids` (ascending) are recent.
    fn count(&self, uids: &[u32]) -> usize {
        self.0
            .iter()
            .map(|range| {
                uids.partition_point(|u| *u < range.end)
                    - uids.partition_point(|u| *u < range.start)
            })
            .sum()
    }
}

/// The keywords every mailbox's FLAGS name.
const KEYWORDS_ALWAYS: [&str; 3] = ["$Forwarded", "$Junk", "$NotJunk"];

/// The FLAGS and PERMANENTFLAGS responses for `keywords` (without the `* `).
fn flags_responses(keywords: &[String], read_only: bool) -> [String; 2] {
    let listed = keywords.join(" ");
    let flags = format!("FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft {listed})");
    let permanent = if read_only {
        "OK [PERMANENTFLAGS ()] no permanent flags in a read-only mailbox".to_string()
    } else {
        format!("OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft {listed} \\*)] flags permitted")
    };
    [flags, permanent]
}

/// Adds to `known` the keywords of `shown` it lacks; whether there were any.
fn learn_keywords<'a>(
    known: &mut Vec<String>,
    shown: impl IntoIterator<Item = &'a String>,
) -> bool {
    let mut added = false;
    for keyword in shown {
        if !known.iter().any(|k| k.eq_ignore_ascii_case(keyword)) {
            known.push(keyword.clone());
            added = true;
        }
    }
    added
}

/// UIDs that a sequence set names, in this mailbox, ascending. A message sequence number
/// past the last message is an error (BAD); UIDs that do not exist are simply skipped.
fn resolve_checked(set: &SequenceSet, uid: bool, selected: &Selected) -> Result<Vec<u32>, String> {
    if let (SequenceSet::Ranges(ranges), false) = (set, uid) {
        let count = selected.uids.len() as u32;
        if let Some(v) = ranges.greatest_written().filter(|v| *v > count) {
            return Err(format!(
                "message sequence number {v} does not exist ({count} messages)"
            ));
        }
        if ranges.has_star() && count == 0 {
            return Err("the mailbox is empty: * names no message".to_string());
        }
    }
    Ok(resolve(set, uid, selected))
}

/// UIDs that a sequence set names, in this mailbox, ascending. The merged ranges are clipped
/// to the mailbox first, so this costs O(ranges + messages named) whatever the client wrote.
fn resolve(set: &SequenceSet, uid: bool, selected: &Selected) -> Vec<u32> {
    let ranges = match set {
        SequenceSet::Saved => {
            return selected
                .saved_search
                .iter()
                .copied()
                .filter(|u| selected.uids.binary_search(u).is_ok())
                .collect()
        }
        SequenceSet::Ranges(ranges) => ranges,
    };
    named_uids(ranges, uid, &selected.uids)
}

/// The UIDs of `uids` (a mailbox's, ascending, by sequence number) that `ranges` name as UIDs
/// or as sequence numbers, ascending.
fn named_uids(ranges: &Ranges, uid: bool, uids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    if uid {
        let largest = uids.last().copied().unwrap_or(0);
        for (low, high) in ranges.bound(largest, largest) {
            let start = uids.partition_point(|u| *u < low);
            let rest = uids.get(start..).unwrap_or_default();
            out.extend(rest.iter().take_while(|u| **u <= high));
        }
    } else {
        let count = uids.len() as u32;
        for (low, high) in ranges.bound(count, count) {
            // bound() clipped the range to 1..=count.
            let named = uids
                .get(low as usize - 1..high as usize)
                .unwrap_or_default();
            out.extend_from_slice(named);
        }
    }
    out
}

/// A set of numbers in IMAP's compact form: `1:3,7,9:10`.
pub(crate) fn compact_set(numbers: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut iter = numbers.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
    }
    parts.join(",")
}

impl Selected {
    /// No message is \Recent any more, and none will be (the session enabled IMAP4rev2).
    pub(crate) fn drop_recent(&mut self) {
        self.recent = Recent::default();
        self.claims_recent = false;
    }

    fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    /// Takes the events that arrived since the last look. `false` if some were lost and the
    /// mailbox must be read again.
    fn drain_events(&mut self) -> bool {
        loop {
            match self.events.try_recv() {
                Ok(event) => self.note(event),
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return true,
                Err(TryRecvError::Lagged(_)) => return false,
            }
        }
    }

    fn note(&mut self, event: MailboxEvent) {
        match event {
            MailboxEvent::Appended { uid, .. } => {
                if self.uids.last().is_none_or(|last| *last < uid) {
                    self.uids.push(uid);
                }
            }
            MailboxEvent::FlagsChanged { uid, modseq } => {
                if !self.own_modseqs.remove(&modseq) {
                    self.pending_flags.insert(uid);
                }
            }
            MailboxEvent::Expunged { uid, .. } => {
                self.pending_expunges.insert(uid);
                self.pending_flags.remove(&uid);
            }
            MailboxEvent::Deleted => {}
        }
    }
}

impl Session {
    pub(crate) async fn select(
        &mut self,
        tag: &str,
        name: &str,
        examine: bool,
        condstore: bool,
        qresync: Option<Qresync>,
    ) {
        // A failed SELECT leaves no mailbox selected (RFC 9051 section 6.3.2).
        if self.selected.take().is_some() && self.enabled.qresync {
            self.untagged("OK [CLOSED] previous mailbox closed");
        }
        if qresync.is_some() && !self.enabled.qresync {
            return self.bad(tag, "QRESYNC needs ENABLE QRESYNC first");
        }
        if condstore {
            self.enabled.condstore = true;
        }
        let mailbox = match self.find_mailbox(name).await {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return self.no(tag, "[NONEXISTENT] no such mailbox"),
            Err(error) => return self.tagged_line_text(tag, &store_failure(&error)),
        };
        // Subscribe before reading, so that nothing falls between the read and the events.
        let events = self.store.subscribe(self.account_id(), mailbox.id);
        let (store, account, id) = (self.store.clone(), self.account_id(), mailbox.id);
        let protected = mailbox.special_use == Some(SpecialUse::Backup);
        let read_only = examine || protected;
        // \Recent is IMAP4rev1's: a read-write SELECT claims what no session saw yet; EXAMINE
        // shows it and leaves it for the next session (RFC 3501 2.3.2, 6.3.2).
        let rev1 = !self.enabled.rev2;
        let claims_recent = rev1 && !read_only;
        let (metas, mailbox, recent_range) = match blocking(move || {
            let metas = store.messages(account, id)?;
            // After the read: a message arriving between the two is claimed, and its event
            // (subscribed above) adds it to this session's list.
            let recent = if rev1 {
                store.claim_recent(account, id, claims_recent)?
            } else {
                0..0
            };
            Ok::<_, sealpost_storage::Error>((metas, store.mailbox(account, id)?, recent))
        })
        .await
        {
            Ok(found) => found,
            Err(error) => return self.tagged_line_text(tag, &store_failure(&error)),
        };
        let mut recent = Recent::default();
        recent.add(recent_range);
        let uids: Vec<u32> = metas.iter().map(|m| m.uid).collect();
        // FLAGS names every keyword a message here has, so that no FETCH shows one unannounced.
        let mut keywords: Vec<String> = KEYWORDS_ALWAYS.iter().map(|k| k.to_string()).collect();
        learn_keywords(&mut keywords, metas.iter().flat_map(|m| m.flags.keywords()));
        for line in flags_responses(&keywords, read_only) {
            self.untagged(&line);
        }
        self.untagged(&format!("{} EXISTS", uids.len()));
        if !self.enabled.rev2 {
            self.untagged(&format!("{} RECENT", recent.count(&uids)));
            if let Some(position) = metas.iter().position(|m| !m.flags.has(SystemFlag::Seen)) {
                self.untagged(&format!("OK [UNSEEN {}] first unseen", position + 1));
            }
        }
        self.untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            mailbox.uid_validity
        ));
        self.untagged(&format!(
            "OK [UIDNEXT {}] predicted next UID",
            mailbox.uid_next
        ));
        self.untagged(&format!(
            "OK [HIGHESTMODSEQ {}] highest",
            mailbox.highest_modseq
        ));
        if self.enabled.rev2 {
            let mut line = b"* LIST () \"/\" ".to_vec();
            response::mailbox(&mut line, &mailbox.name, self.names());
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
        let selected = Selected {
            id: mailbox.id,
            name: mailbox.name.clone(),
            read_only,
            protected,
            uids,
            events,
            announced: metas.len(),
            pending_expunges: BTreeSet::new(),
            pending_flags: BTreeSet::new(),
            own_modseqs: BTreeSet::new(),
            saved_search: Vec::new(),
            keywords,
            recent,
            claims_recent,
        };
        if let Some(qresync) = qresync.filter(|q| q.uid_validity == mailbox.uid_validity) {
            let (store, account, id) = (self.store.clone(), self.account_id(), mailbox.id);
            if let Ok(changes) =
                blocking(move || store.changes_since(account, id, qresync.modseq)).await
            {
                // Looked up range by range, never expanded: `*` is the last UID given out.
                let largest = mailbox.uid_next.saturating_sub(1);
                let vanished: Vec<u32> = changes
                    .expunged
                    .iter()
                    .copied()
                    .filter(|uid| {
                        qresync
                            .known_uids
                            .as_ref()
                            .is_none_or(|k| known_contains(k, *uid, largest))
                    })
                    .collect();
                if !vanished.is_empty() {
                    self.untagged(&format!("VANISHED (EARLIER) {}", compact_set(&vanished)));
                }
                let by_uid: HashMap<u32, &MessageMeta> = metas.iter().map(|m| (m.uid, m)).collect();
                for (uid, _) in &changes.changed {
                    if let (Some(meta), Some(seq)) = (by_uid.get(uid), selected.seq_of(*uid)) {
                        self.untagged(&format!(
                            "{seq} FETCH (UID {uid} FLAGS {} MODSEQ ({}))",
                            response::flags(&meta.flags, selected.recent.contains(*uid)),
                            meta.modseq
                        ));
                    }
                }
            }
        }
        self.selected = Some(selected);
        // What arrived between the read and the events' start is told now, as EXISTS.
        self.announce_changes(false).await;
        let mode = if read_only {
            "[READ-ONLY]"
        } else {
            "[READ-WRITE]"
        };
        self.ok(
            tag,
            &format!(
                "{mode} {} completed",
                if examine { "EXAMINE" } else { "SELECT" }
            ),
        );
    }

    pub(crate) fn tagged_line_text(&mut self, tag: &str, text: &str) {
        self.out
            .extend_from_slice(format!("{tag} {text}\r\n").as_bytes());
    }

    /// Tells the client what changed: new messages (EXISTS), flag changes by others (FETCH),
    /// and, where `expunges_allowed`, expunged messages (EXPUNGE, or VANISHED under QRESYNC).
    pub(crate) async fn announce_changes(&mut self, expunges_allowed: bool) {
        let account = self.account_id();
        let Some(selected) = self.selected.as_mut() else {
            return;
        };
        if !selected.drain_events() {
            // Fell behind: read the mailbox again and treat every difference as an event.
            let (store, id) = (self.store.clone(), selected.id);
            if let Ok(metas) = blocking(move || store.messages(account, id)).await {
                let Some(selected) = self.selected.as_mut() else {
                    return;
                };
                let now: BTreeSet<u32> = metas.iter().map(|m| m.uid).collect();
                for uid in &selected.uids {
                    if !now.contains(uid) {
                        selected.pending_expunges.insert(*uid);
                    }
                }
                let last = selected.uids.last().copied().unwrap_or(0);
                selected
                    .uids
                    .extend(now.iter().copied().filter(|u| *u > last));
                selected.pending_flags.extend(now.iter().copied());
                selected.events = self.store.subscribe(account, selected.id);
            }
        }
        let Some(selected) = self.selected.as_ref() else {
            return;
        };
        if selected.uids.len() > selected.announced && !self.enabled.rev2 {
            // New mail: this session's to claim as \Recent (or, read-only, to see as such).
            let (store, id, claim) = (self.store.clone(), selected.id, selected.claims_recent);
            if let Ok(range) = blocking(move || store.claim_recent(account, id, claim)).await {
                if let Some(selected) = self.selected.as_mut() {
                    selected.recent.add(range);
                }
            }
        }
        let Some(selected) = self.selected.as_mut() else {
            return;
        };
        let mut lines: Vec<String> = Vec::new();
        if expunges_allowed && !selected.pending_expunges.is_empty() {
            let gone: Vec<u32> = std::mem::take(&mut selected.pending_expunges)
                .into_iter()
                .filter(|u| selected.uids.binary_search(u).is_ok())
                .collect();
            // Only messages the client was told of are announced as gone; one that came and
            // went between two announcements just never appears.
            let last_told = selected
                .announced
                .checked_sub(1)
                .and_then(|i| selected.uids.get(i))
                .copied();
            let told: Vec<u32> = gone
                .iter()
                .copied()
                .filter(|u| last_told.is_some_and(|last| *u <= last))
                .collect();
            if self.enabled.qresync {
                if !told.is_empty() {
                    lines.push(format!("VANISHED {}", compact_set(&told)));
                }
            } else {
                // Highest first, so that each number is right when the client reads it (a
                // lower message keeps its number when a higher one goes); removed in one pass.
                for uid in told.iter().rev() {
                    if let Some(seq) = selected.seq_of(*uid) {
                        lines.push(format!("{seq} EXPUNGE"));
                    }
                }
            }
            selected.announced -= told.len();
            selected.uids.retain(|u| gone.binary_search(u).is_err());
            selected.recent.keep_within(&selected.uids);
        }
        let grown = selected.uids.len() > selected.announced;
        if grown {
            selected.announced = selected.uids.len();
            lines.push(format!("{} EXISTS", selected.uids.len()));
            if !self.enabled.rev2 {
                lines.push(format!("{} RECENT", selected.recent.count(&selected.uids)));
            }
        }
        let flagged: Vec<u32> = std::mem::take(&mut selected.pending_flags)
            .into_iter()
            .collect();
        let id = selected.id;
        for line in lines {
            self.untagged(&line);
        }
        if flagged.is_empty() {
            return;
        }
        let store = self.store.clone();
        let metas = blocking(move || {
            flagged
                .iter()
                .filter_map(|uid| store.message(account, id, *uid).ok())
                .collect::<Vec<_>>()
        })
        .await;
        self.announce_keywords(metas.iter().flat_map(|m| m.flags.keywords()));
        for meta in metas {
            let Some(selected) = self.selected.as_ref() else {
                return;
            };
            let Some(seq) = selected.seq_of(meta.uid) else {
                continue;
            };
            let recent = selected.recent.contains(meta.uid);
            let modseq = if self.enabled.condstore {
                format!(" MODSEQ ({})", meta.modseq)
            } else {
                String::new()
            };
            self.untagged(&format!(
                "{seq} FETCH (UID {} FLAGS {}{modseq})",
                meta.uid,
                response::flags(&meta.flags, recent)
            ));
        }
    }

    /// Announces, in FLAGS and PERMANENTFLAGS, the keywords among `shown` this session was not
    /// told of yet: called before any response that shows flags.
    fn announce_keywords<'a>(&mut self, shown: impl IntoIterator<Item = &'a String>) {
        let Some(selected) = self.selected.as_mut() else {
            return;
        };
        if learn_keywords(&mut selected.keywords, shown) {
            let lines = flags_responses(&selected.keywords, selected.read_only);
            for line in lines {
                self.untagged(&line);
            }
        }
    }

    pub(crate) async fn execute_selected(&mut self, tag: &str, body: CommandBody) {
        match body {
            CommandBody::Fetch {
                uid,
                set,
                items,
                changed_since,
                vanished,
            } => {
                let answer = self.fetch(uid, &set, &items, changed_since, vanished).await;
                // Before the tagged answer: what is announced after it would fall into the
                // next command's answer (an EXPUNGE during a FETCH, RFC 3501 7.4.1).
                self.announce_changes(uid).await;
                self.tagged_line_text(tag, &answer);
            }
            CommandBody::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.store_command(tag, uid, &set, mode, silent, &flags, unchanged_since)
                    .await;
            }
            CommandBody::Search {
                uid,
                returns,
                charset,
                criteria,
            } => {
                self.search(tag, uid, returns, charset, criteria).await;
            }
            CommandBody::Copy { uid, set, mailbox } => {
                self.copy_or_move(tag, uid, &set, &mailbox, false).await
            }
            CommandBody::Move { uid, set, mailbox } => {
                self.copy_or_move(tag, uid, &set, &mailbox, true).await
            }
            CommandBody::Expunge { uids } => self.expunge(tag, uids).await,
            CommandBody::Close => {
                let writable = self.selected.as_ref().is_some_and(|s| !s.read_only);
                if writable {
                    let (store, account) = (self.store.clone(), self.account_id());
                    if let Some(id) = self.selected_mailbox_id() {
                        let _ = blocking(move || store.expunge_deleted(account, id, None)).await;
                    }
                }
                self.selected = None;
                self.ok(tag, "CLOSE completed");
            }
            CommandBody::Unselect => {
                self.selected = None;
                self.ok(tag, "UNSELECT completed");
            }
            _ => self.bad(tag, "not a selected-state command"),
        }
    }

    fn not_writable(&mut self, tag: &str) -> bool {
        let Some(selected) = self.selected.as_ref() else {
            return true;
        };
        if selected.protected {
            self.no(
                tag,
                "[CANNOT] BACKUP is read-only: only retention rules change it",
            );
            return true;
        }
        if selected.read_only {
            self.no(tag, "[READ-ONLY] the mailbox is selected read-only");
            return true;
        }
        false
    }

    async fn fetch(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        items: &[FetchItem],
        changed_since: Option<u64>,
        vanished: bool,
    ) -> String {
        let Some(selected) = self.selected.as_ref() else {
            return "BAD no mailbox selected".to_string();
        };
        let uids = match resolve_checked(set, uid, selected) {
            Ok(uids) => uids,
            Err(error) => return format!("BAD {error}"),
        };
        let id = selected.id;
        let read_only = selected.read_only;
        let mut items = items.to_vec();
        if uid && !items.contains(&FetchItem::Uid) {
            items.insert(0, FetchItem::Uid);
        }
        if (changed_since.is_some() || self.enabled.condstore)
            && items.contains(&FetchItem::Flags)
            && !items.contains(&FetchItem::ModSeq)
        {
            items.push(FetchItem::ModSeq);
        }
        if changed_since.is_some() && !items.contains(&FetchItem::ModSeq) {
            items.push(FetchItem::ModSeq);
        }
        if items.contains(&FetchItem::ModSeq) {
            self.enabled.condstore = true;
        }
        if vanished {
            if let Some(since) = changed_since {
                let (store, account) = (self.store.clone(), self.account_id());
                if let Ok(changes) = blocking(move || store.changes_since(account, id, since)).await
                {
                    let gone: Vec<u32> = changes
                        .expunged
                        .into_iter()
                        .filter(|u| set_contains_uid(set, *u, &self.selected))
                        .collect();
                    if !gone.is_empty() {
                        self.untagged(&format!("VANISHED (EARLIER) {}", compact_set(&gone)));
                    }
                }
            }
        }
        let needs_body = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Section { .. }
                    | FetchItem::Binary { .. }
                    | FetchItem::BinarySize { .. }
                    | FetchItem::Rfc822
                    | FetchItem::Rfc822Header
                    | FetchItem::Rfc822Text
            )
        });
        let needs_summary = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Envelope | FetchItem::BodyStructure | FetchItem::Body
            )
        });
        // The whole message needs no parsing; parts, headers and BINARY do.
        let needs_structure = items.iter().any(|i| match i {
            FetchItem::Section { section, .. } => {
                !section.path.is_empty() || section.text.is_some()
            }
            FetchItem::Binary { .. }
            | FetchItem::BinarySize { .. }
            | FetchItem::Rfc822Header
            | FetchItem::Rfc822Text => true,
            _ => false,
        });
        let sets_seen = !read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    FetchItem::Section { peek: false, .. }
                        | FetchItem::Binary { peek: false, .. }
                        | FetchItem::Rfc822
                        | FetchItem::Rfc822Text
                )
            });
        let mut read_uids = Vec::new();
        let mut expunged = false;
        let needs = FetchNeeds {
            summary: needs_summary,
            body: needs_body,
            range: only_range(&items),
            structure: needs_structure,
            sets_seen,
        };
        // Sequence numbers do not change during a FETCH (changes are taken in after it).
        let Some(selected) = self.selected.as_ref() else {
            return "BAD no mailbox selected".to_string();
        };
        let numbered: Vec<(u32, u32)> = uids
            .iter()
            .filter_map(|uid| selected.seq_of(*uid).map(|seq| (*uid, seq)))
            .collect();
        let (store, account) = (self.store.clone(), self.account_id());
        let items = std::sync::Arc::new(items);
        let recent = std::sync::Arc::new(selected.recent.clone());
        let load = |wanted: Vec<(u32, u32)>| {
            let (store, items, recent) = (store.clone(), items.clone(), recent.clone());
            tokio::task::spawn_blocking(move || {
                load_fetch_batch(
                    &store,
                    account,
                    id,
                    &wanted,
                    needs,
                    &items,
                    changed_since,
                    &recent,
                )
            })
        };
        let mut batches = Batches::new(&numbered, needs_body);
        let mut pending = batches.next(0).map(load);
        let mut failed = None;
        while let Some(handle) = pending.take() {
            let loaded = match handle.await {
                Ok(loaded) => loaded,
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            };
            let batch = match loaded {
                Ok(batch) => batch,
                Err(error) => return store_failure(&error),
            };
            // The next batch loads while this one is written out and the client reads it. Not
            // when the FETCH sets \Seen: a batch after a failed one must change nothing.
            if !sets_seen {
                pending = batches.next(batch.consumed).map(load);
            }
            if let Some(selected) = self.selected.as_mut() {
                selected
                    .own_modseqs
                    .extend(batch.seen_now.iter().map(|(_, modseq)| *modseq));
            }
            self.announce_keywords(&batch.keywords);
            self.out.extend_from_slice(&batch.lines);
            read_uids.extend_from_slice(&batch.read);
            expunged |= batch.expunged;
            if batch.failed.is_some() {
                failed = batch.failed;
                break;
            }
            // A broken connection shows at the next read; nothing more to do here.
            let _ = self.flush().await;
            if sets_seen {
                pending = batches.next(batch.consumed).map(load);
            }
        }
        if !read_uids.is_empty() {
            let event = AuditEvent::new(
                &self.actor(),
                "message.read",
                format!("mailbox:{} uids:{}", id.0, compact_set(&read_uids)),
            )
            .detail(if needs_body {
                "imap fetch"
            } else {
                "imap fetch of the envelope or structure"
            });
            self.audit(event).await;
        }
        if let Some(code) = failed {
            return format!("NO {code}");
        }
        // A UID FETCH announces the expunges before its answer (below), and a UID that does
        // not exist is no error (RFC 9051 6.4.9).
        if expunged && !uid {
            // RFC 9051 7.1: the rest went out; the client learns which went at its next NOOP.
            return "NO [EXPUNGEISSUED] some of the messages were expunged by another session"
                .to_string();
        }
        "OK FETCH completed".to_string()
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_command(
        &mut self,
        tag: &str,
        uid: bool,
        set: &SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) {
        if self.not_writable(tag) {
            return;
        }
        let flags = match response::parse_flags(flags) {
            Ok(flags) => flags,
            Err(error) => return self.bad(tag, &error),
        };
        let change = match mode {
            StoreMode::Replace => FlagChange::Replace(flags),
            StoreMode::Add => FlagChange::Add(flags),
            StoreMode::Remove => FlagChange::Remove(flags),
        };
        let Some(selected) = self.selected.as_ref() else {
            return;
        };
        let uids = match resolve_checked(set, uid, selected) {
            Ok(uids) => uids,
            Err(error) => return self.bad(tag, &error),
        };
        let id = selected.id;
        if unchanged_since.is_some() {
            self.enabled.condstore = true;
        }
        let (store, account) = (self.store.clone(), self.account_id());
        let outcome =
            match blocking(move || store.store_flags(account, id, &uids, &change, unchanged_since))
                .await
            {
                Ok(outcome) => outcome,
                Err(error) => return self.tagged_line_text(tag, &store_failure(&error)),
            };
        let condstore = self.enabled.condstore;
        let mut lines = Vec::new();
        if let Some(selected) = self.selected.as_mut() {
            for meta in &outcome.changed {
                selected.own_modseqs.insert(meta.modseq);
            }
            let reported = outcome.changed.iter().chain(
                if silent {
                    None
                } else {
                    Some(&outcome.unchanged)
                }
                .into_iter()
                .flatten(),
            );
            for meta in reported {
                if silent && !condstore {
                    continue;
                }
                let Some(seq) = selected.seq_of(meta.uid) else {
                    continue;
                };
                let uid_part = if uid {
                    format!("UID {} ", meta.uid)
                } else {
                    String::new()
                };
                let modseq = if condstore {
                    format!(" MODSEQ ({})", meta.modseq)
                } else {
                    String::new()
                };
                let flags = if silent {
                    String::new()
                } else {
                    format!(
                        "FLAGS {}",
                        response::flags(&meta.flags, selected.recent.contains(meta.uid))
                    )
                };
                // One space between parts: .SILENT under CONDSTORE has no FLAGS between them.
                let parts = [uid_part.trim(), flags.as_str(), modseq.trim()];
                let body = parts
                    .iter()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                lines.push(format!("{seq} FETCH ({body})"));
            }
        }
        if !silent {
            self.announce_keywords(
                outcome
                    .changed
                    .iter()
                    .chain(&outcome.unchanged)
                    .flat_map(|m| m.flags.keywords()),
            );
        }
        for line in lines {
            self.untagged(&line);
        }
        self.announce_changes(uid).await;
        if outcome.conflicts.is_empty() {
            self.ok(tag, "STORE completed");
        } else {
            let numbers: Vec<u32> = if uid {
                outcome.conflicts.clone()
            } else {
                let selected = self.selected.as_ref();
                outcome
                    .conflicts
                    .iter()
                    .filter_map(|u| selected.and_then(|s| s.seq_of(*u)))
                    .collect()
            };
            self.ok(
                tag,
                &format!(
                    "[MODIFIED {}] some messages changed since",
                    compact_set(&numbers)
                ),
            );
        }
    }

    async fn copy_or_move(
        &mut self,
        tag: &str,
        uid: bool,
        set: &SequenceSet,
        target: &str,
        is_move: bool,
    ) {
        if is_move && self.not_writable(tag) {
            return;
        }
        let destination = match self.find_mailbox(target).await {
            Ok(Some(found)) => found,
            Ok(None) => return self.no(tag, "[TRYCREATE] no such mailbox"),
            Err(error) => return self.tagged_line_text(tag, &store_failure(&error)),
        };
        let Some(selected) = self.selected.as_ref() else {
            return;
        };
        let uids = match resolve_checked(set, uid, selected) {
            Ok(uids) => uids,
            Err(error) => return self.bad(tag, &error),
        };
        let id = selected.id;
        if uids.is_empty() {
            return self.ok(
                tag,
                if is_move {
                    "MOVE completed (nothing to move)"
                } else {
                    "COPY completed (nothing to copy)"
                },
            );
        }
        let (store, account) = (self.store.clone(), self.account_id());
        let wanted = uids.clone();
        let result = blocking(move || {
            if is_move {
                store.move_messages(account, id, &wanted, destination.id)
            } else {
                store.copy_messages(account, id, &wanted, destination.id)
            }
        })
        .await;
        let pairs = match result {
            Ok(pairs) => pairs,
            Err(error) => return self.tagged_line_text(tag, &store_failure(&error)),
        };
        if pairs.is_empty() {
            // Every message named was expunged by another session meanwhile (RFC 2180 4.4.1);
            // a COPYUID with empty sets would not parse.
            self.announce_changes(uid || is_move).await;
            return self.no(
                tag,
                "[EXPUNGEISSUED] the messages were expunged by another session",
            );
        }
        let (sources, targets): (Vec<u32>, Vec<u32>) = pairs.iter().copied().unzip();
        let code = format!(
            "COPYUID {} {} {}",
            destination.uid_validity,
            compact_set(&sources),
            compact_set(&targets)
        );
        if is_move {
            self.untagged(&format!("OK [{code}] moved"));
            if let Some(selected) = self.selected.as_mut() {
                selected.pending_expunges.extend(sources.iter().copied());
            }
            self.announce_changes(true).await;
            self.ok(tag, "MOVE completed");
        } else {
            self.announce_changes(uid).await;
            self.ok(tag, &format!("[{code}] COPY completed"));
        }
    }

    async fn expunge(&mut self, tag: &str, only: Option<SequenceSet>) {
        if self.not_writable(tag) {
            return;
        }
        let Some(selected) = self.selected.as_ref() else {
            return;
        };
        let within = only.as_ref().map(|set| resolve(set, true, selected));
        let id = selected.id;
        let (store, account) = (self.store.clone(), self.account_id());
        match blocking(move || store.expunge_deleted(account, id, within.as_deref())).await {
            Ok(gone) => {
                if let Some(selected) = self.selected.as_mut() {
                    selected.pending_expunges.extend(gone.iter().copied());
                }
                self.announce_changes(true).await;
                self.ok(tag, "EXPUNGE completed");
            }
            Err(error) => self.tagged_line_text(tag, &store_failure(&error)),
        }
    }

    async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<Vec<SearchReturn>>,
        charset: Option<String>,
        criteria: crate::command::SearchKey,
    ) {
        if let Some(charset) = charset
            .filter(|c| !c.eq_ignore_ascii_case("UTF-8") && !c.eq_ignore_ascii_case("US-ASCII"))
        {
            return self.no(
                tag,
                &format!("[BADCHARSET (UTF-8 US-ASCII)] {charset} is not supported"),
            );
        }
        let Some(selected) = self.selected.as_ref() else {
            return;
        };
        let id = selected.id;
        let uids = selected.uids.clone();
        let saved = selected.saved_search.clone();
        let recent = selected.recent.clone();
        let (store, account) = (self.store.clone(), self.account_id());
        let key = criteria.clone();
        let found = blocking(move || {
            crate::search::evaluate(&store, account, id, &uids, &saved, &recent, &key)
        })
        .await;
        let (matches, modseqs) = match found {
            Ok(found) => found,
            Err(error) => return self.tagged_line_text(tag, &store_failure(&error)),
        };
        let uses_modseq = crate::search::uses_modseq(&criteria);
        if uses_modseq {
            self.enabled.condstore = true;
        }
        let Some(selected) = self.selected.as_mut() else {
            return;
        };
        let numbers: Vec<u32> = if uid {
            matches.clone()
        } else {
            matches.iter().filter_map(|u| selected.seq_of(*u)).collect()
        };
        let highest_modseq = modseqs.iter().copied().max().unwrap_or(0);
        let modseq_part = if uses_modseq && !numbers.is_empty() {
            format!(" (MODSEQ {highest_modseq})")
        } else {
            String::new()
        };
        let extended = returns.is_some() || self.enabled.rev2;
        if !extended {
            let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
            let line = format!(
                "SEARCH{}{}{modseq_part}",
                if list.is_empty() { "" } else { " " },
                list.join(" ")
            );
            self.untagged(&line);
            self.announce_changes(uid).await;
            return self.ok(tag, "SEARCH completed");
        }
        let mut options = returns.unwrap_or_default();
        if options.is_empty() {
            options.push(SearchReturn::All);
        }
        if options.contains(&SearchReturn::Save) {
            selected.saved_search = matches.clone();
        }
        let only_save = options.iter().all(|o| *o == SearchReturn::Save);
        if !only_save {
            let mut line = format!("ESEARCH (TAG \"{tag}\")");
            if uid {
                line.push_str(" UID");
            }
            for option in &options {
                match option {
                    SearchReturn::Min if !numbers.is_empty() => {
                        line.push_str(&format!(" MIN {}", numbers[0]))
                    }
                    SearchReturn::Max if !numbers.is_empty() => {
                        line.push_str(&format!(" MAX {}", numbers[numbers.len() - 1]))
                    }
                    SearchReturn::Count => line.push_str(&format!(" COUNT {}", numbers.len())),
                    SearchReturn::All if !numbers.is_empty() => {
                        line.push_str(&format!(" ALL {}", compact_set(&numbers)))
                    }
                    _ => {}
                }
            }
            if uses_modseq && !numbers.is_empty() {
                // With only MIN and MAX returned, the mod-sequence of those messages; with ALL
                // or COUNT, of every match (RFC 4731 3.2 with RFC 7162 3.1.5).
                let every = options
                    .iter()
                    .any(|o| matches!(o, SearchReturn::All | SearchReturn::Count));
                let modseq = if every {
                    highest_modseq
                } else {
                    let mut returned = Vec::new();
                    if options.contains(&SearchReturn::Min) {
                        returned.push(modseqs[0]);
                    }
                    if options.contains(&SearchReturn::Max) {
                        returned.push(modseqs[modseqs.len() - 1]);
                    }
                    returned.into_iter().max().unwrap_or(highest_modseq)
                };
                line.push_str(&format!(" MODSEQ {modseq}"));
            }
            self.untagged(&line);
        }
        self.announce_changes(uid).await;
        self.ok(tag, "SEARCH completed");
    }

    /// IDLE: tells the client of changes as they happen until it says DONE.
    pub(crate) async fn idle(&mut self, tag: &str) -> std::io::Result<Flow> {
        self.out.extend_from_slice(b"+ idling\r\n");
        self.release_buffers();
        self.announce_changes(true).await;
        self.flush().await?;
        let timeout = Duration::from_millis(self.config.idle_timeout_ms);
        let mut buffer = [0u8; 512];
        loop {
            if let Some(frame) = self.framer.next_frame() {
                return match frame {
                    crate::framer::Frame::Command(line)
                        if line.trim_ascii().eq_ignore_ascii_case(b"DONE") =>
                    {
                        self.announce_changes(true).await;
                        self.ok(tag, "IDLE terminated");
                        Ok(Flow::Continue)
                    }
                    _ => {
                        self.bad(tag, "expected DONE");
                        Ok(Flow::Continue)
                    }
                };
            }
            let mut shutdown = self.shutdown.clone();
            let mut events = self.selected.as_ref().map(|s| s.events.resubscribe());
            let Some(stream) = self.stream_mut() else {
                return Ok(Flow::Close);
            };
            let event_arrived = async {
                match events.as_mut() {
                    Some(receiver) => {
                        let _ = receiver.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                read = tokio::time::timeout(timeout, stream.read(&mut buffer)) => match read {
                    Err(_) => {
                        self.untagged("BYE idle for too long, closing");
                        return Ok(Flow::Close);
                    }
                    Ok(Ok(0)) => return Ok(Flow::Close),
                    Ok(Ok(n)) => self.framer.push(&buffer[..n]),
                    Ok(Err(error)) => return Err(error),
                },
                () = event_arrived => {
                    self.announce_changes(true).await;
                    self.flush().await?;
                }
                () = crate::session::until_stopped(&mut shutdown) => {
                    let bye = self.stop_reason();
                    self.out.extend_from_slice(bye);
                    return Ok(Flow::Close);
                }
            }
        }
    }
}

/// Whether a UID set given by the client names `uid` (for VANISHED, which reports UIDs the
/// session may no longer know).
fn set_contains_uid(set: &SequenceSet, uid: u32, selected: &Option<Selected>) -> bool {
    match set {
        SequenceSet::Saved => selected
            .as_ref()
            .is_some_and(|s| s.saved_search.binary_search(&uid).is_ok()),
        SequenceSet::Ranges(ranges) => ranges.contains(uid, u32::MAX),
    }
}

/// Whether a QRESYNC known-UID set names `uid` (`$` is no known-UID set: it names nothing).
fn known_contains(set: &SequenceSet, uid: u32, largest: u32) -> bool {
    match set {
        SequenceSet::Saved => false,
        SequenceSet::Ranges(ranges) => ranges.contains(uid, largest),
    }
}

/// The name a section is reported under: `BODY[1.HEADER.FIELDS (FROM)]`.
fn section_name(section: &Section) -> String {
    let mut name: Vec<String> = section.path.iter().map(u32::to_string).collect();
    if let Some(text) = &section.text {
        name.push(match text {
            SectionText::Header => "HEADER".to_string(),
            SectionText::Text => "TEXT".to_string(),
            SectionText::Mime => "MIME".to_string(),
            SectionText::HeaderFields { fields, not } => format!(
                "HEADER.FIELDS{} ({})",
                if *not { ".NOT" } else { "" },
                fields
                    .iter()
                    .map(|f| f.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        });
    }
    name.join(".")
}

fn partial_slice(bytes: &[u8], partial: Option<(u64, u64)>) -> (&[u8], Option<u64>) {
    let Some((offset, length)) = partial else {
        return (bytes, None);
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = usize::try_from(offset.saturating_add(length))
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    (&bytes[start..end], Some(offset))
}

/// The bytes of a section, or `None` when the message has no such part (an empty string
/// then, as RFC 9051 says).
fn section_bytes(raw: &[u8], structure: &Structure, section: &Section) -> Vec<u8> {
    let text = match &section.text {
        None => MimeSection::Whole,
        Some(SectionText::Header) | Some(SectionText::HeaderFields { .. }) => MimeSection::Header,
        Some(SectionText::Text) => MimeSection::Text,
        Some(SectionText::Mime) => MimeSection::Mime,
    };
    let Some(range) = structure.section_range(raw.len(), &section.path, text) else {
        return Vec::new();
    };
    match &section.text {
        Some(SectionText::HeaderFields { fields, not }) => {
            let names: Vec<&str> = fields.iter().map(String::as_str).collect();
            sealpost_mime::header_fields(raw, range, &names, *not)
        }
        _ => raw[range].to_vec(),
    }
}

/// Writes one FETCH item. `Err` carries a NO response code for the whole command.
fn write_item(
    out: &mut Vec<u8>,
    item: &FetchItem,
    meta: &MessageMeta,
    recent: bool,
    content: Option<&Content>,
    structure: Option<&Structure>,
    summary: Option<&Summary>,
) -> Result<(), &'static str> {
    let raw = content.and_then(Content::whole);
    let empty = Summary::default();
    let summary = summary.unwrap_or(&empty);
    match item {
        FetchItem::Uid => out.extend_from_slice(format!("UID {}", meta.uid).as_bytes()),
        FetchItem::Flags => out.extend_from_slice(
            format!("FLAGS {}", response::flags(&meta.flags, recent)).as_bytes(),
        ),
        FetchItem::InternalDate => out.extend_from_slice(
            format!(
                "INTERNALDATE {}",
                response::internal_date(meta.internal_date)
            )
            .as_bytes(),
        ),
        FetchItem::Rfc822Size => {
            out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes())
        }
        FetchItem::ModSeq => out.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes()),
        FetchItem::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            out.extend_from_slice(&summary.envelope);
        }
        FetchItem::BodyStructure => {
            out.extend_from_slice(b"BODYSTRUCTURE ");
            out.extend_from_slice(&summary.body_structure);
        }
        FetchItem::Body => {
            out.extend_from_slice(b"BODY ");
            out.extend_from_slice(&summary.body);
        }
        FetchItem::Rfc822 => {
            let Some(raw) = raw else {
                return Err("[SERVERBUG] body not loaded");
            };
            out.extend_from_slice(b"RFC822 ");
            response::literal(out, raw);
        }
        FetchItem::Section {
            section, partial, ..
        } if section.path.is_empty() && section.text.is_none() => {
            let (slice, origin) = match content {
                Some(Content::Whole(raw)) => partial_slice(raw, *partial),
                Some(Content::Range { offset, bytes }) => (bytes.as_slice(), Some(*offset)),
                None => return Err("[SERVERBUG] body not loaded"),
            };
            out.extend_from_slice(b"BODY[]");
            if let Some(origin) = origin {
                out.extend_from_slice(format!("<{origin}>").as_bytes());
            }
            out.push(b' ');
            response::literal(out, slice);
        }
        FetchItem::Rfc822Header | FetchItem::Rfc822Text => {
            let (Some(raw), Some(structure)) = (raw, structure) else {
                return Err("[SERVERBUG] body not loaded");
            };
            let (name, text) = match item {
                FetchItem::Rfc822Header => ("RFC822.HEADER", Some(SectionText::Header)),
                _ => ("RFC822.TEXT", Some(SectionText::Text)),
            };
            let bytes = section_bytes(
                raw,
                structure,
                &Section {
                    path: Vec::new(),
                    text,
                },
            );
            out.extend_from_slice(format!("{name} ").as_bytes());
            response::literal(out, &bytes);
        }
        FetchItem::Section {
            section, partial, ..
        } => {
            let (Some(raw), Some(structure)) = (raw, structure) else {
                return Err("[SERVERBUG] body not loaded");
            };
            let bytes = section_bytes(raw, structure, section);
            let (slice, origin) = partial_slice(&bytes, *partial);
            out.extend_from_slice(format!("BODY[{}]", section_name(section)).as_bytes());
            if let Some(origin) = origin {
                out.extend_from_slice(format!("<{origin}>").as_bytes());
            }
            out.push(b' ');
            response::literal(out, slice);
        }
        FetchItem::BinarySize { path } => {
            let (Some(raw), Some(structure)) = (raw, structure) else {
                return Err("[SERVERBUG] body not loaded");
            };
            let decoded = decoded_part(raw, structure, path)?;
            let name = path
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".");
            out.extend_from_slice(format!("BINARY.SIZE[{name}] {}", decoded.len()).as_bytes());
        }
        FetchItem::Binary { path, partial, .. } => {
            let (Some(raw), Some(structure)) = (raw, structure) else {
                return Err("[SERVERBUG] body not loaded");
            };
            let decoded = decoded_part(raw, structure, path)?;
            let name = path
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".");
            let (slice, origin) = partial_slice(&decoded, *partial);
            out.extend_from_slice(format!("BINARY[{name}]").as_bytes());
            if let Some(origin) = origin {
                out.extend_from_slice(format!("<{origin}>").as_bytes());
            }
            out.push(b' ');
            if slice.contains(&0) {
                out.push(b'~');
            }
            response::literal(out, slice);
        }
    }
    Ok(())
}

/// A part's content with its transfer encoding undone (BINARY).
fn decoded_part(raw: &[u8], structure: &Structure, path: &[u32]) -> Result<Vec<u8>, &'static str> {
    let index = if path.is_empty() {
        Some(0)
    } else {
        structure.resolve(path)
    };
    let Some(part) = index.and_then(|i| structure.parts.get(i)) else {
        return Ok(Vec::new());
    };
    // A multipart (or the whole message, when it is one) has no transfer encoding of its own
    // (RFC 2045 6.4): its content is returned as stored, as BODY[] and BODY[n] return it
    // (RFC 3516, RFC 9051 6.4.5). UNKNOWN-CTE is for encodings that cannot be undone.
    if !matches!(part.content, sealpost_mime::Content::Single) {
        return Ok(if path.is_empty() {
            raw.to_vec()
        } else {
            raw[part.body.clone()].to_vec()
        });
    }
    let body = &raw[part.body.clone()];
    match part.encoding.to_ascii_lowercase().as_str() {
        "7bit" | "8bit" | "binary" => Ok(body.to_vec()),
        "base64" => {
            sealpost_mime::decode_base64(body).ok_or("[UNKNOWN-CTE] the base64 does not decode")
        }
        "quoted-printable" => sealpost_mime::decode_quoted_printable(body)
            .ok_or("[UNKNOWN-CTE] the quoted-printable does not decode"),
        _ => Err("[UNKNOWN-CTE] unknown Content-Transfer-Encoding"),
    }
}

/// What one FETCH has to load besides message metadata.
#[derive(Clone, Copy)]
struct FetchNeeds {
    summary: bool,
    body: bool,
    /// Every content item is `BODY[]<offset.length>` with this one range: only its chunks
    /// are read and decrypted, not the whole message.
    range: Option<(u64, u64)>,
    /// MIME structure, parsed from the body (parts, headers, BINARY).
    structure: bool,
    sets_seen: bool,
}

/// A message's content as one FETCH loaded it.
enum Content {
    Whole(Vec<u8>),
    /// The bytes of `BODY[]<offset.length>` alone (fewer at the message's end).
    Range {
        offset: u64,
        bytes: Vec<u8>,
    },
}

impl Content {
    /// The whole message, if it was read whole.
    fn whole(&self) -> Option<&[u8]> {
        match self {
            Content::Whole(raw) => Some(raw),
            Content::Range { .. } => None,
        }
    }
}

/// The one range every content item of a FETCH asks for, when each is `BODY[]<o.n>` (or its
/// PEEK) of the whole message and they agree; `None` when any needs more than that range.
fn only_range(items: &[FetchItem]) -> Option<(u64, u64)> {
    let mut range = None;
    for item in items {
        match item {
            FetchItem::Section {
                section,
                partial: Some(partial),
                ..
            } if section.path.is_empty() && section.text.is_none() => {
                if range.is_some_and(|r| r != *partial) {
                    return None;
                }
                range = Some(*partial);
            }
            FetchItem::Section { .. }
            | FetchItem::Binary { .. }
            | FetchItem::BinarySize { .. }
            | FetchItem::Rfc822
            | FetchItem::Rfc822Header
            | FetchItem::Rfc822Text => return None,
            _ => {}
        }
    }
    range
}

/// One batch of a FETCH, loaded and written out on the blocking pool: parsing MIME,
/// undoing transfer encodings and copying sections cost as much as the messages are large,
/// and must not hold a runtime thread that other sessions need.
struct FetchBatch {
    /// `* n FETCH (...)` lines, whole.
    lines: Vec<u8>,
    /// (UID, MODSEQ) of the messages this FETCH marked \Seen.
    seen_now: BTreeSet<(u32, u64)>,
    /// UIDs whose content went out (audited).
    read: Vec<u32>,
    /// An item that could not be written: the FETCH ends with NO and this response code,
    /// after the lines of the messages before it.
    failed: Option<&'static str>,
    /// How many of the batch's (UID, sequence number) pairs it covered: fewer than asked
    /// when their bodies would pass FETCH_BATCH_CONTENT_BYTES_MAX; the rest go next.
    consumed: usize,
    /// The keywords its lines show (announced before them when new to the session).
    keywords: Vec<String>,
    /// Some messages asked for were expunged by another session (still numbered here until
    /// announced): they are left out and the FETCH ends with NO [EXPUNGEISSUED].
    expunged: bool,
}

/// The (UID, sequence number) pairs of one FETCH cut into bounded batches, each written out
/// before the one after next is loaded: a FETCH of a whole large mailbox holds at most two
/// batches in memory. Bodies go FETCH_BODIES_PER_BATCH_MAX at a time; summaries start small
/// and double up to FETCH_SUMMARIES_PER_BATCH_MAX.
struct Batches<'a> {
    numbered: &'a [(u32, u32)],
    bodies: bool,
    /// Pairs handed out and covered so far.
    at: usize,
    size: usize,
}

impl<'a> Batches<'a> {
    fn new(numbered: &'a [(u32, u32)], bodies: bool) -> Self {
        let size = if bodies {
            FETCH_BODIES_PER_BATCH_MAX
        } else {
            FETCH_SUMMARIES_FIRST_BATCH
        };
        Self {
            numbered,
            bodies,
            at: 0,
            size,
        }
    }

    /// The next batch, after the last one covered `consumed` of its pairs (0 before the
    /// first): the pairs it left come first.
    fn next(&mut self, consumed: usize) -> Option<Vec<(u32, u32)>> {
        if consumed > 0 {
            self.at += consumed;
            if !self.bodies {
                self.size = (self.size * 2).min(FETCH_SUMMARIES_PER_BATCH_MAX);
            }
        }
        let rest = self
            .numbered
            .get(self.at..)
            .filter(|rest| !rest.is_empty())?;
        Some(rest[..self.size.min(rest.len())].to_vec())
    }
}

/// One blocking trip per batch: metadata, and bodies or summaries if asked; \Seen set first
/// when the FETCH reads content of a writable mailbox; then the response lines, each body
/// dropped once its line is written.
#[allow(clippy::too_many_arguments)]
fn load_fetch_batch(
    store: &sealpost_storage::Store,
    account: sealpost_storage::AccountId,
    id: MailboxId,
    numbered: &[(u32, u32)],
    needs: FetchNeeds,
    items: &[FetchItem],
    changed_since: Option<u64>,
    recent: &Recent,
) -> Result<FetchBatch, sealpost_storage::Error> {
    let wanted: Vec<u32> = numbered.iter().map(|(uid, _)| *uid).collect();
    let mut summaries: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut metas: HashMap<u32, MessageMeta> = if needs.summary {
        let pairs = store.message_summaries(account, id, &wanted)?;
        let mut metas = HashMap::with_capacity(pairs.len());
        for (meta, summary) in pairs {
            summaries.insert(meta.uid, summary);
            metas.insert(meta.uid, meta);
        }
        metas
    } else if wanted.len() > 64 {
        store
            .messages(account, id)?
            .into_iter()
            .map(|m| (m.uid, m))
            .collect()
    } else {
        wanted
            .iter()
            .filter_map(|u| store.message(account, id, *u).ok().map(|m| (*u, m)))
            .collect()
    };
    // Bodies: as many as fit in FETCH_BATCH_CONTENT_BYTES_MAX (at least one), decided from
    // the sizes before any body is read or \Seen set.
    let numbered = if needs.body {
        let mut bytes = 0u64;
        let fits = numbered
            .iter()
            .position(|(uid, _)| {
                let size = metas.get(uid).map_or(0, |m| m.size);
                let read = needs.range.map_or(size, |(_, length)| size.min(length));
                bytes = bytes.saturating_add(read);
                bytes > FETCH_BATCH_CONTENT_BYTES_MAX
            })
            .unwrap_or(numbered.len())
            .max(1);
        &numbered[..fits.min(numbered.len())]
    } else {
        numbered
    };
    let wanted: Vec<u32> = numbered.iter().map(|(uid, _)| *uid).collect();
    let mut seen_now = BTreeSet::new();
    if needs.sets_seen {
        let unseen: Vec<u32> = wanted
            .iter()
            .copied()
            .filter(|u| metas.get(u).is_some_and(|m| !m.flags.has(SystemFlag::Seen)))
            .collect();
        if !unseen.is_empty() {
            let stored = store.store_flags(
                account,
                id,
                &unseen,
                &FlagChange::Add(sealpost_storage::Flags::new().with(SystemFlag::Seen)),
                None,
            )?;
            seen_now.extend(stored.changed.into_iter().map(|m| (m.uid, m.modseq)));
        }
    }
    let seen_modseqs: HashMap<u32, u64> = seen_now.iter().copied().collect();
    let mut batch = FetchBatch {
        lines: Vec::new(),
        seen_now,
        read: Vec::new(),
        failed: None,
        consumed: numbered.len(),
        keywords: Vec::new(),
        expunged: false,
    };
    for (uid, seq) in numbered {
        let Some(mut meta) = metas.remove(uid) else {
            batch.expunged = true;
            continue;
        };
        let seen_modseq = seen_modseqs.get(uid).copied();
        if let Some(modseq) = seen_modseq {
            meta.flags = meta.flags.clone().with(SystemFlag::Seen);
            meta.modseq = modseq;
        }
        if changed_since.is_some_and(|since| meta.modseq <= since) {
            continue;
        }
        let raw = if needs.body {
            let read = match needs.range {
                Some((offset, length)) => store
                    .read_message_range(account, id, *uid, offset, length)
                    .map(|bytes| Content::Range { offset, bytes }),
                None => store.read_message(account, id, *uid).map(Content::Whole),
            };
            match read {
                Ok(content) => Some(content),
                // Expunged by another session since its metadata was read.
                Err(sealpost_storage::Error::MessageNotFound { .. }) => {
                    batch.expunged = true;
                    continue;
                }
                Err(error) => return Err(error),
            }
        } else {
            None
        };
        let summary = if needs.summary {
            let bytes = summaries.remove(uid).unwrap_or_default();
            Some(Summary::from_bytes(&bytes).unwrap_or_else(|| {
                raw.as_ref()
                    .and_then(Content::whole)
                    .map(Summary::of)
                    .unwrap_or_default()
            }))
        } else {
            None
        };
        let structure = raw
            .as_ref()
            .and_then(Content::whole)
            .filter(|_| needs.structure)
            .map(|r| Structure::parse(r, Limits::default()));
        // \Seen set by this FETCH is reported even when FLAGS was not asked for.
        let seen_flags = (seen_modseq.is_some() && !items.contains(&FetchItem::Flags))
            .then_some(FetchItem::Flags);
        if items.contains(&FetchItem::Flags) || seen_flags.is_some() {
            learn_keywords(&mut batch.keywords, meta.flags.keywords());
        }
        let line_start = batch.lines.len();
        batch
            .lines
            .extend_from_slice(format!("* {seq} FETCH (").as_bytes());
        for (n, item) in items.iter().chain(seen_flags.iter()).enumerate() {
            if n > 0 {
                batch.lines.push(b' ');
            }
            let written = write_item(
                &mut batch.lines,
                item,
                &meta,
                recent.contains(meta.uid),
                raw.as_ref(),
                structure.as_ref(),
                summary.as_ref(),
            );
            let written = written.and_then(|()| {
                let response_bytes = (batch.lines.len() - line_start) as u64;
                let response_bytes_max = meta
                    .size
                    .saturating_mul(FETCH_RESPONSE_MESSAGE_COPIES_MAX)
                    .saturating_add(FETCH_RESPONSE_SLACK_BYTES);
                if response_bytes > response_bytes_max {
                    return Err(
                        "[LIMIT] that would send one message's content more than 3 times over",
                    );
                }
                Ok(())
            });
            if let Err(code) = written {
                batch.lines.truncate(line_start);
                batch.failed = Some(code);
                return Ok(batch);
            }
        }
        batch.lines.extend_from_slice(b")\r\n");
        // The content, and the envelope and structure (subjects, addresses, file names), are
        // reads of patient data: audited alike. Flags, sizes and dates are not.
        if raw.is_some() || summary.is_some() {
            batch.read.push(*uid);
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::{named_uids, Batches};

    #[test]
    fn batches_go_on_from_what_the_last_one_covered() {
        let numbered: Vec<(u32, u32)> = (1..=40).map(|n| (n * 10, n)).collect();
        let mut bodies = Batches::new(&numbered, true);
        assert_eq!(bodies.next(0).unwrap().len(), 16);
        // The first batch's bodies passed the byte bound after 3 messages: the 4th is in the next.
        let second = bodies.next(3).unwrap();
        assert_eq!((second[0], second.len()), ((40, 4), 16));
        assert_eq!(bodies.next(16).unwrap()[0], (200, 20));
        assert_eq!(bodies.next(16).unwrap(), numbered[35..].to_vec());
        assert_eq!(bodies.next(5), None);
        let mut summaries = Batches::new(&numbered, false);
        assert_eq!(summaries.next(0).unwrap().len(), 32);
        assert_eq!(summaries.next(32).unwrap().len(), 8);
    }
    use crate::command::{Ranges, SeqNumber};

    fn ranges(text: &str) -> Ranges {
        let number = |n: &str| match n {
            "*" => SeqNumber::Largest,
            n => SeqNumber::Value(n.parse().unwrap()),
        };
        Ranges::new(text.split(',').map(|range| match range.split_once(':') {
            Some((a, b)) => (number(a), number(b)),
            None => (number(range), number(range)),
        }))
    }

    #[test]
    fn sets_name_what_the_mailbox_holds_once_each_in_order() {
        let uids = [2, 3, 5, 8, 13, 21];
        for (set, uid, expected) in [
            ("1:*", true, vec![2, 3, 5, 8, 13, 21]),
            ("*", true, vec![21]),
            ("4:6,1:3", true, vec![2, 3, 5]),
            ("13:4294967295,1:4294967295", true, vec![2, 3, 5, 8, 13, 21]),
            ("22:4294967295", true, vec![]),
            ("30:*", true, vec![21]),
            ("2,4,6", false, vec![3, 8, 21]),
            ("6:1", false, vec![2, 3, 5, 8, 13, 21]),
            ("*:5", false, vec![13, 21]),
            ("1,1,1,2:3,3:2", false, vec![2, 3, 5]),
        ] {
            assert_eq!(
                named_uids(&ranges(set), uid, &uids),
                expected,
                "{set} (uid {uid})"
            );
        }
        assert_eq!(named_uids(&ranges("1:*"), true, &[]), Vec::<u32>::new());
    }

    #[test]
    fn ten_thousand_ranges_of_two_to_the_32_cost_what_the_mailbox_holds() {
        // 10,000 copies of the widest range and 10,000 of `1:*`: merged when parsed into one
        // range each, so naming a mailbox of 100,000 messages walks it once.
        let uids: Vec<u32> = (1..=100_000).map(|n| n * 3).collect();
        let widest = vec!["1:4294967295"; 10_000].join(",");
        let set = ranges(&widest);
        assert_eq!(set.bound(u32::MAX, u32::MAX), vec![(1, u32::MAX)]);
        assert_eq!(named_uids(&set, true, &uids), uids);
        let stars = ranges(&vec!["1:*"; 10_000].join(","));
        assert_eq!(stars.bound(100_000, 100_000), vec![(1, 100_000)]);
        assert_eq!(named_uids(&stars, false, &uids).len(), 100_000);
        // Disjoint ranges past the last UID name nothing and stay as written (never a
        // number at a time): 10,000 ranges of 400,000 UIDs each, four billion in all.
        let start = |k: u32| 400_000 + k * 429_000;
        let spread: Vec<String> = (0..10_000u32)
            .map(|k| format!("{}:{}", start(k), start(k) + 399_999))
            .collect();
        let spread = ranges(&spread.join(","));
        assert_eq!(spread.bound(0, u32::MAX).len(), 10_000);
        assert!(named_uids(&spread, true, &uids).is_empty());
        assert!(spread.contains(start(9_999) + 7, 0));
        assert!(!spread.contains(start(0) + 400_000, 0));
    }
}
