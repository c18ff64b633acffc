//! eDiscovery: a search across accounts (sender, recipients, subject, text, date range, held
//! accounts only or all), counted before anything is exported, and an export of the result as
//! a zip (one mbox, or one .eml per message) with a manifest of each message's SHA-256,
//! encrypted to an age recipient given at export time. Kept messages (removed by their owner,
//! kept by a hold or a minimum age) are searched and exported like the rest. The console's
//! page and `sealpost ediscovery` call these; each search and export is audited with its
//! query and count.

use std::io::Write;
use std::str::FromStr;

use sealpost_storage::{AccountId, Actor, AuditEvent, Error, MailboxId, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Messages one search finds at most (a zip without ZIP64 holds 65 535 entries).
pub const DISCOVERY_HITS_MAX: usize = 65_000;
/// Bytes one export holds at most, before encryption (a zip without ZIP64 stays under 4 GiB).
pub const DISCOVERY_EXPORT_BYTES_MAX: u64 = 4_000_000_000;

/// A search: every field given must match (case-insensitive parts).
#[derive(Clone, Debug, Default)]
pub struct DiscoveryQuery {
    pub sender: Option<String>,
    /// Part of any To or Cc address or name.
    pub recipient: Option<String>,
    pub subject: Option<String>,
    /// Words in the headers or text.
    pub text: Option<String>,
    /// Internal date at or after, in ms.
    pub since_ms: Option<i64>,
    /// Internal date before, in ms.
    pub before_ms: Option<i64>,
    /// Only accounts under an open legal hold.
    pub held_only: bool,
}

impl DiscoveryQuery {
    /// The query in words, for the audit log and the manifest.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, value) in [
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("subject", &self.subject),
            ("text", &self.text),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        if let Some(since) = self.since_ms {
            parts.push(format!("since_ms={since}"));
        }
        if let Some(before) = self.before_ms {
            parts.push(format!("before_ms={before}"));
        }
        parts.push(
            if self.held_only {
                "held accounts"
            } else {
                "all accounts"
            }
            .into(),
        );
        parts.join("; ")
    }
}

/// Where a found message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Folder {
        mailbox: MailboxId,
        uid: u32,
    },
    /// Removed by its owner, kept by a hold or a minimum age.
    Kept([u8; 16]),
}

/// One message found.
#[derive(Clone, Debug)]
pub struct Hit {
    pub account: AccountId,
    pub address: String,
    pub place: Place,
    pub folder: String,
    pub internal_date_ms: i64,
    pub size: u64,
    pub from: String,
    pub subject: String,
    pub message_id: String,
}

fn lower(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty())
}

