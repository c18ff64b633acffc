//! Accounts: the directory (sealed with the store's directory key), the address index (keyed
//! hashes), passwords (argon2id) and crypto-shredding.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, AccountKeys};
use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::mailbox::{AccountState, NewMailbox, DEFAULT_MAILBOXES};
use crate::store::{lock, Actor, Store};
use crate::types::{Account, AccountId, AccountStatus, NewAccount, Role};
use crate::AuditEvent;

/// Longest address accepted, in bytes (RFC 5321's path limit less the brackets).
pub const ADDRESS_BYTES_MAX: usize = 254;

#[derive(Serialize, Deserialize)]
struct DirectoryRecord {
    address: String,
    display_name: String,
    role: Role,
    status: AccountStatus,
    /// PHC string: `$argon2id$v=19$m=19456,t=2,p=1$…` (argon2 crate defaults, see ARCHITECTURE.md).
    password_hash: Option<String>,
    created_at_ms: i64,
}

/// How a password check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Accepted(Account),
    /// No such account, a wrong password, or no password set: callers answer all alike.
    Rejected,
    Disabled(Account),
}

/// Lower-cases an address and checks its shape. A bare local part gets `primary_domain`.
pub fn normalize_address(input: &str, primary_domain: &str) -> Result<String> {
    let input = input.trim();
    let address = if input.contains('@') {
        input.to_lowercase()
    } else {
        format!("{}@{}", input.to_lowercase(), primary_domain.to_lowercase())
    };
    if address.len() > ADDRESS_BYTES_MAX {
        return Err(Error::InvalidAddress {
            reason: "longer than 254 bytes",
        });
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(Error::InvalidAddress { reason: "no @" });
    };
    if local.is_empty() || domain.is_empty() {
        return Err(Error::InvalidAddress {
            reason: "empty local part or domain",
        });
    }
    if local.contains('@') {
        return Err(Error::InvalidAddress {
            reason: "more than one @",
        });
    }
    if address
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"".contains(c))
    {
        return Err(Error::InvalidAddress {
            reason: "spaces, controls or specials are not allowed",
        });
    }
    if domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !domain.contains('.') && domain != "localhost"
    {
        return Err(Error::InvalidAddress {
            reason: "the domain is not a host name",
        });
    }
    Ok(address)
}

/// Most password hashes computed at once in the process. Each argon2id run takes 19 MiB and
/// about 20 ms of a core: unbounded, a burst of login attempts would exhaust memory.
pub const PASSWORD_HASHES_CONCURRENT_MAX: usize = 2;

static HASHES_BUSY: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static HASH_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// Holds one of the hashing slots until dropped (also when the hash panics).
struct HashSlot;

impl HashSlot {
    fn take() -> Self {
        let mut busy = HASHES_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= PASSWORD_HASHES_CONCURRENT_MAX {
            busy = HASH_FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        HashSlot
    }
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        let mut busy = HASHES_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        *busy = busy.saturating_sub(1);
        HASH_FREED.notify_one();
    }
}

pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    let _slot = HashSlot::take();
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

pub(crate) fn hash_password(password: &str) -> Result<String> {
    let _slot = HashSlot::take();
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|_| Error::InvalidInput {
            what: "password could not be hashed",
        })
}

/// A hash of a random password, checked when a login names no account, so that an unknown
/// name costs as much time as a wrong password.
pub(crate) fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| hash_password(&format!("{:x}", rand::random::<u128>())).unwrap_or_default())
}

impl Store {
    /// Makes an account with its keys and default mailboxes (INBOX, Sent, Drafts, Trash,
    /// Junk, Archive, BACKUP), in one atomic write, audited.
    pub fn create_account(&self, new: &NewAccount<'_>, actor: &Actor) -> Result<AccountId> {
        let address = normalize_address(new.address, &self.inner.config.primary_domain)?;
        let display_name = new.display_name.trim();
        let limit = self.inner.config.limits.display_name_bytes_max;
        if display_name.len() > limit {
            return Err(Error::LimitExceeded {
                what: "display name bytes",
                actual: display_name.len() as u64,
                max: limit as u64,
            });
        }
        let password_hash = new.password.map(hash_password).transpose()?;
        let _directory = lock(&self.inner.directory_lock);
        if self.account_id_by_address(&address)?.is_some() {
            return Err(Error::AddressTaken);
        }
        let next = self
            .inner
            .engine
            .get(Table::Meta, keys::META_NEXT_ACCOUNT)?
            .and_then(|v| keys::read_u64(&v, 0))
            .ok_or_else(|| Error::corrupt("the account counter"))?;
        let id = AccountId(next);
        let account_keys = AccountKeys::random();
        let crypto = self.account_sealers(&account_keys);
        let record = DirectoryRecord {
            address: address.clone(),
            display_name: display_name.to_string(),
            role: new.role,
            status: AccountStatus::Active,
            password_hash,
            created_at_ms: crate::now_ms(),
        };
        let mut batch = Batch::default();
        batch.put(
            Table::Meta,
            keys::META_NEXT_ACCOUNT.to_vec(),
            (next + 1).to_be_bytes().to_vec(),
        );
        batch.put(
            Table::AccountKeys,
            keys::account(id),
            crypto::wrap_keys(&self.master(), &account_keys)?,
        );
        batch.put(
            Table::Directory,
            keys::account(id),
            self.seal_directory(id, &record)?,
        );
        batch.put(
            Table::AddressIndex,
            self.address_key(&address).to_vec(),
            keys::account(id),
        );
        let mut state = AccountState::new();
        for (name, special_use) in DEFAULT_MAILBOXES {
            self.stage_new_mailbox(
                &crypto,
                id,
                &mut state,
                NewMailbox {
                    name,
                    special_use,
                    subscribed: true,
                },
                &mut batch,
            )?;
        }
        self.stage_account_state(&crypto, id, &state, &mut batch)?;
        let event = AuditEvent::new(actor, "account.create", format!("account:{id} {address}"))
            .detail(format!("role={}", new.role.as_str()));
        self.commit_audited(batch, vec![event])?;
        Ok(id)
    }

