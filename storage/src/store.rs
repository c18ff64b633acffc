//! The store handle: opening, keys, locks. The operations live in `account.rs`, `mailbox.rs`,
//! `message.rs` and `audit.rs`, each an `impl Store` block.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::audit::AuditHead;
use crate::crypto::{self, AccountKeys, BodySealer, MasterKey, Sealer, StoreKeys};
use crate::engine::{Batch, Durability, Engine, RocksEngine, Table};
use crate::error::{Error, Result};
use crate::keys;
use crate::notify::Notifier;
use crate::types::AccountId;

/// Bounds the store enforces, each with its unit in its name.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Largest message the store accepts, in bytes.
    pub message_bytes_max: u64,
    /// Most mailboxes one account may have.
    pub mailboxes_per_account_max: u32,
    /// Longest mailbox name, in bytes of UTF-8.
    pub mailbox_name_bytes_max: usize,
    /// Most levels in a mailbox name.
    pub mailbox_depth_max: usize,
    /// Most keywords on one message.
    pub keywords_per_message_max: usize,
    /// Longest keyword, in bytes.
    pub keyword_bytes_max: usize,
    /// Longest display name, in bytes.
    pub display_name_bytes_max: usize,
    /// Events a mailbox subscriber may fall behind before it must resynchronise.
    pub mailbox_events_max: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            message_bytes_max: 64 * 1024 * 1024,
            mailboxes_per_account_max: 10_000,
            mailbox_name_bytes_max: 1_000,
            mailbox_depth_max: 32,
            keywords_per_message_max: 64,
            keyword_bytes_max: 128,
            display_name_bytes_max: 256,
            mailbox_events_max: 1_024,
        }
    }
}

/// Where the store is and how it behaves.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The RocksDB folder (`DIR/store`).
    pub path: PathBuf,
    /// The organisation's primary domain: a login name without `@` is taken to be in it.
    pub primary_domain: String,
    pub limits: StoreLimits,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>, primary_domain: &str) -> Self {
        Self {
            path: path.into(),
            primary_domain: primary_domain.to_ascii_lowercase(),
            limits: StoreLimits::default(),
        }
    }
}

/// Who does something, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    /// An account address, `cli:<user>` or `system`.
    pub name: String,
    /// The network address it came from, or `local`.
    pub peer: String,
}

impl Actor {
    /// The administrator at the command line of the store's machine.
    pub fn cli() -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".to_string());
        Self {
            name: format!("cli:{user}"),
            peer: "local".to_string(),
        }
    }

    pub fn system() -> Self {
        Self {
            name: "system".to_string(),
            peer: "local".to_string(),
        }
    }
}

/// The encrypted mailbox store. Cheap to clone; every clone is the same store.
///
/// Every method blocks on disk I/O and, for some, on argon2: call it from a blocking thread
/// (`tokio::task::spawn_blocking`), never from an async task directly.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) config: StoreConfig,
    pub(crate) master: RwLock<MasterKey>,
    pub(crate) store_keys: StoreKeys,
    pub(crate) directory: Sealer,
    pub(crate) audit_sealer: Sealer,
    pub(crate) account_crypto: RwLock<HashMap<AccountId, Arc<AccountCrypto>>>,
    /// Serialises account creation and deletion (address uniqueness).
    pub(crate) directory_lock: Mutex<()>,
    /// Per account: mailbox names (create, rename, delete).
    pub(crate) namespace_locks: Stripes,
    /// Per mailbox: UID and MODSEQ assignment and every change to its messages.
    pub(crate) mailbox_locks: Stripes,
    /// Per account: blob reference counts.
    pub(crate) blob_locks: Stripes,
    /// Serialises changes of one account's credential record.
    pub(crate) auth_locks: Stripes,
    pub(crate) audit: Mutex<AuditHead>,
    pub(crate) notifier: Notifier,
    pub(crate) plaintext: bool,
    /// Told when messages are filed into Junk or out of it (spam filter training).
    pub(crate) junk_hook: RwLock<Option<JunkHook>>,
    /// Body chunks opened (decrypted) since the store was opened: what reading mail cost.
    pub(crate) chunks_opened: std::sync::atomic::AtomicU64,
    /// Whole mailbox lists read (each record decrypted) since the store was opened.
    pub(crate) mailbox_scans: std::sync::atomic::AtomicU64,
}

