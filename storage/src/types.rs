//! The store's public vocabulary: ids, flags, roles and the shapes of what it returns.

use serde::{Deserialize, Serialize};

/// An account, by number. Never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub u64);

/// A mailbox of one account, by number. Never reused within the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxId(pub u32);

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Staff,
    Admin,
    /// Reads the audit log and exports it; changes nothing, reads no mailbox but its own.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Staff => "staff",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "staff" => Ok(Role::Staff),
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            _ => Err("a role is staff, admin or auditor"),
        }
    }
}

/// Whether an account may log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountStatus {
    Active,
    Disabled,
}

/// An account as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    /// The normalised address (lower case), which is also the login name.
    pub address: String,
    pub display_name: String,
    pub role: Role,
    pub status: AccountStatus,
    pub created_at_ms: i64,
}

/// What it takes to make an account.
#[derive(Clone, Debug)]
pub struct NewAccount<'a> {
    pub address: &'a str,
    pub display_name: &'a str,
    pub role: Role,
    /// Hashed with argon2id before it is stored; `None` leaves the account without a password.
    pub password: Option<&'a str>,
}

/// RFC 6154 special-use roles, plus Sealpost's BACKUP folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
    /// Every message delivered to or sent by the account; read-only for the user.
    Backup,
}

impl SpecialUse {
    /// The RFC 6154 attribute, where one exists.
    pub fn attribute(self) -> Option<&'static str> {
        match self {
            SpecialUse::Sent => Some("\\Sent"),
            SpecialUse::Drafts => Some("\\Drafts"),
            SpecialUse::Trash => Some("\\Trash"),
            SpecialUse::Junk => Some("\\Junk"),
            SpecialUse::Archive => Some("\\Archive"),
            SpecialUse::Backup => None,
        }
    }
}

/// A mailbox and its counters, as IMAP SELECT and STATUS need them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub id: MailboxId,
    /// Full name, UTF-8, levels separated by [`MAILBOX_DELIMITER`](crate::MAILBOX_DELIMITER).
    pub name: String,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
    /// True for BACKUP: users read it but cannot change it.
    pub read_only: bool,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub messages: u32,
    pub unseen: u32,
    /// Sum of the messages' sizes.
    pub bytes: u64,
}

/// The system flags, one bit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemFlag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
}

impl SystemFlag {
    const ALL: [SystemFlag; 5] = [
        SystemFlag::Seen,
        SystemFlag::Answered,
        SystemFlag::Flagged,
        SystemFlag::Deleted,
        SystemFlag::Draft,
    ];

    fn bit(self) -> u8 {
        match self {
            SystemFlag::Seen => 1,
            SystemFlag::Answered => 2,
            SystemFlag::Flagged => 4,
            SystemFlag::Deleted => 8,
            SystemFlag::Draft => 16,
        }
    }
}

/// A message's flags: system flags and keywords.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    system: u8,
    /// Keywords, sorted, without duplicates (compared case-insensitively, as IMAP says).
    keywords: Vec<String>,
}

impl Flags {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, flag: SystemFlag) -> Self {
        self.system |= flag.bit();
        self
    }

    pub fn has(&self, flag: SystemFlag) -> bool {
        self.system & flag.bit() != 0
    }

    pub fn system_flags(&self) -> impl Iterator<Item = SystemFlag> + '_ {
        SystemFlag::ALL.into_iter().filter(|f| self.has(*f))
    }

    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    pub fn add_keyword(&mut self, keyword: &str) {
        if !self
            .keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(keyword))
        {
            self.keywords.push(keyword.to_string());
            self.keywords.sort();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.system == 0 && self.keywords.is_empty()
    }

    pub(crate) fn apply(&self, change: &FlagChange) -> Flags {
        match change {
            FlagChange::Replace(flags) => flags.clone(),
            FlagChange::Add(flags) => {
                let mut out = self.clone();
                out.system |= flags.system;
                for k in &flags.keywords {
                    out.add_keyword(k);
                }
                out
            }
            FlagChange::Remove(flags) => {
                let mut out = self.clone();
                out.system &= !flags.system;
                out.keywords
                    .retain(|k| !flags.keywords.iter().any(|r| r.eq_ignore_ascii_case(k)));
                out
            }
        }
    }
}

