//! Small values the server keeps across restarts that belong to no account (MTA-STS
//! policies of correspondents' domains): in the meta table under a keyed hash of their name,
//! sealed with the store's directory key. Which domains a clinic writes to is itself
//! sensitive, so neither name nor value is on disk in the clear.

use crate::crypto;
use crate::engine::{Batch, Durability, Table};
use crate::error::Result;
use crate::store::Store;

/// Largest cached value, in bytes.
pub const CACHED_VALUE_BYTES_MAX: usize = 64 * 1024;

impl Store {
    fn cache_key(&self, kind: &str, name: &str) -> Vec<u8> {
        let mut key = b"cache/".to_vec();
        key.extend_from_slice(&crypto::keyed_hash(
            &self.inner.store_keys.index,
            kind.as_bytes(),
            name.as_bytes(),
        ));
        key
    }

    /// The value cached under (`kind`, `name`), if any.
    pub fn cached(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let key = self.cache_key(kind, name);
        match self.inner.engine.get(Table::Meta, &key)? {
            Some(sealed) => self.inner.directory.open(&key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// Caches `value` under (`kind`, `name`), replacing what was there. Not synced: a cache
    /// entry lost in a crash is fetched again.
    pub fn cache(&self, kind: &str, name: &str, value: &[u8]) -> Result<()> {
        if value.len() > CACHED_VALUE_BYTES_MAX {
            return Err(crate::error::Error::LimitExceeded {
                what: "cached value bytes",
                actual: value.len() as u64,
                max: CACHED_VALUE_BYTES_MAX as u64,
            });
        }
        let key = self.cache_key(kind, name);
        let sealed = self.inner.directory.seal(&key, value);
        let mut batch = Batch::default();
        batch.put(Table::Meta, key, sealed);
        self.inner.engine.write(batch, Durability::Buffered)
    }
}

/// Longest secret kept, in bytes: room for the console's policy versions and its aliases
/// (`CONSOLE_ALIASES_MAX` of them), which are server secrets too.
pub const SECRET_BYTES_MAX: usize = 1024 * 1024;

impl Store {
    fn secret_key(name: &str) -> Vec<u8> {
        [b"secret/".as_slice(), name.as_bytes()].concat()
    }

    /// A server secret by name (the DKIM keys), sealed with the store's directory key: it
    /// is re-wrapped with the store keys when the master key rotates, and never on disk in
    /// the clear.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let key = Self::secret_key(name);
        match self.inner.engine.get(Table::Meta, &key)? {
            Some(sealed) => self.inner.directory.open(&key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps a server secret, durably, audited by name (never by value).
    pub fn set_secret(&self, name: &str, value: &[u8], actor: &crate::Actor) -> Result<()> {
        if value.len() > SECRET_BYTES_MAX {
            return Err(crate::error::Error::LimitExceeded {
                what: "secret bytes",
                actual: value.len() as u64,
                max: SECRET_BYTES_MAX as u64,
            });
        }
        let key = Self::secret_key(name);
        let sealed = self.inner.directory.seal(&key, value);
        let mut batch = Batch::default();
        batch.put(Table::Meta, key, sealed);
        let event = crate::AuditEvent::new(actor, "secret.set", name.to_string());
        self.commit_audited(batch, vec![event])?;
        Ok(())
    }
}