/// Called with (account, the mailbox the messages went to, their UIDs there, whether they
/// went into Junk) after a move or copy into or out of Junk is durable.
pub type JunkHook = Arc<dyn Fn(AccountId, crate::MailboxId, Vec<u32>, bool) + Send + Sync>;

/// An account's unwrapped keys, ready to seal.
pub(crate) struct AccountCrypto {
    pub(crate) metadata: Sealer,
    pub(crate) content: BodySealer,
}

/// The on-disk format this code writes: version, then how values are sealed.
const FORMAT_VERSION: u8 = 1;
const FORMAT_ENCRYPTED: u8 = 1;
const FORMAT_PLAINTEXT: u8 = 0;

impl Store {
    /// Makes a new, empty store at `config.path`, its keys wrapped by `master`.
    pub fn create(config: StoreConfig, master: MasterKey) -> Result<Store> {
        Self::create_with(config, master, false)
    }

    /// Makes a store that does not encrypt, to measure what encryption costs. Benchmarks only.
    #[cfg(feature = "bench-unencrypted")]
    pub fn create_unencrypted_for_bench(config: StoreConfig) -> Result<Store> {
        Self::create_with(config, MasterKey::ephemeral(), true)
    }

    fn create_with(config: StoreConfig, master: MasterKey, plaintext: bool) -> Result<Store> {
        let engine = RocksEngine::create(&config.path)?;
        let store_keys = StoreKeys::random();
        let mut batch = Batch::default();
        let mode = if plaintext {
            FORMAT_PLAINTEXT
        } else {
            FORMAT_ENCRYPTED
        };
        batch.put(
            Table::Meta,
            keys::META_FORMAT.to_vec(),
            vec![FORMAT_VERSION, mode],
        );
        batch.put(
            Table::Meta,
            keys::META_STORE_KEYS.to_vec(),
            crypto::wrap_keys(&master, &store_keys)?,
        );
        batch.put(
            Table::Meta,
            keys::META_NEXT_ACCOUNT.to_vec(),
            1u64.to_be_bytes().to_vec(),
        );
        // Every record of a new store is indexed as it is written.
        batch.put(
            Table::Meta,
            crate::audit_index::META_AUDIT_INDEXED.to_vec(),
            vec![1],
        );
        engine.write(batch, Durability::Synced)?;
        let store = Self::assemble(Box::new(engine), config, master, store_keys, plaintext)?;
        store.commit_audited(
            Batch::default(),
            vec![crate::AuditEvent::new(
                &Actor::cli(),
                "store.create",
                "store",
            )],
        )?;
        Ok(store)
    }

    /// Opens the store at `config.path` with `master`.
    ///
    /// The key is checked before the store is opened for writing: a wrong key changes no file.
    pub fn open(config: StoreConfig, master: MasterKey) -> Result<Store> {
        let wrapped = RocksEngine::read_meta_untouched(&config.path, keys::META_STORE_KEYS)?
            .ok_or_else(|| Error::corrupt("the store has no key record"))?;
        if crypto::unwrap_store_keys(&master, &wrapped)?.is_none() {
            return Err(Error::WrongMasterKey {
                path: master.path().to_path_buf(),
            });
        }
        let engine = RocksEngine::open(&config.path)?;
        let format = engine
            .get(Table::Meta, keys::META_FORMAT)?
            .ok_or_else(|| Error::corrupt("the store has no format record"))?;
        let plaintext = match format.as_slice() {
            [FORMAT_VERSION, FORMAT_ENCRYPTED] => false,
            [FORMAT_VERSION, FORMAT_PLAINTEXT] if cfg!(feature = "bench-unencrypted") => true,
            _ => {
                return Err(Error::corrupt(
                    "unknown store format (made by another version?)",
                ))
            }
        };
        let wrapped = engine
            .get(Table::Meta, keys::META_STORE_KEYS)?
            .ok_or_else(|| Error::corrupt("the store has no key record"))?;
        let store_keys =
            crypto::unwrap_store_keys(&master, &wrapped)?.ok_or_else(|| Error::WrongMasterKey {
                path: master.path().to_path_buf(),
            })?;
        let store = Self::assemble(Box::new(engine), config, master, store_keys, plaintext)?;
        store.backfill_audit_index()?;
        Ok(store)
    }