/// How STORE changes flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagChange {
    Replace(Flags),
    Add(Flags),
    Remove(Flags),
}

/// When a message arrived, with the sender's time-zone offset (IMAP INTERNALDATE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalDate {
    pub unix_seconds: i64,
    pub offset_minutes: i16,
}

impl InternalDate {
    pub fn now() -> Self {
        Self {
            unix_seconds: crate::now_ms() / 1000,
            offset_minutes: 0,
        }
    }
}

/// A message in a mailbox, without its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub modseq: u64,
    pub flags: Flags,
    pub internal_date: InternalDate,
    /// RFC822.SIZE: the exact byte length of the message.
    pub size: u64,
}

/// What APPEND hands the store.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub raw: &'a [u8],
    pub flags: Flags,
    pub internal_date: InternalDate,
    /// The caller's parsed form of the message (envelope, body structure), stored sealed
    /// beside the body so that listing a mailbox never has to parse bodies again.
    pub summary: &'a [u8],
    /// The caller's decoded text of the message for search, stored compressed and sealed
    /// apart from the body, so that searching never parses MIME. May be empty.
    pub search_text: &'a [u8],
}

/// One account's part of a delivery: where its copy is filed and, for a submission with
/// outside recipients, the envelope to queue.
#[derive(Clone, Debug)]
pub struct DeliveryTarget {
    pub account: AccountId,
    pub placement: Placement,
    pub outbound: Option<crate::queue::Outbound>,
}

/// Where an account's copy of a delivery is filed. The store finds the folders and adds
/// BACKUP, which keeps every delivered message (a quarantined one once it is released).
#[derive(Clone, Debug)]
pub enum Placement {
    /// INBOX and BACKUP; held to the account's quota.
    Inbox,
    /// Junk and BACKUP (the spam filter's verdict); held to the quota.
    Junk,
    /// The server's own message to the account (a bounce, a sign-in warning): INBOX and
    /// BACKUP, not held to the quota, so that a full mailbox still hears of it.
    Notice,
    /// Held in the quarantine, in no folder (BACKUP neither), until released or expired; in
    /// Junk and BACKUP when the account's quarantine is full (`QUARANTINE_PER_ACCOUNT_MAX`).
    Quarantine(Held),
    /// A submission's copy for its sender: BACKUP, and Sent when `sent` (the web keeps one).
    Sender { sent: bool },
    /// No folder at all: the queue entry alone (a portal code, which no folder may keep).
    QueueOnly,
}

/// Why a message is held, and until when, as the quarantine lists it; the hold is audited
/// with `actor`.
#[derive(Clone, Debug)]
pub struct Held {
    pub actor: crate::Actor,
    /// The spam filter's verdict in words.
    pub verdict: String,
    /// The sender as the From field names it (or the envelope's).
    pub sender: String,
    pub subject: String,
    pub expires_ms: i64,
}

/// Where an appended message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub mailbox: MailboxId,
    pub uid_validity: u32,
    pub uid: u32,
    pub modseq: u64,
}

/// What changed in a mailbox after a MODSEQ (CONDSTORE/QRESYNC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Live messages whose MODSEQ is higher, by UID, with that MODSEQ.
    pub changed: Vec<(u32, u64)>,
    /// UIDs expunged with a higher MODSEQ.
    pub expunged: Vec<u32>,
}

/// The result of a STORE: what changed, and what UNCHANGEDSINCE kept from changing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlagsStored {
    pub changed: Vec<MessageMeta>,
    pub unchanged: Vec<MessageMeta>,
    /// UIDs left alone because their MODSEQ was above UNCHANGEDSINCE.
    pub conflicts: Vec<u32>,
}

/// Space used by an account, for quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u64,
    pub bytes: u64,
}
