//! Authentication records of an account: its credential record (second factors, app
//! passwords, recent sign-ins; the auth crate's bytes, opaque here) and its web sessions.
//! Both are sealed under the account's keys, so they go with the account's keys when it is
//! deleted; keys are the account id and a random session id, nothing identifying.

use crate::engine::{Batch, Scan, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::Store;
use crate::types::AccountId;
use crate::AuditEvent;

/// Largest credential record, in bytes (passkeys are a few hundred bytes each).
pub const CREDENTIALS_BYTES_MAX: usize = 256 * 1024;
/// Largest web session record, in bytes.
pub const WEB_SESSION_BYTES_MAX: usize = 4 * 1024;
/// Most web sessions one account may have; past it the oldest go (the caller picks them).
pub const WEB_SESSIONS_PER_ACCOUNT_MAX: usize = 64;

/// A web session's id: 16 random bytes, the public half of its cookie.
pub type WebSessionId = [u8; 16];

const CREDENTIALS: u8 = 0;
const SESSION: u8 = 1;

fn credentials_key(account: AccountId) -> Vec<u8> {
    [keys::account(account), vec![CREDENTIALS]].concat()
}

fn session_key(account: AccountId, id: &WebSessionId) -> Vec<u8> {
    [keys::account(account), vec![SESSION], id.to_vec()].concat()
}

fn aad(key: &[u8]) -> Vec<u8> {
    [b"auth/".as_slice(), key].concat()
}

impl Store {
    /// The account's credential record, if it has one.
    pub fn credentials(&self, account: AccountId) -> Result<Option<Vec<u8>>> {
        let key = credentials_key(account);
        let Some(sealed) = self.inner.engine.get(Table::Auth, &key)? else {
            return Ok(None);
        };
        let crypto = self.account_crypto(account)?;
        Ok(Some(crypto.metadata.open(&aad(&key), &sealed)?))
    }

    /// Reads the credential record, lets `change` decide, and writes what it returns with its
    /// audit records in one write; `None` from `change` writes nothing. Changes of one
    /// account's record are serialised, so two sign-ins cannot lose each other's update.
    pub fn update_credentials(
        &self,
        account: AccountId,
        change: impl FnOnce(Option<&[u8]>) -> Option<(Vec<u8>, Vec<AuditEvent>)>,
    ) -> Result<bool> {
        let crypto = self.account_crypto(account)?;
        let _guard = self.inner.auth_locks.lock(account, 0);
        let key = credentials_key(account);
        let current = match self.inner.engine.get(Table::Auth, &key)? {
            Some(sealed) => Some(crypto.metadata.open(&aad(&key), &sealed)?),
            None => None,
        };
        let Some((record, events)) = change(current.as_deref()) else {
            return Ok(false);
        };
        if record.len() > CREDENTIALS_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "credential record bytes",
                actual: record.len() as u64,
                max: CREDENTIALS_BYTES_MAX as u64,
            });
        }
        let mut batch = Batch::default();
        batch.put(
            Table::Auth,
            key.clone(),
            crypto.metadata.seal(&aad(&key), &record),
        );
        self.commit_audited(batch, events)?;
        Ok(true)
    }

    /// One web session's record.
    pub fn web_session(&self, account: AccountId, id: &WebSessionId) -> Result<Option<Vec<u8>>> {
        let key = session_key(account, id);
        let Some(sealed) = self.inner.engine.get(Table::Auth, &key)? else {
            return Ok(None);
        };
        let crypto = self.account_crypto(account)?;
        Ok(Some(crypto.metadata.open(&aad(&key), &sealed)?))
    }

    /// Writes a web session's record, with `events` (none when only its last use changes).
    pub fn put_web_session(
        &self,
        account: AccountId,
        id: &WebSessionId,
        record: &[u8],
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        if record.len() > WEB_SESSION_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "web session record bytes",
                actual: record.len() as u64,
                max: WEB_SESSION_BYTES_MAX as u64,
            });
        }
        let crypto = self.account_crypto(account)?;
        let key = session_key(account, id);
        let mut batch = Batch::default();
        batch.put(
            Table::Auth,
            key.clone(),
            crypto.metadata.seal(&aad(&key), record),
        );
        if events.is_empty() {
            self.inner
                .engine
                .write(batch, crate::engine::Durability::Synced)?;
        } else {
            self.commit_audited(batch, events)?;
        }
        Ok(())
    }

    /// Every web session of the account: (id, record).
    pub fn web_sessions(&self, account: AccountId) -> Result<Vec<(WebSessionId, Vec<u8>)>> {
        let crypto = self.account_crypto(account)?;
        let prefix = [keys::account(account), vec![SESSION]].concat();
        let end = keys::prefix_end(&prefix);
        let mut found = Vec::new();
        self.inner
            .engine
            .scan(Table::Auth, &prefix, &end, &mut |key, value| {
                let id: WebSessionId = key[prefix.len()..]
                    .try_into()
                    .map_err(|_| Error::corrupt("a web session key"))?;
                found.push((id, crypto.metadata.open(&aad(key), value)?));
                Ok(if found.len() > WEB_SESSIONS_PER_ACCOUNT_MAX * 2 {
                    Scan::Stop
                } else {
                    Scan::Continue
                })
            })?;
        Ok(found)
    }

    /// Ends web sessions of the account: those named, or all when `ids` is `None`. Audited.
    pub fn delete_web_sessions(
        &self,
        account: AccountId,
        ids: Option<&[WebSessionId]>,
        events: Vec<AuditEvent>,
    ) -> Result<()> {
        let mut batch = Batch::default();
        match ids {
            Some(ids) => {
                for id in ids {
                    batch.delete(Table::Auth, session_key(account, id));
                }
            }
            None => {
                let prefix = [keys::account(account), vec![SESSION]].concat();
                batch.delete_range(Table::Auth, prefix.clone(), keys::prefix_end(&prefix));
            }
        }
        self.commit_audited(batch, events)?;
        Ok(())
    }
}
