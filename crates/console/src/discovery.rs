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

/// Messages one search from the command line finds at most: the hits, the export's manifest
/// and the zip's directory are held in memory (a few hundred bytes each, more with long
/// subjects: about 0.5 GiB at the bound).
pub const DISCOVERY_HITS_MAX: usize = 500_000;
/// Messages one search from the console's page finds at most (the web's export is built in
/// memory too; `sealpost ediscovery` takes the larger searches).
pub const DISCOVERY_WEB_HITS_MAX: usize = 65_000;
/// Bytes one export holds at most, before encryption, in bytes (256 GiB; the zip is ZIP64
/// where it must be, and written as it goes, so only the disk it goes to bounds it).
pub const DISCOVERY_EXPORT_BYTES_MAX: u64 = 256 * 1024 * 1024 * 1024;

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
/// INBOX and BACKUP count once), and whether it stopped at `hits_max`
/// (`DISCOVERY_HITS_MAX` or `DISCOVERY_WEB_HITS_MAX`).
pub fn search(
    store: &Store,
    query: &DiscoveryQuery,
    hits_max: usize,
) -> Result<(Vec<Hit>, bool), Error> {
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
            hits.len() >= hits_max
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
    hits_max: usize,
) -> Result<(Vec<Hit>, bool), Error> {
    let found = search(store, query, hits_max)?;
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

/// A zip written as it goes to a writer that cannot seek (the age stream): the `zip` crate's
/// stream mode, stored entries each followed by a data descriptor, ZIP64 records where sizes,
/// offsets or the entry count need them.
struct Zip<'a> {
    writer: zip::ZipWriter<zip::write::StreamWriter<&'a mut dyn Write>>,
}

