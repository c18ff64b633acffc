//! Sealpost's identity: who may sign in, and how. Password strength, TOTP, recovery codes,
//! app passwords for mail clients, passkeys (WebAuthn), web sessions and the lockout that
//! counts failures across the web, IMAP and SMTP. The records live in the store
//! (`Store::credentials`, `Store::web_session`), sealed under the account's keys; this crate
//! decides what is in them.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod credentials;
pub mod enrolment;
pub mod gate;
pub mod hashing;
pub mod lockout;
pub mod passkeys;
pub mod password;
pub mod secrets;
pub mod totp;
pub mod websession;

pub use credentials::{mail_login, passkey_required, Credentials, MailLogin, Protocol, Scope};
pub use gate::{LoginOutcome, LoginRefusal, MailLogins};
pub use hashing::{
    HashQueue, HashTicket, HASHES_PER_ACCOUNT_MAX, HASHES_PER_ADDRESS_MAX, PASSWORD_HASH_QUEUE_MAX,
    PASSWORD_HASH_WORKERS,
};
pub use lockout::{address_group, Lockout, LoginLimits, Refusal};
pub use sealpost_types::SignInSettings;
