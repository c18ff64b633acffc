//! `sealpost import mbox|maildir|imap`: mail from files or another server into an account, before or between runs
//! of the server (the store must not be in use). Flags and dates are kept (mbox: `Status`
//! and `X-Status`, the `From ` line's date; Maildir: the `:2,` flags, `new/` unseen, the
//! file's time); Maildir++ sub-folders (`.Work.Projects`) become folders (`Work/Projects`).
//! A second run copies nothing twice: a message already in the folder with the same
//! Message-ID, size and date is skipped. Each folder's import is audited with its counts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sealpost_storage::{
    AccountId, Actor, AuditEvent, Flags, InternalDate, MailboxId, NewMessage, Store, SystemFlag,
    MAILBOX_DELIMITER,
};

use crate::key::open_store;

/// Messages one folder's import reads at most.
pub(crate) const IMPORT_MESSAGES_PER_FOLDER_MAX: usize = 1_000_000;
/// Folders one Maildir import walks at most.
pub(crate) const IMPORT_FOLDERS_MAX: usize = 10_000;

#[derive(Subcommand)]
pub(crate) enum ImportCommand {
    /// Copy the messages of an mbox file (mboxrd or mboxo) into a folder of an account.
    Mbox {
        file: PathBuf,
        /// The account the mail belongs to.
        #[arg(long)]
        account: String,
        /// The folder (made when missing).
        #[arg(long, default_value = "INBOX")]
        folder: String,
    },
    /// Copy an account's mail from another IMAP server (implicit TLS), every folder with its
    /// flags and dates; resumable (run it again after a stop). The password is read from
    /// the first line of standard input.
    Imap {
        /// The other server's name (its certificate must be for it).
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 993)]
        port: u16,
        /// PEM file of the CA that signed its certificate (default: the system's).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The login there.
        #[arg(long)]
        user: String,
        /// The account here.
        #[arg(long)]
        account: String,
    },
    /// Copy a Maildir (Maildir++: its own messages into INBOX, `.A.B` into folder `A/B`).
    Maildir {
        dir: PathBuf,
        #[arg(long)]
        account: String,
    },
}

/// One message read from a file.
struct Imported {
    raw: Vec<u8>,
    flags: Flags,
    date: InternalDate,
}