    fn assemble(
        engine: Box<dyn Engine>,
        config: StoreConfig,
        master: MasterKey,
        store_keys: StoreKeys,
        plaintext: bool,
    ) -> Result<Store> {
        let sealer = |key| {
            if plaintext {
                plaintext_sealer()
            } else {
                Sealer::new(key)
            }
        };
        let directory = sealer(&store_keys.directory);
        let audit_sealer = sealer(&store_keys.audit);
        let audit = AuditHead::load(engine.as_ref(), &store_keys.audit, store_keys.audit_keyed)?;
        // From now on the log is keyed: said under the master key, so that an old-style head
        // put back later is not taken for a store to upgrade.
        let mut store_keys = store_keys;
        if !store_keys.audit_keyed && !plaintext {
            store_keys.audit_keyed = true;
            let mut batch = Batch::default();
            batch.put(
                Table::Meta,
                keys::META_STORE_KEYS.to_vec(),
                crypto::wrap_keys(&master, &store_keys)?,
            );
            engine.write(batch, Durability::Synced)?;
        }
        let notifier = Notifier::new(config.limits.mailbox_events_max);
        Ok(Store {
            inner: Arc::new(Inner {
                engine,
                config,
                master: RwLock::new(master),
                store_keys,
                directory,
                audit_sealer,
                account_crypto: RwLock::new(HashMap::new()),
                directory_lock: Mutex::new(()),
                namespace_locks: Stripes::new(),
                mailbox_locks: Stripes::new(),
                blob_locks: Stripes::new(),
                auth_locks: Stripes::new(),
                audit: Mutex::new(audit),
                notifier,
                plaintext,
                junk_hook: RwLock::new(None),
                chunks_opened: std::sync::atomic::AtomicU64::new(0),
                mailbox_scans: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Sets what is told of messages filed into Junk or out of it.
    pub fn set_junk_hook(&self, hook: JunkHook) {
        *self
            .inner
            .junk_hook
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// A consistent copy of the store as it is now in the new folder `dir` (for backups): every
    /// write acknowledged before the call is in it, the audit chain whole. `dir` must not
    /// exist; on the store's file system the copy is mostly hard links.
    pub fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        self.inner.engine.checkpoint(dir)
    }

    /// Bytes the store's folder takes on disk (its files, and those of folders in it down to
    /// `DISK_WALK_DEPTH_MAX` levels), for the health page.
    pub fn disk_bytes(&self) -> Result<u64> {
        const DISK_WALK_DEPTH_MAX: usize = 3;
        let mut total = 0u64;
        let mut folders = vec![(self.inner.config.path.clone(), 0)];
        while let Some((folder, depth)) = folders.pop() {
            let entries = std::fs::read_dir(&folder).map_err(|e| Error::Io {
                path: folder.clone(),
                source: e,
            })?;
            for entry in entries.flatten() {
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() && depth < DISK_WALK_DEPTH_MAX => {
                        folders.push((entry.path(), depth + 1))
                    }
                    Ok(meta) if meta.is_file() => total += meta.len(),
                    _ => {}
                }
            }
        }
        Ok(total)
    }

    /// Writes every memtable and the log to disk files. Tests and backups use it.
    pub fn flush(&self) -> Result<()> {
        self.inner.engine.flush()
    }

    /// Re-wraps the store's and every account's keys with `new_master`, in one atomic write.
    /// Mail is not re-encrypted. The caller puts the new key file in place afterwards.
    pub fn rotate_master_key(&self, new_master: MasterKey, actor: &Actor) -> Result<usize> {
        let _directory = lock(&self.inner.directory_lock);
        let mut master = self.inner.master.write().unwrap_or_else(|e| e.into_inner());
        let mut batch = Batch::default();
        batch.put(
            Table::Meta,
            keys::META_STORE_KEYS.to_vec(),
            crypto::wrap_keys(&new_master, &self.inner.store_keys)?,
        );
        let mut rewrapped = Vec::new();
        self.inner
            .engine
            .scan(Table::AccountKeys, &[], &[0xFF; 9], &mut |key, value| {
                rewrapped.push((key.to_vec(), value.to_vec()));
                Ok(crate::engine::Scan::Continue)
            })?;
        let count = rewrapped.len();
        for (key, wrapped) in rewrapped {
            let keys = crypto::unwrap_keys::<AccountKeys>(&master, &wrapped)?
                .ok_or_else(|| Error::corrupt("an account key set the master key does not open"))?;
            batch.put(
                Table::AccountKeys,
                key,
                crypto::wrap_keys(&new_master, &keys)?,
            );
        }
        let event = crate::AuditEvent::new(actor, "key.rotate", "master-key")
            .detail(format!("{count} account key sets re-wrapped"));
        self.commit_audited(batch, vec![event])?;
        *master = new_master;
        Ok(count)
    }

    /// The unwrapped keys of an account, from the cache or the key table.
    pub(crate) fn account_crypto(&self, account: AccountId) -> Result<Arc<AccountCrypto>> {
        if let Some(found) = self
            .inner
            .account_crypto
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&account)
        {
            return Ok(found.clone());
        }
        let wrapped = self
            .inner
            .engine
            .get(Table::AccountKeys, &keys::account(account))?
            .ok_or(Error::AccountNotFound { id: account.0 })?;
        let master = self.inner.master.read().unwrap_or_else(|e| e.into_inner());
        let keys = crypto::unwrap_keys::<AccountKeys>(&master, &wrapped)?
            .ok_or_else(|| Error::corrupt("an account key set the master key does not open"))?;
        let crypto = Arc::new(self.account_sealers(&keys));
        self.inner
            .account_crypto
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account, crypto.clone());
        Ok(crypto)
    }

    pub(crate) fn account_sealers(&self, keys: &AccountKeys) -> AccountCrypto {
        if self.inner.plaintext {
            return AccountCrypto {
                metadata: plaintext_sealer(),
                content: plaintext_body_sealer(),
            };
        }
        AccountCrypto {
            metadata: Sealer::new(&keys.metadata),
            content: BodySealer::new(&keys.content),
        }
    }

    pub(crate) fn forget_account_crypto(&self, account: AccountId) {
        self.inner
            .account_crypto
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&account);
    }

    pub(crate) fn master(&self) -> std::sync::RwLockReadGuard<'_, MasterKey> {
        self.inner.master.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(feature = "bench-unencrypted")]
fn plaintext_sealer() -> Sealer {
    Sealer::plaintext()
}

#[cfg(feature = "bench-unencrypted")]
fn plaintext_body_sealer() -> BodySealer {
    BodySealer::plaintext()
}

// A plaintext store can only be made or opened with the benchmark feature, so these are never
// reached in a build without it; sealing with a throwaway key keeps it safe anyway.
#[cfg(not(feature = "bench-unencrypted"))]
fn plaintext_sealer() -> Sealer {
    Sealer::new(&crypto::SecretKey::random())
}

#[cfg(not(feature = "bench-unencrypted"))]
fn plaintext_body_sealer() -> BodySealer {
    BodySealer::new(&crypto::SecretKey::random())
}

/// Locks a mutex that guards no data of its own; a panic while it was held leaves nothing to
/// repair, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

const STRIPES: usize = 256;

/// A fixed set of locks; a key maps to one of them. Bounded memory however many mailboxes.
pub(crate) struct Stripes {
    locks: Vec<Mutex<()>>,
}

impl Stripes {
    fn new() -> Self {
        Self {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn index(account: AccountId, sub: u32) -> usize {
        let mixed = account.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(sub).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        (mixed >> 32) as usize % STRIPES
    }

    pub(crate) fn lock(&self, account: AccountId, sub: u32) -> MutexGuard<'_, ()> {
        lock(&self.locks[Self::index(account, sub)])
    }

    /// Locks several at once, in one global order, so that two callers never deadlock.
    pub(crate) fn lock_many(&self, account: AccountId, subs: &[u32]) -> Vec<MutexGuard<'_, ()>> {
        let pairs: Vec<(AccountId, u32)> = subs.iter().map(|s| (account, *s)).collect();
        self.lock_across(&pairs)
    }

    /// Locks several of several accounts at once, in the same global order.
    pub(crate) fn lock_across(&self, pairs: &[(AccountId, u32)]) -> Vec<MutexGuard<'_, ()>> {
        let mut indexes: Vec<usize> = pairs.iter().map(|(a, s)| Self::index(*a, *s)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes.into_iter().map(|i| lock(&self.locks[i])).collect()
    }
}