/// Whether a message's summary and (if asked) text match.
fn matches(
    query: &DiscoveryQuery,
    shown: &sealpost_mime::Shown,
    date_ms: i64,
    text: impl FnOnce() -> Option<String>,
) -> bool {
    if query.since_ms.is_some_and(|t| date_ms < t) || query.before_ms.is_some_and(|t| date_ms >= t)
    {
        return false;
    }
    let people = |list: &[sealpost_mime::Person]| {
        list.iter()
            .map(|p| format!("{} <{}>", p.name, p.email).to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if lower(&query.sender).is_some_and(|s| !people(&shown.from).contains(&s)) {
        return false;
    }
    if lower(&query.recipient)
        .is_some_and(|r| !people(&shown.to).contains(&r) && !people(&shown.cc).contains(&r))
    {
        return false;
    }
    if lower(&query.subject).is_some_and(|s| !shown.subject.to_lowercase().contains(&s)) {
        return false;
    }
    if let Some(words) = lower(&query.text) {
        let Some(text) = text() else { return false };
        if !words.split_whitespace().all(|w| text.contains(w)) {
            return false;
        }
    }
    true
}

/// The text a search looks in: decoded headers and body, lower-cased as stored.
fn search_text(bytes: &[u8]) -> Option<String> {
    let text = sealpost_mime::SearchText::from_bytes(bytes)?;
    let mut all = text.body;
    for (name, value) in text.headers {
        all.push('\n');
        all.push_str(&name);
        all.push_str(": ");
        all.push_str(&value);
    }
    Some(all)
}

fn shown_of(summary: &[u8]) -> sealpost_mime::Shown {
    sealpost_mime::Summary::from_bytes(summary)
        .map(|s| sealpost_mime::Shown::of_imap(&s.envelope))
        .unwrap_or_default()
}

/// The hit for one message (in a folder or kept) if it matches; its text is read only when
/// the query asks for words.
fn hit_of(
    store: &Store,
    query: &DiscoveryQuery,
    account: &sealpost_storage::Account,
    place: Place,
    folder: String,
    summary: &[u8],
    (date_ms, size): (i64, u64),
) -> Option<Hit> {
    let shown = shown_of(summary);
    let text = || {
        match &place {
            Place::Folder { mailbox, uid } => store.message_search_text(account.id, *mailbox, *uid),
            Place::Kept(id) => store.kept_search_text(account.id, id),
        }
        .ok()
        .and_then(|b| search_text(&b))
    };
    if !matches(query, &shown, date_ms, text) {
        return None;
    }
    Some(Hit {
        account: account.id,
        address: account.address.clone(),
        place,
        folder,
        internal_date_ms: date_ms,
        size,
        from: shown
            .from
            .first()
            .map(|p| p.email.clone())
            .unwrap_or_default(),
        subject: shown.subject,
        message_id: shown.message_id.unwrap_or_default(),
    })
}

/// What a search found: the messages (one per copy of the same message in an account:
/// INBOX and BACKUP count once), and whether it stopped at `DISCOVERY_HITS_MAX`.
pub fn search(store: &Store, query: &DiscoveryQuery) -> Result<(Vec<Hit>, bool), Error> {
    let mut hits = Vec::new();
    for account in store.list_accounts()? {
        if query.held_only && !store.is_held(account.id)? {
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        let mut take = |hit: Hit, hits: &mut Vec<Hit>| {
            let key = if hit.message_id.is_empty() {
                format!("{:?}", hit.place)
            } else {
                format!("{}\u{0}{}", hit.message_id.to_lowercase(), hit.size)
            };
            if seen.insert(key) {
                hits.push(hit);
            }
            hits.len() >= DISCOVERY_HITS_MAX
        };
        for mailbox in store.list_mailboxes(account.id)? {
            let uids: Vec<u32> = store
                .messages(account.id, mailbox.id)?
                .iter()
                .map(|m| m.uid)
                .collect();
            for (meta, summary) in store.message_summaries(account.id, mailbox.id, &uids)? {
                let place = Place::Folder {
                    mailbox: mailbox.id,
                    uid: meta.uid,
                };
                let dated = (
                    meta.internal_date.unix_seconds.saturating_mul(1000),
                    meta.size,
                );
                let found = hit_of(
                    store,
                    query,
                    &account,
                    place,
                    mailbox.name.clone(),
                    &summary,
                    dated,
                );
                if found.is_some_and(|hit| take(hit, &mut hits)) {
                    return Ok((hits, true));
                }
            }
        }
        for kept in store.kept_messages(account.id)? {
            let folder = format!("{} (removed by its owner, kept)", kept.folder);
            let dated = (
                kept.internal_date.unix_seconds.saturating_mul(1000),
                kept.size,
            );
            let found = hit_of(
                store,
                query,
                &account,
                Place::Kept(kept.id),
                folder,
                &kept.summary,
                dated,
            );
            if found.is_some_and(|hit| take(hit, &mut hits)) {
                return Ok((hits, true));
            }
        }
    }
    Ok((hits, false))
}

/// Searches and audits the search with its query and count.
pub fn search_audited(
    store: &Store,
    actor: &Actor,
    query: &DiscoveryQuery,
) -> Result<(Vec<Hit>, bool), Error> {
    let found = search(store, query)?;
    store.audit(
        AuditEvent::new(actor, "ediscovery.search", "mail of all accounts").detail(format!(
            "{} messages; {}",
            found.0.len(),
            query.describe()
        )),
    )?;
    Ok(found)
}

/// How an export lays the messages out in its zip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// One `messages.mbox` (mboxrd).
    Mbox,
    /// One `.eml` file per message.
    Eml,
}

#[derive(Serialize)]
struct ManifestEntry {
    file: String,
    account: String,
    folder: String,
    internal_date_ms: i64,
    bytes: u64,
    sha256: String,
    message_id: String,
}

#[derive(Serialize)]
struct Manifest {
    query: String,
    exported_ms: i64,
    exported_by: String,
    messages: usize,
    entries: Vec<ManifestEntry>,
}

/// A zip written as it goes (stored entries, data descriptors, no ZIP64: hence the bounds).
struct Zip<'a> {
    out: &'a mut dyn Write,
    offset: u64,
    central: Vec<u8>,
    entries: u16,
}

impl Zip<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn offset32(&self) -> std::io::Result<u32> {
        u32::try_from(self.offset).map_err(|_| std::io::Error::other("the export is over 4 GiB"))
    }

    /// Writes one entry from its parts (an mbox is many parts).
    fn entry(
        &mut self,
        name: &str,
        parts: &mut dyn Iterator<Item = std::io::Result<Vec<u8>>>,
    ) -> std::io::Result<()> {
        let start = self.offset32()?;
        let name = name.as_bytes();
        let name_len = u16::try_from(name.len()).map_err(std::io::Error::other)?;
        let mut head = Vec::with_capacity(30 + name.len());
        head.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        head.extend_from_slice(&20u16.to_le_bytes()); // version needed
        head.extend_from_slice(&0x0808u16.to_le_bytes()); // data descriptor, UTF-8 names
        head.extend_from_slice(&0u16.to_le_bytes()); // stored
        head.extend_from_slice(&0u16.to_le_bytes()); // time
        head.extend_from_slice(&0x0021u16.to_le_bytes()); // date: 1980-01-01
        head.extend_from_slice(&[0u8; 12]); // crc and sizes follow the data
        head.extend_from_slice(&name_len.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(name);
        self.write(&head)?;
        let mut crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        for part in parts {
            let part = part?;
            crc.update(&part);
            size += part.len() as u64;
            self.write(&part)?;
        }
        let crc = crc.finalize();
        let size =
            u32::try_from(size).map_err(|_| std::io::Error::other("an entry is over 4 GiB"))?;
        let mut descriptor = Vec::with_capacity(16);
        descriptor.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        descriptor.extend_from_slice(&crc.to_le_bytes());
        descriptor.extend_from_slice(&size.to_le_bytes());
        descriptor.extend_from_slice(&size.to_le_bytes());
        self.write(&descriptor)?;
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes()); // made by
        c.extend_from_slice(&20u16.to_le_bytes()); // needed
        c.extend_from_slice(&0x0808u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0x0021u16.to_le_bytes());
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&size.to_le_bytes());
        c.extend_from_slice(&size.to_le_bytes());
        c.extend_from_slice(&name_len.to_le_bytes());
        c.extend_from_slice(&[0u8; 8]); // extra, comment, disk, internal attributes
        c.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        c.extend_from_slice(&start.to_le_bytes());
        c.extend_from_slice(name);
        self.entries = self
            .entries
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("over 65 535 entries"))?;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let start = self.offset32()?;
        let central = std::mem::take(&mut self.central);
        self.write(&central)?;
        let size = u32::try_from(central.len()).map_err(std::io::Error::other)?;
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&[0u8; 4]); // disk numbers
        end.extend_from_slice(&self.entries.to_le_bytes());
        end.extend_from_slice(&self.entries.to_le_bytes());
        end.extend_from_slice(&size.to_le_bytes());
        end.extend_from_slice(&start.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.write(&end)?;
        self.out.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The message a hit names.
pub fn read_hit(store: &Store, hit: &Hit) -> Result<Vec<u8>, Error> {
    match &hit.place {
        Place::Folder { mailbox, uid } => store.read_message(hit.account, *mailbox, *uid),
        Place::Kept(id) => store.read_kept(hit.account, id),
    }
}

/// mboxrd: a From_ line, and `>` before every line that starts with `>*From `.
fn mbox_entry(message: &[u8], date_ms: i64) -> Vec<u8> {
    let date = time::OffsetDateTime::from_unix_timestamp(date_ms / 1000)
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!(
                "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
            ))
            .ok()
        })
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".into());
    let mut out = format!("From MAILER-DAEMON {date}\n").into_bytes();
    for line in message.split_inclusive(|b| *b == b'\n') {
        let unquoted = line.iter().position(|b| *b != b'>').map(|at| &line[at..]);
        if unquoted.is_some_and(|rest| rest.starts_with(b"From ")) {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// What an export wrote.
pub struct Exported {
    pub messages: usize,
    pub bytes: u64,
}

/// Searches, then writes the result to `out` as an age-encrypted zip for `recipient`
/// (`age1…`), with a manifest; audited with the query and the count. A refusal (a bad
/// recipient, a result past the bounds) writes nothing.
pub fn export(
    store: &Store,
    actor: &Actor,
    query: &DiscoveryQuery,
    kind: ExportKind,
    recipient: &str,
    out: &mut dyn Write,
) -> Result<Exported, String> {
    let recipient = age::x25519::Recipient::from_str(recipient.trim())
        .map_err(|why| format!("the recipient is not an age X25519 recipient (age1…): {why}"))?;
    let (hits, truncated) = search(store, query).map_err(|e| e.to_string())?;
    if truncated {
        return Err(format!(
            "over {DISCOVERY_HITS_MAX} messages match; narrow the search (dates, accounts)"
        ));
    }
    let total: u64 = hits.iter().map(|h| h.size).sum();
    if total > DISCOVERY_EXPORT_BYTES_MAX {
        return Err(format!(
            "the messages take {total} bytes, over {DISCOVERY_EXPORT_BYTES_MAX}; narrow the search"
        ));
    }
    // Audited before a byte is written: an export that fails half-way is still on record.
    store
        .audit(
            AuditEvent::new(actor, "ediscovery.export", "mail of all accounts").detail(format!(
                "{} messages ({total} bytes) as {}, encrypted to {}; {}",
                hits.len(),
                match kind {
                    ExportKind::Mbox => "mbox",
                    ExportKind::Eml => "eml",
                },
                recipient,
                query.describe()
            )),
        )
        .map_err(|e| e.to_string())?;
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
    let mut encrypted = encryptor.wrap_output(out).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let mut entries = Vec::with_capacity(hits.len());
    {
        let mut zip = Zip {
            out: &mut encrypted,
            offset: 0,
            central: Vec::new(),
            entries: 0,
        };
        let describe = |hit: &Hit, file: String, message: &[u8]| ManifestEntry {
            file,
            account: hit.address.clone(),
            folder: hit.folder.clone(),
            internal_date_ms: hit.internal_date_ms,
            bytes: message.len() as u64,
            sha256: hex(&Sha256::digest(message)),
            message_id: hit.message_id.clone(),
        };
        match kind {
            ExportKind::Eml => {
                for (n, hit) in hits.iter().enumerate() {
                    let message = read_hit(store, hit).map_err(|e| e.to_string())?;
                    let file = format!("{:05}.eml", n + 1);
                    entries.push(describe(hit, file.clone(), &message));
                    zip.entry(&file, &mut std::iter::once(Ok(message)))
                        .map_err(io)?;
                }
            }
            ExportKind::Mbox => {
                let mut failed = None;
                let mut parts = hits.iter().map_while(|hit| match read_hit(store, hit) {
                    Ok(message) => {
                        entries.push(describe(hit, "messages.mbox".into(), &message));
                        Some(Ok(mbox_entry(&message, hit.internal_date_ms)))
                    }
                    Err(error) => {
                        failed = Some(error.to_string());
                        None
                    }
                });
                zip.entry("messages.mbox", &mut parts).map_err(io)?;
                drop(parts);
                if let Some(error) = failed {
                    return Err(error);
                }
            }
        }
        let manifest = Manifest {
            query: query.describe(),
            exported_ms: sealpost_storage::now_ms(),
            exported_by: actor.name.clone(),
            messages: entries.len(),
            entries,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        zip.entry("manifest.json", &mut std::iter::once(Ok(text)))
            .map_err(io)?;
        zip.finish().map_err(io)?;
    }
    encrypted.finish().map_err(io)?.flush().map_err(io)?;
    Ok(Exported {
        messages: hits.len(),
        bytes: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_entries_quote_from_lines_mboxrd_style() {
        let entry = mbox_entry(
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nFromage\r\n",
            0,
        );
        let text = String::from_utf8(entry).unwrap();
        assert!(
            text.starts_with("From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\n>From here\r\n>>From there\r\nFromage\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn a_zip_written_as_it_goes_has_its_entries_and_directory() {
        let mut out = Vec::new();
        let mut zip = Zip {
            out: &mut out,
            offset: 0,
            central: Vec::new(),
            entries: 0,
        };
        zip.entry("a.eml", &mut std::iter::once(Ok(b"hello".to_vec())))
            .unwrap();
        zip.entry(
            "b.eml",
            &mut [Ok(b"wor".to_vec()), Ok(b"ld".to_vec())].into_iter(),
        )
        .unwrap();
        zip.finish().unwrap();
        assert!(out.starts_with(b"PK\x03\x04"));
        let end = &out[out.len() - 22..];
        assert_eq!(&end[..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2, "two entries");
        let crc = crc32fast::hash(b"world");
        assert!(
            out.windows(4).any(|w| w == crc.to_le_bytes()),
            "the descriptor's CRC covers every part"
        );
    }
}