impl<'a> Zip<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            writer: zip::ZipWriter::new_stream(out),
        }
    }

    /// Writes one entry from its parts (an mbox is many parts). A `large` entry may pass
    /// 4 GiB (its sizes are written as ZIP64); others may not.
    fn entry(
        &mut self,
        name: &str,
        large: bool,
        parts: &mut dyn Iterator<Item = std::io::Result<Vec<u8>>>,
    ) -> std::io::Result<()> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::DEFAULT)
            .unix_permissions(0o600)
            .large_file(large);
        self.writer
            .start_file(name, options)
            .map_err(std::io::Error::other)?;
        for part in parts {
            self.writer.write_all(&part?)?;
        }
        Ok(())
    }

    fn finish(self) -> std::io::Result<()> {
        self.writer
            .finish()
            .map_err(std::io::Error::other)?
            .into_inner()
            .flush()
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

/// Why an export wrote nothing, or stopped: what the person asked for cannot be exported
/// (fix the request), or the server failed (try again; the log has it).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A bad recipient, or a result past the bounds: nothing was written or audited.
    #[error("{0}")]
    Refused(String),
    /// The store or the output failed; part of the export may have been written (useless:
    /// the age stream was not finished, so it does not decrypt).
    #[error("the export failed: {0}")]
    Failed(String),
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
    hits_max: usize,
    out: &mut dyn Write,
) -> Result<Exported, ExportError> {
    let failed = |e: &dyn std::fmt::Display| ExportError::Failed(e.to_string());
    let recipient = age::x25519::Recipient::from_str(recipient.trim()).map_err(|why| {
        ExportError::Refused(format!(
            "the recipient is not an age X25519 recipient (age1…): {why}"
        ))
    })?;
    let (hits, truncated) = search(store, query, hits_max).map_err(|e| failed(&e))?;
    if truncated {
        return Err(ExportError::Refused(format!(
            "over {hits_max} messages match; narrow the search (dates, accounts)"
        )));
    }
    let total: u64 = hits.iter().map(|h| h.size).sum();
    if total > DISCOVERY_EXPORT_BYTES_MAX {
        return Err(ExportError::Refused(format!(
            "the messages take {total} bytes, over {DISCOVERY_EXPORT_BYTES_MAX}; narrow the search"
        )));
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
        .map_err(|e| failed(&e))?;
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| failed(&e))?;
    let mut encrypted = encryptor.wrap_output(out).map_err(|e| failed(&e))?;
    let io = |e: std::io::Error| failed(&e);
    let mut entries = Vec::with_capacity(hits.len());
    {
        let mut zip = Zip::new(&mut encrypted);
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
                    let message = read_hit(store, hit).map_err(|e| failed(&e))?;
                    let file = format!("{:06}.eml", n + 1);
                    entries.push(describe(hit, file.clone(), &message));
                    zip.entry(&file, false, &mut std::iter::once(Ok(message)))
                        .map_err(io)?;
                }
            }
            ExportKind::Mbox => {
                let mut stopped = None;
                let mut parts = hits.iter().map_while(|hit| match read_hit(store, hit) {
                    Ok(message) => {
                        entries.push(describe(hit, "messages.mbox".into(), &message));
                        Some(Ok(mbox_entry(&message, hit.internal_date_ms)))
                    }
                    Err(error) => {
                        stopped = Some(failed(&error));
                        None
                    }
                });
                zip.entry("messages.mbox", true, &mut parts).map_err(io)?;
                drop(parts);
                if let Some(error) = stopped {
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
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(&e))?;
        zip.entry("manifest.json", false, &mut std::iter::once(Ok(text)))
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
        let mut zip = Zip::new(&mut out);
        zip.entry("a.eml", false, &mut std::iter::once(Ok(b"hello".to_vec())))
            .unwrap();
        zip.entry(
            "b.mbox",
            true,
            &mut [Ok(b"wor".to_vec()), Ok(b"ld".to_vec())].into_iter(),
        )
        .unwrap();
        zip.finish().unwrap();
        assert!(out.starts_with(b"PK\x03\x04"));
        let mut read = zip::ZipArchive::new(std::io::Cursor::new(out)).unwrap();
        assert_eq!(read.len(), 2);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut read.by_name("b.mbox").unwrap(), &mut text).unwrap();
        assert_eq!(text, "world", "every part, its CRC checked by the reader");
    }

    #[test]
    fn a_zip_holds_more_than_65535_entries() {
        let mut out = Vec::new();
        let mut zip = Zip::new(&mut out);
        let count = 70_000;
        for n in 0..count {
            let body = format!("message {n}").into_bytes();
            zip.entry(
                &format!("{n:06}.eml"),
                false,
                &mut std::iter::once(Ok(body)),
            )
            .unwrap();
        }
        zip.finish().unwrap();
        // Python's reader (as an examiner would use) tests every entry's CRC too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("many.zip");
        std::fs::write(&file, &out).unwrap();
        let python = std::process::Command::new("python3")
            .args(["-m", "zipfile", "-t"])
            .arg(&file)
            .output()
            .expect("python3 runs");
        assert!(
            python.status.success(),
            "{}",
            String::from_utf8_lossy(&python.stderr)
        );
        let mut read = zip::ZipArchive::new(std::io::Cursor::new(out)).unwrap();
        assert_eq!(read.len(), count, "the ZIP64 end record counts them all");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut read.by_name("069999.eml").unwrap(), &mut text).unwrap();
        assert_eq!(text, "message 69999");
    }

    /// Keeps the length of what went through it and its last `TAIL` bytes.
    struct Tail {
        length: u64,
        tail: Vec<u8>,
    }

    const TAIL: usize = 64 * 1024;

    impl Write for Tail {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.length += bytes.len() as u64;
            self.tail
                .extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL)..]);
            let excess = self.tail.len().saturating_sub(TAIL);
            self.tail.drain(..excess);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_mbox_entry_may_pass_4_gib() {
        let size: u64 = (4 << 30) + (1 << 20);
        let chunk = vec![b'x'; 1 << 20];
        let mut out = Tail {
            length: 0,
            tail: Vec::new(),
        };
        let mut zip = Zip::new(&mut out);
        let mut parts = (0..size / chunk.len() as u64).map(|_| Ok(chunk.clone()));
        zip.entry("messages.mbox", true, &mut parts).unwrap();
        zip.entry(
            "manifest.json",
            false,
            &mut std::iter::once(Ok(b"{}".to_vec())),
        )
        .unwrap();
        zip.finish().unwrap();
        assert!(out.length > size);
        // The central directory names the mbox with its 64-bit size and the manifest with
        // its offset past 4 GiB (ZIP64 extra fields, APPNOTE 4.5.3), and the ZIP64 end record
        // (signature 0x06064b50) is there.
        let tail = &out.tail;
        let central = tail
            .windows(4)
            .position(|w| w == b"PK\x01\x02")
            .expect("a central directory header");
        let field = |at: usize, n: usize| {
            let mut bytes = [0u8; 8];
            bytes[..n].copy_from_slice(&tail[at..at + n]);
            u64::from_le_bytes(bytes)
        };
        let name_len = field(central + 28, 2) as usize;
        let extra_len = field(central + 30, 2) as usize;
        assert_eq!(
            &tail[central + 46..central + 46 + name_len],
            b"messages.mbox"
        );
        assert_eq!(
            field(central + 24, 4),
            u64::from(u32::MAX),
            "size in the extra field"
        );
        let extra = central + 46 + name_len;
        assert_eq!(field(extra, 2), 1, "the ZIP64 extra field");
        assert!(extra_len >= 20);
        assert_eq!(field(extra + 4, 8), size, "uncompressed size");
        assert_eq!(field(extra + 12, 8), size, "stored: compressed size");
        assert!(
            tail.windows(4).any(|w| w == b"PK\x06\x06"),
            "a ZIP64 end record"
        );
    }
}
