//! The Sealpost mailbox store: accounts, mailboxes, messages and the audit log, encrypted at
//! rest on RocksDB.
//!
//! [`Store`] is the handle. It is opened with a [`MasterKey`] (an age identity in a file
//! outside the store folder); a wrong key is refused before any file is touched. Every record
//! is sealed with a per-account key or a store key, and RocksDB keys hold only numbers, random
//! ids and keyed hashes. Every method blocks: call it from a blocking thread.
//!
//! ```no_run
//! use sealpost_storage::{Actor, Flags, InternalDate, MasterKey, NewAccount, NewMessage, Role, Store, StoreConfig};
//!
//! # fn main() -> Result<(), sealpost_storage::Error> {
//! let master = MasterKey::create_file("/srv/sealpost/keys/master.key".as_ref())?;
//! let store = Store::create(StoreConfig::new("/srv/sealpost/store", "clinic.example"), master)?;
//! let alice = store.create_account(
//!     &NewAccount { address: "alice", display_name: "Alice", role: Role::Staff, password: Some("a long passphrase") },
//!     &Actor::cli(),
//! )?;
//! let inbox = store.mailbox_by_name(alice, "INBOX")?.expect("every account has an INBOX");
//! let raw = b"Subject: hello\r\n\r\nhi\r\n";
//! let appended = store.append(alice, inbox.id, &NewMessage {
//!     raw, flags: Flags::new(), internal_date: InternalDate::now(), summary: b"", search_text: b"",
//! })?;
//! assert_eq!(store.read_message(alice, inbox.id, appended.uid)?, raw);
//! # Ok(()) }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod account;
mod audit;
mod audit_index;
mod auth;
mod cache;
mod crypto;
mod delivery;
mod engine;
mod error;
mod keys;
mod mailbox;
mod message;
mod notify;
mod pickup;
mod quarantine;
mod queue;
mod retention;
mod store;
mod types;

pub use account::{normalize_address, Login, ADDRESS_BYTES_MAX, PASSWORD_HASHES_CONCURRENT_MAX};
pub use audit::{
    AuditAnchor, AuditBreak, AuditEvent, AuditOutcome, AuditRecord, AuditVerification,
};
pub use audit_index::{
    AuditPage, AuditSearch, AUDIT_COUNT_EXACT_MAX, AUDIT_TERMS_PER_RECORD_MAX, AUDIT_TERM_BYTES_MAX,
};
pub use auth::{
    WebSessionId, CREDENTIALS_BYTES_MAX, WEB_SESSIONS_PER_ACCOUNT_MAX, WEB_SESSION_BYTES_MAX,
};
pub use cache::{CACHED_VALUE_BYTES_MAX, SECRET_BYTES_MAX};
pub use crypto::MasterKey;
pub use delivery::{Delivery, DeliveryLine, DELIVERIES_LISTED_MAX};
pub use error::{Error, Result};
pub use mailbox::{LOST_SUBSCRIPTIONS_MAX, MAILBOX_DELIMITER};
pub use message::{Delivered, CHUNK_BYTES, SEARCH_TEXT_BYTES_MAX};
pub use notify::{MailboxEvent, MailboxEvents};
pub use pickup::{
    Pickup, PickupId, PickupState, PortalReply, ProofCheck, ProofKind, PICKUPS_PER_RECIPIENT_MAX,
    PICKUP_PROOF_TRIES_MAX, PICKUP_TOKEN_BYTES_MIN, PICKUP_TOMBSTONE_MS, PORTAL_PASSKEYS_BYTES_MAX,
    PORTAL_PASSWORD_BYTES_MAX, PORTAL_REPLIES_MAX, PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX,
    PORTAL_REPLY_BYTES_PER_PICKUP_MAX, PORTAL_REPLY_TEXT_BYTES_MAX,
};
pub use quarantine::{
    quarantine_id_hex, quarantine_id_parse, Quarantined, QUARANTINE_PER_ACCOUNT_MAX,
};
pub use queue::{
    Outbound, OutboundRecipient, QueueId, QueuedMessage, RecipientState, RecipientStatus,
    QUEUE_RECIPIENTS_MAX,
};
pub use retention::{
    check_retention_rules, Custodian, Destruction, Hold, KeptMessage, RetentionRule,
    CUSTODIANS_PER_HOLD_MAX, HOLDS_MAX, HOLD_TEXT_BYTES_MAX, RETENTION_DAYS_MAX,
    RETENTION_RULES_MAX,
};
pub use store::{Actor, JunkHook, Store, StoreConfig, StoreLimits};
pub use types::{
    Account, AccountId, AccountStatus, Appended, Changes, DeliveryTarget, FlagChange, Flags,
    FlagsStored, Held, InternalDate, Mailbox, MailboxId, MessageMeta, NewAccount, NewMessage,
    Placement, Role, SpecialUse, SystemFlag, Usage,
};

/// Milliseconds since the Unix epoch, by the system clock (every crate's clock reading).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
