use std::path::PathBuf;

/// Everything that can go wrong in the store.
///
/// Messages name paths, ids and limits but never addresses, folder names or message
/// contents, so that an error can be logged as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no store at {path}: run `sealpost init` first")]
    NoStore { path: PathBuf },
    #[error("a store already exists at {path}")]
    StoreExists { path: PathBuf },
    #[error("the store at {path} is in use by another process (is `sealpost serve` running?)")]
    StoreInUse { path: PathBuf },
    #[error("master key file {path}: {reason}")]
    MasterKeyFile { path: PathBuf, reason: String },
    #[error("the master key {path} does not open this store: wrong key file, or a store made with another key")]
    WrongMasterKey { path: PathBuf },
    #[error("RocksDB failed to {op} in {path}: {message}")]
    Engine {
        op: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt or tampered store record: {what}")]
    Corrupt { what: String },
    #[error("account {id} does not exist")]
    AccountNotFound { id: u64 },
    #[error("an account with that address exists already")]
    AddressTaken,
    #[error("invalid address: {reason}")]
    InvalidAddress { reason: &'static str },
    #[error("account {id} is disabled")]
    AccountDisabled { id: u64 },
    #[error("no such mailbox")]
    MailboxNotFound,
    #[error("a mailbox with that name exists already")]
    MailboxExists,
    #[error("invalid mailbox name: {reason}")]
    InvalidMailboxName { reason: &'static str },
    #[error("the mailbox is read-only: {reason}")]
    ReadOnly { reason: &'static str },
    #[error("the mailbox cannot be {action}: {reason}")]
    MailboxProtected {
        action: &'static str,
        reason: &'static str,
    },
    #[error("no message with UID {uid} in this mailbox")]
    MessageNotFound { uid: u32 },
    #[error("{what} is {actual}, over the limit of {max}")]
    LimitExceeded {
        what: &'static str,
        actual: u64,
        max: u64,
    },
    #[error("account {account} is over its quota: {used} of {limit} bytes used")]
    OverQuota { account: u64, used: u64, limit: u64 },
    #[error("invalid input: {what}")]
    InvalidInput { what: &'static str },
    #[error("not destroyed: {reason}")]
    Kept { reason: String },
}

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