pub(crate) fn import(command: ImportCommand, data: &Path) -> anyhow::Result<ExitCode> {
    match command {
        ImportCommand::Mbox {
            file,
            account,
            folder,
        } => {
            let (_, store) = open_store(data)?;
            let id = account_id(&store, &account)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let messages = read_mbox(&bytes);
            import_folder(
                &store,
                id,
                &account,
                &folder,
                messages,
                &format!("mbox {}", file.display()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        ImportCommand::Imap {
            host,
            port,
            ca_file,
            user,
            account,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password")?;
            let password = password.trim_end_matches(['\r', '\n']);
            let (_, store) = open_store(data)?;
            let id = account_id(&store, &account)?;
            let mut client = crate::import_imap::Client::connect(&host, port, ca_file.as_deref())?;
            client.login(&user, password)?;
            for (theirs, ours) in client.folders()?.into_iter().take(IMPORT_FOLDERS_MAX) {
                let uids = client.uids(&theirs)?;
                let mut folder = Folder::open(&store, id, &ours)?;
                for batch in uids.chunks(crate::import_imap::IMPORT_FETCH_BATCH) {
                    for (raw, flags, date) in client.fetch(batch)? {
                        folder.copy(&store, id, Imported { raw, flags, date })?;
                    }
                }
                folder.finish(&store, &account, &format!("imap {host}:{port} {user}"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ImportCommand::Maildir { dir, account } => {
            let (_, store) = open_store(data)?;
            let id = account_id(&store, &account)?;
            for (folder, path) in maildir_folders(&dir)? {
                let messages = read_maildir(&path)?;
                import_folder(
                    &store,
                    id,
                    &account,
                    &folder,
                    messages,
                    &format!("maildir {}", path.display()),
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn account_id(store: &Store, address: &str) -> anyhow::Result<AccountId> {
    Ok(store
        .find_account(address)?
        .with_context(|| format!("no account {address}"))?
        .id)
}

/// Appends what is not there yet; prints and audits the counts.
fn import_folder(
    store: &Store,
    account: AccountId,
    address: &str,
    folder: &str,
    messages: Vec<Imported>,
    source: &str,
) -> anyhow::Result<()> {
    let mut target = Folder::open(store, account, folder)?;
    for message in messages.into_iter().take(IMPORT_MESSAGES_PER_FOLDER_MAX) {
        target.copy(store, account, message)?;
    }
    target.finish(store, address, source)
}

/// A folder being filled: what it holds already, and the counts.
struct Folder {
    name: String,
    mailbox: MailboxId,
    present: HashSet<(String, u64, i64)>,
    copied: usize,
    skipped: usize,
}

impl Folder {
    fn open(store: &Store, account: AccountId, name: &str) -> anyhow::Result<Folder> {
        let mailbox = match store.mailbox_by_name(account, name)? {
            Some(mailbox) => mailbox.id,
            None => create_with_parents(store, account, name)?,
        };
        Ok(Folder {
            name: name.to_string(),
            mailbox,
            present: present_keys(store, account, mailbox)?,
            copied: 0,
            skipped: 0,
        })
    }

    /// Appends the message unless the folder has it.
    fn copy(&mut self, store: &Store, account: AccountId, message: Imported) -> anyhow::Result<()> {
        if !self
            .present
            .insert(key_of(&message.raw, message.date.unix_seconds))
        {
            self.skipped += 1;
            return Ok(());
        }
        let index = sealpost_mime::Indexed::of(&message.raw);
        let (summary, text) = (index.summary_bytes(), index.search_bytes());
        store.append(
            account,
            self.mailbox,
            &NewMessage {
                raw: &message.raw,
                flags: message.flags,
                internal_date: message.date,
                summary: &summary,
                search_text: &text,
            },
        )?;
        self.copied += 1;
        Ok(())
    }

    fn finish(self, store: &Store, address: &str, source: &str) -> anyhow::Result<()> {
        let Folder {
            name,
            copied,
            skipped,
            ..
        } = self;
        println!("{name}: {copied} copied, {skipped} already there");
        store.audit(
            AuditEvent::new(
                &Actor::cli(),
                "import",
                format!("account {address} folder {name}"),
            )
            .detail(format!(
                "{source}; {copied} copied, {skipped} already there"
            )),
        )?;
        Ok(())
    }
}

fn create_with_parents(
    store: &Store,
    account: AccountId,
    folder: &str,
) -> anyhow::Result<MailboxId> {
    let mut path = String::new();
    let mut last = None;
    for part in folder.split(MAILBOX_DELIMITER) {
        if !path.is_empty() {
            path.push(MAILBOX_DELIMITER);
        }
        path.push_str(part);
        last = Some(match store.mailbox_by_name(account, &path)? {
            Some(mailbox) => mailbox.id,
            None => store.create_mailbox(account, &path, None)?,
        });
    }
    last.with_context(|| format!("{folder}: not a folder name"))
}

/// What makes two copies of a message the same: Message-ID, size, date.
fn key_of(raw: &[u8], date: i64) -> (String, u64, i64) {
    let structure = sealpost_mime::Structure::parse(raw, sealpost_mime::Limits::default());
    let id = sealpost_mime::Shown::of(&structure.envelope)
        .message_id
        .unwrap_or_default();
    (id, raw.len() as u64, date)
}

fn present_keys(
    store: &Store,
    account: AccountId,
    mailbox: MailboxId,
) -> anyhow::Result<HashSet<(String, u64, i64)>> {
    let metas = store.messages(account, mailbox)?;
    let uids: Vec<u32> = metas.iter().map(|m| m.uid).collect();
    let mut keys = HashSet::new();
    for (meta, summary) in store.message_summaries(account, mailbox, &uids)? {
        let id = sealpost_mime::Summary::from_bytes(&summary)
            .and_then(|s| sealpost_mime::Shown::of_imap(&s.envelope).message_id)
            .unwrap_or_default();
        keys.insert((id, meta.size, meta.internal_date.unix_seconds));
    }
    Ok(keys)
}

/// Splits an mbox at its `From ` lines, undoing `>From ` quoting; flags from `Status` and
/// `X-Status`, the date from the `From ` line.
fn read_mbox(bytes: &[u8]) -> Vec<Imported> {
    let mut out = Vec::new();
    let mut current: Option<(i64, Vec<u8>)> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some((date, raw)) = current.take() {
                out.push(finish_mbox_message(raw, date));
            }
            current = Some((
                from_line_date(line).unwrap_or_else(|| InternalDate::now().unix_seconds),
                Vec::new(),
            ));
            continue;
        }
        let Some((_, raw)) = current.as_mut() else {
            continue;
        };
        let unquoted = match line.iter().position(|&b| b != b'>') {
            Some(at) if at > 0 && line[at..].starts_with(b"From ") => &line[1..],
            _ => line,
        };
        raw.extend_from_slice(unquoted);
    }
    if let Some((date, raw)) = current {
        out.push(finish_mbox_message(raw, date));
    }
    out
}

fn finish_mbox_message(mut raw: Vec<u8>, date: i64) -> Imported {
    // The blank line before the next `From ` belongs to the mbox, not the message.
    if raw.ends_with(b"\n\n") {
        raw.pop();
    } else if raw.ends_with(b"\r\n\r\n") {
        raw.truncate(raw.len() - 2);
    }
    let mut flags = Flags::new();
    let header_end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .or_else(|| raw.windows(4).position(|w| w == b"\r\n\r\n"))
        .unwrap_or(raw.len());
    for line in raw[..header_end].split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let (name, value) = line.split_once(':').unwrap_or(("", ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") && value.contains('R') {
            flags = flags.with(SystemFlag::Seen);
        }
        if name.eq_ignore_ascii_case("X-Status") {
            flags = with_letters(
                flags,
                value,
                &[
                    ('A', SystemFlag::Answered),
                    ('F', SystemFlag::Flagged),
                    ('D', SystemFlag::Deleted),
                    ('T', SystemFlag::Draft),
                ],
            );
        }
    }
    Imported {
        raw,
        flags,
        date: InternalDate {
            unix_seconds: date,
            offset_minutes: 0,
        },
    }
}

/// `flags` with each flag whose letter `letters` holds (mbox's X-Status, Maildir's `:2,`).
fn with_letters(mut flags: Flags, letters: &str, meaning: &[(char, SystemFlag)]) -> Flags {
    for (letter, flag) in meaning {
        if letters.contains(*letter) {
            flags = flags.with(*flag);
        }
    }
    flags
}

/// The date of a `From sender Mon Dec  1 12:00:00 2026` line, as Unix seconds (UTC).
fn from_line_date(line: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(line);
    let words: Vec<&str> = text.split_whitespace().collect();
    // From, sender, weekday, month, day, time, year.
    let [.., month, day, clock, year] = words.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?;
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let mut clock = clock.split(':').map(|p| p.parse::<u8>().ok());
    let (Some(Some(h)), Some(Some(m)), Some(Some(s))) = (clock.next(), clock.next(), clock.next())
    else {
        return None;
    };
    let at = date.with_hms(h, m, s).ok()?.assume_utc();
    Some(at.unix_timestamp())
}

/// The folders of a Maildir++: (folder name, its directory).
fn maildir_folders(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut folders = vec![("INBOX".to_string(), root.to_path_buf())];
    let entries = std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    let mut named: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let inner = name.strip_prefix('.')?;
            (!inner.is_empty() && entry.path().join("cur").is_dir()).then(|| {
                (
                    inner.replace('.', &MAILBOX_DELIMITER.to_string()),
                    entry.path(),
                )
            })
        })
        .take(IMPORT_FOLDERS_MAX)
        .collect();
    named.sort();
    folders.extend(named);
    Ok(folders)
}

/// A Maildir folder's messages: `cur/` with the flags of their names, `new/` unseen.
fn read_maildir(dir: &Path) -> anyhow::Result<Vec<Imported>> {
    let mut out = Vec::new();
    for (sub, seen_possible) in [("cur", true), ("new", false)] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files.into_iter().take(IMPORT_MESSAGES_PER_FOLDER_MAX) {
            let raw =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut flags = Flags::new();
            if seen_possible {
                if let Some((_, info)) = name.rsplit_once(":2,") {
                    flags = with_letters(
                        flags,
                        info,
                        &[
                            ('S', SystemFlag::Seen),
                            ('R', SystemFlag::Answered),
                            ('F', SystemFlag::Flagged),
                            ('T', SystemFlag::Deleted),
                            ('D', SystemFlag::Draft),
                        ],
                    );
                }
            }
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .unwrap_or_else(|| InternalDate::now().unix_seconds);
            out.push(Imported {
                raw,
                flags,
                date: InternalDate {
                    unix_seconds: modified,
                    offset_minutes: 0,
                },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_messages_split_unquote_and_keep_flags_and_dates() {
        let mbox = b"From alice@example.org Mon Dec  1 12:00:00 2026\n\
Subject: one\nStatus: RO\nX-Status: F\n\nbody\n>From the start\n>>From kept once\n\n\
From bob@example.org Tue Dec  2 08:30:00 2026\nSubject: two\n\nsecond\n";
        let messages = read_mbox(mbox);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            String::from_utf8_lossy(&messages[0].raw),
            "Subject: one\nStatus: RO\nX-Status: F\n\nbody\nFrom the start\n>From kept once\n"
        );
        assert!(
            messages[0].flags.has(SystemFlag::Seen) && messages[0].flags.has(SystemFlag::Flagged)
        );
        assert!(!messages[1].flags.has(SystemFlag::Seen));
        assert_eq!(messages[0].date.unix_seconds, 1_796_126_400);
        assert_eq!(
            String::from_utf8_lossy(&messages[1].raw),
            "Subject: two\n\nsecond\n"
        );
    }
}