    /// The account a login name stands for. A name without `@` is in the primary domain.
    pub fn find_account(&self, login: &str) -> Result<Option<Account>> {
        let Ok(address) = normalize_address(login, &self.inner.config.primary_domain) else {
            return Ok(None);
        };
        match self.account_id_by_address(&address)? {
            Some(id) => self.account(id).map(Some),
            None => Ok(None),
        }
    }

    pub fn account(&self, id: AccountId) -> Result<Account> {
        Ok(self.directory_record(id)?.1)
    }

    /// Every account, in id order.
    pub fn list_accounts(&self) -> Result<Vec<Account>> {
        let mut accounts = Vec::new();
        self.inner
            .engine
            .scan(Table::Directory, &[], &[0xFF; 9], &mut |key, value| {
                let id = AccountId(
                    keys::read_u64(key, 0).ok_or_else(|| Error::corrupt("a directory key"))?,
                );
                let record = self.open_directory(id, value)?;
                accounts.push(account_from(id, &record));
                Ok(Scan::Continue)
            })?;
        Ok(accounts)
    }

    /// Enables or disables an account; a disabled account cannot log in. Audited.
    pub fn set_account_status(
        &self,
        id: AccountId,
        status: AccountStatus,
        actor: &Actor,
    ) -> Result<()> {
        let _directory = lock(&self.inner.directory_lock);
        let (mut record, account) = self.directory_record(id)?;
        record.status = status;
        let mut batch = Batch::default();
        batch.put(
            Table::Directory,
            keys::account(id),
            self.seal_directory(id, &record)?,
        );
        let action = match status {
            AccountStatus::Active => "account.enable",
            AccountStatus::Disabled => "account.disable",
        };
        let event = AuditEvent::new(actor, action, format!("account:{id} {}", account.address));
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Sets a new password (argon2id). Audited; the password itself is never recorded.
    pub fn set_password(&self, id: AccountId, password: &str, actor: &Actor) -> Result<()> {
        let hash = hash_password(password)?;
        let _directory = lock(&self.inner.directory_lock);
        let (mut record, account) = self.directory_record(id)?;
        record.password_hash = Some(hash);
        let mut batch = Batch::default();
        batch.put(
            Table::Directory,
            keys::account(id),
            self.seal_directory(id, &record)?,
        );
        let event = AuditEvent::new(
            actor,
            "account.password",
            format!("account:{id} {}", account.address),
        );
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }

    /// Checks a login name and password. Costs one argon2 verification (~20 ms) whatever the
    /// outcome, so run it on a blocking thread.
    pub fn check_password(&self, login: &str, password: &str) -> Result<Login> {
        let found = match normalize_address(login, &self.inner.config.primary_domain) {
            Ok(address) => self.account_id_by_address(&address)?,
            Err(_) => None,
        };
        let Some(id) = found else {
            let _ = verify_password(password, decoy_hash());
            return Ok(Login::Rejected);
        };
        let (record, account) = self.directory_record(id)?;
        let hash = record.password_hash.as_deref().unwrap_or(decoy_hash());
        let matches = verify_password(password, hash);
        if !matches || record.password_hash.is_none() {
            return Ok(Login::Rejected);
        }
        if record.status == AccountStatus::Disabled {
            return Ok(Login::Disabled(account));
        }
        Ok(Login::Accepted(account))
    }

    /// Deletes an account by destroying its keys (crypto-shredding), then removes its data.
    ///
    /// The key record is purged from the disk files at once (flush and compaction of its key
    /// range), so the account's mail cannot be read again even with the master key; the
    /// removed ciphertext leaves the other files as RocksDB compacts them.
    pub fn delete_account(&self, id: AccountId, actor: &Actor) -> Result<()> {
        // Keeping wins: a hold or a minimum age refuses the deletion (audited as denied).
        if let Some(reason) = self.deletion_refusal(id, crate::now_ms())? {
            self.audit(
                AuditEvent::new(actor, "account.delete", format!("account:{id}"))
                    .outcome(crate::AuditOutcome::Denied)
                    .detail(reason.clone()),
            )?;
            return Err(Error::Kept { reason });
        }
        let _directory = lock(&self.inner.directory_lock);
        let (_, account) = self.directory_record(id)?;
        let start = keys::account(id);
        let end = keys::account(AccountId(id.0 + 1));
        let mut batch = Batch::default();
        batch.delete(Table::AccountKeys, start.clone());
        batch.delete(Table::Directory, start.clone());
        batch.delete(
            Table::AddressIndex,
            self.address_key(&account.address).to_vec(),
        );
        batch.delete(Table::Meta, keys::quota(id));
        // Pickup records are keyed by their token's hash; their value starts with the account.
        let mut pickups = Vec::new();
        self.inner
            .engine
            .scan(Table::Pickups, &[], &[0xFF; 33], &mut |key, value| {
                if value.starts_with(&start) {
                    pickups.push(key.to_vec());
                }
                Ok(crate::engine::Scan::Continue)
            })?;
        for key in pickups {
            batch.delete(Table::Pickups, key);
        }
        for table in [
            Table::Mailboxes,
            Table::Messages,
            Table::Summaries,
            Table::Changes,
            Table::BlobIndex,
            Table::Blobs,
            Table::Texts,
            Table::Queue,
            Table::Auth,
            Table::Deliveries,
            Table::Kept,
            Table::Quarantine,
        ] {
            batch.delete_range(table, start.clone(), end.clone());
        }
        let event = AuditEvent::new(
            actor,
            "account.delete",
            format!("account:{id} {}", account.address),
        )
        .detail("keys destroyed (crypto-shredding)");
        self.commit_audited(batch, vec![event])?;
        self.forget_account_crypto(id);
        self.inner
            .engine
            .purge_range(Table::AccountKeys, &start, &end)?;
        self.inner
            .engine
            .purge_range(Table::Directory, &start, &end)?;
        Ok(())
    }

    fn account_id_by_address(&self, address: &str) -> Result<Option<AccountId>> {
        let found = self
            .inner
            .engine
            .get(Table::AddressIndex, &self.address_key(address))?;
        found
            .map(|v| {
                keys::read_u64(&v, 0)
                    .map(AccountId)
                    .ok_or_else(|| Error::corrupt("an address index entry"))
            })
            .transpose()
    }

    fn address_key(&self, address: &str) -> [u8; 32] {
        crypto::keyed_hash(&self.inner.store_keys.index, b"address", address.as_bytes())
    }

    fn directory_record(&self, id: AccountId) -> Result<(DirectoryRecord, Account)> {
        let sealed = self
            .inner
            .engine
            .get(Table::Directory, &keys::account(id))?
            .ok_or(Error::AccountNotFound { id: id.0 })?;
        let record = self.open_directory(id, &sealed)?;
        let account = account_from(id, &record);
        Ok((record, account))
    }

    fn seal_directory(&self, id: AccountId, record: &DirectoryRecord) -> Result<Vec<u8>> {
        let plain =
            postcard::to_stdvec(record).map_err(|e| Error::corrupt(format!("encoding: {e}")))?;
        Ok(self.inner.directory.seal(&directory_aad(id), &plain))
    }

    fn open_directory(&self, id: AccountId, sealed: &[u8]) -> Result<DirectoryRecord> {
        let plain = self.inner.directory.open(&directory_aad(id), sealed)?;
        postcard::from_bytes(&plain).map_err(|_| Error::corrupt(format!("directory record {id}")))
    }
}

fn directory_aad(id: AccountId) -> Vec<u8> {
    let mut aad = b"directory/".to_vec();
    aad.extend_from_slice(&id.0.to_be_bytes());
    aad
}

fn account_from(id: AccountId, record: &DirectoryRecord) -> Account {
    Account {
        id,
        address: record.address.clone(),
        display_name: record.display_name.clone(),
        role: record.role,
        status: record.status,
        created_at_ms: record.created_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_address;

    #[test]
    fn addresses_normalise_and_bad_ones_are_refused() {
        let check = |input: &str, expect: Option<&str>| {
            assert_eq!(
                normalize_address(input, "clinic.example").ok().as_deref(),
                expect,
                "{input}"
            );
        };
        check("Alice@Clinic.Example", Some("alice@clinic.example"));
        check(" bob ", Some("bob@clinic.example"));
        check("a@b@c.example", None);
        check("@clinic.example", None);
        check("alice@", None);
        check("al ice@clinic.example", None);
        check("alice@nodot", None);
        check("alice@localhost", Some("alice@localhost"));
        check(&format!("{}@clinic.example", "x".repeat(250)), None);
    }
}
